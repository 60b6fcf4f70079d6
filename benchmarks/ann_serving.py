"""Serving a large catalogue from a nearest-neighbour index vs the exact scan (issue 10, item 4).

    # 1M and 139k items, the default hnsw index beside the exact scan (hold the shared CPU lock)
    flock /tmp/mkmsr-cpu.lock .venv/bin/python benchmarks/ann_serving.py --items 1000000,139000
    # choosing the library: both HNSW backends, an ef_search sweep, at 200k items
    .venv/bin/python benchmarks/ann_serving.py --items 200000 --backends hnsw,faiss-hnsw --ef 64,128,256

What is measured, per catalogue size and scoring (``--scoring dot,cosine``):

* the catalogue: an MKM-SR model (d = ``--dim``, untrained encoder) whose item vectors are
  replaced by a synthetic clustered catalogue: ``--clusters`` Gaussian centres, each item a
  centre plus within-cluster noise, scaled by a log-normal norm factor (``dot``: the paper's
  inner-product scoring, where norms differ) or normalised (``cosine``: MKM-SR+'s scoring, with
  its repeat boost beta = 4 so the session's own items are rescored exactly too). Item
  popularity (training counts) is Zipf-distributed.
* build: seconds to build the index and its memory (the index's own bytes, and the process's
  RSS growth while building).
* recall@20 of the index path (retrieve k + margin, rescore exactly, keep 20) against the exact
  ranking, for two kinds of session vector: ``near-item`` -- an item's vector plus noise (what a
  trained model's session vectors look like: close to the next item), the figure the issue's
  floor is about -- and ``encoder`` -- the untrained encoder's output for random sessions (a
  random projection of the session's items: closer to the adversarial random-query case).
* latency: ``Recommender.recommend(session, k=20)`` one session per call, in-process, the index
  and the exact scan taking turns (so both see the same background load), p50 /
  p90 / p99 / max over ``--calls`` calls after a warm-up, with ``--threads`` torch threads, in
  alternating blocks of 100 calls (see ``latency``). The exact scan is the float32 product (the
  Recommender's default).

* ``--cache``: the index cache (:func:`mkmsr.serving.ann.load_or_build_index`). The first
  Recommender builds the index and saves it to ``--out``/index-cache (emptied first); a second
  one, made the same way, reads it back. Reported: the first load's wall seconds (build + save),
  the build alone, the second load's wall seconds and the index read's share of them (its
  checks: the item matrix's sha256, the file's size and sha256), the cache's size on disk, and
  whether the read index answers exactly as the built one. Without ``--cache`` nothing is saved.

``--model CHECKPOINT`` measures a real checkpoint instead (its own item vectors and trained
encoder; e.g. the 139k-item run of ``benchmarks/serving.py build``): recall@20 of its encoder's
session vectors -- the figure that matters for that model -- and the same latencies, for
sessions from ``--sessions FILE`` (any format of ``mkmsr recommend --input``) or, without it,
random catalogue sessions as in benchmarks/serving.py.

Writes ``--out``/results.json and results.md (default benchmarks/out/ann_serving/).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import polars as pl  # noqa: E402
import torch  # noqa: E402

OPS = ["click", "cart", "order", "favorite"]


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def catalogue_vectors(n: int, d: int, clusters: int, scoring: str, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """(n + 1, d) float32 item vectors (row 0 = padding, zeros) and each item's cluster."""
    g = torch.Generator().manual_seed(seed)
    centres = 0.1 * torch.randn(clusters, d, generator=g)
    lab = torch.randint(0, clusters, (n + 1,), generator=g)
    V = torch.empty(n + 1, d)
    for c0 in range(0, n + 1, 200_000):  # in chunks: no second full-size temporary
        c1 = min(n + 1, c0 + 200_000)
        V[c0:c1] = centres[lab[c0:c1]] + 0.06 * torch.randn(c1 - c0, d, generator=g)
        if scoring == "dot":
            V[c0:c1] *= torch.exp(0.3 * torch.randn(c1 - c0, 1, generator=g))
    V[0] = 0
    return V, lab.numpy()


def make_recommender_parts(n: int, d: int, clusters: int, scoring: str, seed: int):
    """(model, meta, items, operations) of a synthetic n-item catalogue (no prepare, no training)."""
    from mkmsr.data.dataset import DatasetSpec
    from mkmsr.models import build_model

    torch.manual_seed(seed)
    spec = DatasetSpec(n_items=n, n_entities=n + 1 + 10, n_ops=len(OPS) + 1, n_relations=3)
    overrides = {"dim": d}
    name = "mkmsr"
    if scoring == "cosine":  # MKM-SR+'s scoring and repeat boost (id item vectors: no knowledge here)
        name, overrides = "mkmsr+", {**overrides, "item_repr": "id", "repeat_boost": 4.0}
    model = build_model(name, spec, overrides)
    V, lab = catalogue_vectors(n, d, clusters, scoring, seed)
    with torch.no_grad():
        model.item_embedding.weight.copy_(V)
    del V
    rng = np.random.default_rng(seed)
    counts = rng.zipf(1.3, n).clip(max=10_000) - 1
    items = pl.DataFrame({"item_idx": np.arange(1, n + 1, dtype=np.int64),
                          "item_id": np.char.add("it", np.arange(1, n + 1).astype(str)),
                          "train_count": counts.astype(np.int64)})
    ops = pl.DataFrame({"op": OPS, "op_idx": np.arange(1, len(OPS) + 1, dtype=np.int64)})
    meta = {"model": name, "path": str(ROOT / "benchmarks" / "out"), "config": {"dim": d}}
    return model, meta, items, ops, lab


def request_sessions(n_items: int, lab: np.ndarray, count: int, seed: int) -> list[list[tuple[str, str]]]:
    """1-10 events; the first item by popularity-ish rank, the others mostly from its cluster."""
    rng = np.random.default_rng(seed)
    by_cluster: dict[int, np.ndarray] = {}
    order = np.argsort(lab[1:], kind="stable") + 1
    bounds = np.searchsorted(lab[order], np.arange(lab.max() + 2))
    out = []
    for L in rng.integers(1, 11, count):
        first = int(min(n_items, rng.zipf(1.2))) if rng.random() < 0.3 else int(rng.integers(1, n_items + 1))
        c = int(lab[first])
        if c not in by_cluster:
            by_cluster[c] = order[bounds[c]:bounds[c + 1]]
        same = by_cluster[c]
        picks = [first] + [int(rng.choice(same)) if rng.random() < 0.8 else int(rng.integers(1, n_items + 1))
                           for _ in range(L - 1)]
        out.append([(f"it{j}", OPS[o]) for j, o in zip(picks, rng.integers(0, len(OPS), L))])
    return out


def pct(ms: list[float]) -> dict:
    x = np.asarray(ms)
    return {"p50": float(np.percentile(x, 50)), "p90": float(np.percentile(x, 90)),
            "p99": float(np.percentile(x, 99)), "max": float(x.max()), "mean": float(x.mean())}


def near_item_queries(V: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Session vectors near items: an item's vector plus noise of 0.5x its own size per coordinate scale."""
    g = torch.Generator().manual_seed(seed + 1)
    rows = torch.randint(1, V.shape[0], (count,), generator=g)
    base = V[rows].float()
    scale = base.norm(dim=1, keepdim=True) / V.shape[1] ** 0.5
    return base + 0.5 * scale * torch.randn(base.shape, generator=g)


def encoder_queries(rec, sessions, count: int) -> torch.Tensor:
    from mkmsr.data.batching import batch_from_sequences

    out = []
    with torch.inference_mode():
        for c0 in range(0, count, 256):
            tr = [rec._translate(s, "benchmark") for s in sessions[c0:c0 + min(256, count - c0)]]
            b = batch_from_sequences([t[0] for t in tr], [t[1] for t in tr])
            out.append(rec.model.session_vectors(b).float())
    return torch.cat(out)


def latency(recs: dict, sessions, calls: int, k: int, block: int = 100) -> dict:
    """p50/p90/p99/max of one-session calls per Recommender, in alternating blocks of ``block``
    calls: both see the same background load, and the exact scan's pass over the item matrix
    (400 MB at 1M items) does not evict the index from the caches before every index call, as
    strict call-by-call turns would (a server runs one of them, not both)."""
    lat = {name: [] for name in recs}
    for i in range(100):  # warm-up
        for r in recs.values():
            r.recommend(sessions[i % len(sessions)], k=k)
    for b0 in range(0, calls, block):
        for name, r in recs.items():
            r.recommend(sessions[b0 % len(sessions)], k=k)  # untimed: the first call after a switch
            for i in range(b0, min(calls, b0 + block)):
                s = sessions[i % len(sessions)]
                t0 = time.perf_counter()
                r.recommend(s, k=k)
                lat[name].append((time.perf_counter() - t0) * 1e3)
    return {name: pct(v) for name, v in lat.items()}


def run_one(n: int, scoring: str, a) -> dict:
    from mkmsr.serving.recommend import Recommender

    t0 = time.perf_counter()
    model, meta, items, ops, lab = make_recommender_parts(n, a.dim, a.clusters, scoring, a.seed)
    exact = Recommender(model, meta, items, ops, index="exact")
    print(f"\n== {n} items, d = {a.dim}, {scoring} scoring ({meta['model']}); catalogue made in "
          f"{time.perf_counter() - t0:.0f}s", flush=True)
    return measure(exact, (model, meta, items, ops), request_sessions(n, lab, 2000, a.seed), scoring, a)


def run_checkpoint(a) -> dict:
    from mkmsr.serving.ann import dot_product_form
    from mkmsr.serving.recommend import Recommender, read_sessions

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from serving import request_sessions as catalogue_sessions

    exact = Recommender.load(a.model, index="exact")
    if a.sessions:
        sessions = [r.events for r in read_sessions(a.sessions)][:2000]
    else:
        sessions = catalogue_sessions(pl.read_parquet(Path(exact.meta["path"]) / "items.parquet"), 2000, a.seed)
    scoring = "dot" if dot_product_form(exact.model)[1] == 0 else "dot+boost"
    print(f"\n== checkpoint {exact.meta['path']}: {exact.model_name}, {exact.n_items} items, "
          f"{len(sessions)} sessions", flush=True)
    parts = (exact.model, exact.meta, pl.read_parquet(Path(exact.meta["path"]) / "items.parquet"),
             pl.read_parquet(Path(exact.meta["path"]) / "operations.parquet"))
    return measure(exact, parts, sessions, scoring, a)


def measure(exact, parts, sessions, scoring: str, a) -> dict:
    from mkmsr.serving.ann import IndexConfig, dot_product_form, recall_at_k
    from mkmsr.serving.recommend import Recommender

    model, meta, items, ops = parts
    n = exact.n_items
    V = dot_product_form(model)[0]
    q_near = near_item_queries(V, a.queries, a.seed)
    q_enc = encoder_queries(exact, sessions, min(a.queries, len(sessions)))
    res = {"n_items": n, "dim": int(V.shape[1]), "scoring": scoring, "model": meta["model"],
           "checkpoint": meta.get("path") if a.model else None, "backends": []}
    cache_dir = Path(a.out) / "index-cache"
    for kind in a.backends:
        cfg = IndexConfig(kind=kind, m=a.m, ef_construction=a.ef_construction, ef_search=a.ef[0],
                          build_threads=a.build_threads, cache=a.cache, cache_dir=str(cache_dir) if a.cache else None)
        if a.cache:
            shutil.rmtree(cache_dir / kind, ignore_errors=True)  # the first load builds
        r0 = rss_bytes()
        t0 = time.perf_counter()
        rec = Recommender(model, meta, items, ops, index=cfg, max_len=exact.max_len)
        first_load = time.perf_counter() - t0
        rss = rss_bytes() - r0
        info = rec.index_info
        print(f"  {kind}: built in {info['build_seconds']:.1f}s ({info['library']}, {info['params']}), index "
              f"{info['bytes'] / 2 ** 20:.0f} MiB, RSS +{rss / 2 ** 20:.0f} MiB", flush=True)
        entry = {"kind": kind, "library": info["library"], "params": info["params"],
                 "build_seconds": info["build_seconds"], "index_bytes": info["bytes"], "rss_growth_bytes": rss,
                 "sweep": []}
        if a.cache:
            entry["cache"] = cached_load(rec, parts, cfg, first_load, q_near, a.k + cfg.margin)
        for ef in a.ef:
            if kind != "flat":
                rec.index.set_ef_search(ef)
            torch.set_num_threads(a.threads)
            rn = recall_at_k(rec.index, V, q_near, k=a.k, margin=cfg.margin)
            re = recall_at_k(rec.index, V, q_enc, k=a.k, margin=cfg.margin)
            lat = latency({"index": rec, "exact": exact}, sessions, a.calls, a.k)
            li, le = lat["index"], lat["exact"]
            entry["sweep"].append({"ef_search": ef, "recall_near_item": rn, "recall_encoder": re,
                                   "latency_ms_index": li, "latency_ms_exact": le, "calls": a.calls,
                                   "threads": a.threads})
            print(f"    ef_search {ef:4d}: recall@{a.k} near-item {rn:.4f}, encoder {re:.4f}; "
                  f"index p50 {li['p50']:.2f} p99 {li['p99']:.2f} ms | exact p50 {le['p50']:.2f} "
                  f"p99 {le['p99']:.2f} ms", flush=True)
            if kind == "flat":
                break
        res["backends"].append(entry)
        del rec
    return res


def cached_load(rec, parts, cfg, first_load: float, queries: torch.Tensor, k: int) -> dict:
    """Load the same catalogue again: the index comes from the cache ``rec`` saved. Returns the
    timings, the cache's bytes on disk and whether the read index answers as the built one."""
    from mkmsr.serving.recommend import Recommender

    model, meta, items, ops = parts
    t0 = time.perf_counter()
    again = Recommender(model, meta, items, ops, index=cfg, max_len=rec.max_len)
    wall = time.perf_counter() - t0
    info, saved = again.index_info, rec.index_info["cache"]
    if info["source"] != "cache":
        raise RuntimeError(f"the second load did not read the cache: {info['cache']}")
    Q = queries.numpy()
    same = bool(np.array_equal(again.index.search(Q, k), rec.index.search(Q, k)))
    folder = Path(info["cache"]["dir"])
    out = {"first_load_seconds": first_load, "build_seconds": rec.index_info["build_seconds"],
           "saved": saved["status"], "cached_load_seconds": wall, "index_read_seconds": info["load_seconds"],
           "cache_bytes": sum(f.stat().st_size for f in folder.iterdir()), "same_results": same}
    print(f"    cache: first load {first_load:.1f}s (build {out['build_seconds']:.1f}s, then {saved['status']}); "
          f"second load {wall:.2f}s from the cache (index read {out['index_read_seconds']:.2f}s), "
          f"{out['cache_bytes'] / 2 ** 20:.0f} MiB on disk, same results: {same}", flush=True)
    return out


def markdown(all_res: list[dict], a, load: tuple[float, float]) -> str:
    what = f"Checkpoint {a.model}" if a.model else f"Synthetic clustered catalogue ({a.clusters} clusters), d = {a.dim}"
    lines = [f"{what}, k = {a.k}, "
             f"{a.threads} torch thread(s) for requests, {a.calls} calls per config; index built with "
             f"{a.build_threads or os.cpu_count()} thread(s); load average {load[0]:.2f} at start, {load[1]:.2f} at end.",
             "",
             "| items | scoring | index | params | build s | index MiB | RSS + MiB | ef_search | recall@20 near-item | "
             "recall@20 encoder | index p50 ms | index p99 ms | exact p50 ms | exact p99 ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in all_res:
        for b in r["backends"]:
            p = b["params"]
            ps = f"M={p['M']}, efC={p['ef_construction']}" if "M" in p else "-"
            for s in b["sweep"]:
                li, le = s["latency_ms_index"], s["latency_ms_exact"]
                lines.append(f"| {r['n_items']} | {r['scoring']} | {b['kind']} ({b['library']}) | {ps} | "
                             f"{b['build_seconds']:.1f} | {b['index_bytes'] / 2 ** 20:.0f} | "
                             f"{b['rss_growth_bytes'] / 2 ** 20:.0f} | {s['ef_search'] if 'M' in p else '-'} | "
                             f"{s['recall_near_item']:.4f} | {s['recall_encoder']:.4f} | {li['p50']:.2f} | "
                             f"{li['p99']:.2f} | {le['p50']:.2f} | {le['p99']:.2f} |")
    cached = [(r, b) for r in all_res for b in r["backends"] if "cache" in b]
    if cached:
        lines += ["", "| items | index | first load s (build + save) | build s | cached load s | index read s | "
                  "cache MiB | same results |", "|---|---|---|---|---|---|---|---|"]
        for r, b in cached:
            c = b["cache"]
            lines.append(f"| {r['n_items']} | {b['kind']} | {c['first_load_seconds']:.1f} | {c['build_seconds']:.1f} | "
                         f"{c['cached_load_seconds']:.2f} | {c['index_read_seconds']:.2f} | "
                         f"{c['cache_bytes'] / 2 ** 20:.0f} | {c['same_results']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    def ints(s: str) -> list[int]:
        return [int(x) for x in s.split(",")]

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=ints, default=[1_000_000, 139_000], help="catalogue sizes (default 1000000,139000)")
    p.add_argument("--scoring", type=lambda s: s.split(","), default=["dot"],
                   help="dot (MKM-SR) and/or cosine (MKM-SR+ with its repeat boost); default dot")
    p.add_argument("--backends", type=lambda s: s.split(","), default=["hnsw"],
                   help="index kinds: hnsw, faiss-hnsw, flat (default hnsw)")
    p.add_argument("--dim", type=int, default=100)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("-k", type=int, default=20)
    p.add_argument("--m", type=int, default=None, help="HNSW M (default: IndexConfig's)")
    p.add_argument("--ef-construction", type=int, default=None, help="HNSW ef_construction (default: IndexConfig's)")
    p.add_argument("--ef", type=ints, default=None, help="ef_search values to sweep (default: IndexConfig's)")
    p.add_argument("--build-threads", type=int, default=0, help="threads building the index (0 = every core)")
    p.add_argument("--threads", type=int, default=1, help="torch threads while serving requests (default 1)")
    p.add_argument("--calls", type=int, default=2000, help="timed calls per config")
    p.add_argument("--queries", type=int, default=1000, help="session vectors per recall figure")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", help="a checkpoint or run directory to measure instead of the synthetic catalogues")
    p.add_argument("--sessions", help="with --model: sessions to measure (jsonl, csv or text, as mkmsr recommend --input)")
    p.add_argument("--cache", action="store_true",
                   help="also measure the index cache: build + save, then a second load that reads it back "
                        "(saved under --out/index-cache)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "ann_serving"))
    a = p.parse_args(argv)
    from mkmsr.serving.ann import IndexConfig

    d = IndexConfig()
    a.m = a.m or d.m
    a.ef_construction = a.ef_construction or d.ef_construction
    a.ef = a.ef or [d.ef_search]
    load0 = os.getloadavg()[0]
    all_res = []
    if a.model:
        all_res.append(run_checkpoint(a))
    else:
        for n in a.items:
            for scoring in a.scoring:
                all_res.append(run_one(n, scoring, a))
    load1 = os.getloadavg()[0]
    table = markdown(all_res, a, (load0, load1))
    print("\n" + table)
    out = Path(a.out)
    from mkmsr.fsutil import atomic_write_text, write_json

    write_json(out / "results.json", {"command": " ".join(sys.argv), "cpu_count": os.cpu_count(),
                                      "torch": torch.__version__, "loadavg_1min": [load0, load1],
                                      "results": all_res, "markdown": table})
    atomic_write_text(out / "results.md", table + "\n")
    print(f"\nwritten {out / 'results.json'} and results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
