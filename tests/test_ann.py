"""Serving from an approximate nearest-neighbour index (issue 10, item 4): an exact index gives
exactly the exact scan's results (filters, MKM-SR+'s repeat boost and all), the index path
honours ``exclude`` / ``candidates`` / ``exclude_seen``, models whose scores are no inner product
are refused, ``auto`` keeps the exact scan below its threshold, a hot swap builds the new
index before it swaps, and the on-disk index cache is read back only when it matches (same
vectors, graph parameters, library version and file), never half-written, never fatal. Needs the ``ann`` extra (hnswlib, faiss-cpu); skipped without it."""
import importlib.util
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
import torch

from mkmsr.serving.ann import IndexConfig, IndexUnavailable, build_index, exact_top, recall_at_k
from mkmsr.serving.recommend import Recommender

from .checkpoints import untrained_checkpoint

HAVE_HNSWLIB = importlib.util.find_spec("hnswlib") is not None
HAVE_FAISS = importlib.util.find_spec("faiss") is not None
needs_hnswlib = pytest.mark.skipif(not HAVE_HNSWLIB, reason="hnswlib not installed (pip install 'mkmsr[ann]'); "
                                   "the hnsw index tests are skipped")
needs_faiss = pytest.mark.skipif(not HAVE_FAISS, reason="faiss-cpu not installed (pip install 'mkmsr[ann]'); "
                                 "the faiss index tests are skipped")
#: exact kinds: a flat index, and an HNSW graph whose search list covers the whole tiny catalogue
EXACT_KINDS = [pytest.param(IndexConfig(kind="flat", margin=5), id="flat", marks=needs_faiss),
               pytest.param(IndexConfig(kind="hnsw", m=16, ef_search=2000, margin=5, build_threads=1), id="hnsw",
                            marks=needs_hnswlib),
               pytest.param(IndexConfig(kind="faiss-hnsw", m=16, ef_search=2000, margin=5, build_threads=1),
                            id="faiss-hnsw", marks=needs_faiss)]


@pytest.fixture(scope="module")
def ckpts(synthetic_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("ann")
    out = {"mkmsr": untrained_checkpoint(synthetic_data, d / "mkmsr", seed=3)}
    # MKM-SR+ with a repeat boost big enough to move the session's own items into the top k
    from mkmsr.checkpoint import save_checkpoint
    from mkmsr.data.dataset import PreparedData
    from mkmsr.models import build_model

    torch.manual_seed(5)
    pd = PreparedData(synthetic_data)
    plus = build_model("mkmsr+", pd.spec, {"dim": 16, "repeat_boost": 4.0})
    out["mkmsr+"] = save_checkpoint(d / "mkmsr-plus", plus, "mkmsr+", pd, {"epoch": 0})
    out["repeatnet"] = untrained_checkpoint(synthetic_data, d / "repeatnet", seed=1, name="repeatnet")
    return out


@pytest.fixture(scope="module")
def catalogue(ckpts):
    return pl.read_parquet(ckpts["mkmsr"] / "items.parquet")


def sessions(catalogue, n, seed=0):
    rng = np.random.default_rng(seed)
    ids = catalogue["item_id"].to_list()
    ops = ["click", "cart", "order", "favorite"]
    out = []
    for L in rng.integers(1, 12, n):
        items = rng.integers(0, len(ids), L)
        if L > 3:  # a repeated item, as real sessions have
            items[-1] = items[0]
        out.append([(ids[i], ops[o]) for i, o in zip(items, rng.integers(0, 4, L))])
    return out


def same(a, b):
    assert [i for i, _ in a.items] == [i for i, _ in b.items]
    np.testing.assert_allclose([s for _, s in a.items], [s for _, s in b.items], rtol=1e-5, atol=1e-5)
    assert (a.ignored_items, a.ignored_operations, a.ignored_candidates, a.fallback) == \
        (b.ignored_items, b.ignored_operations, b.ignored_candidates, b.fallback)


@pytest.mark.parametrize("model", ["mkmsr", "mkmsr+"])
@pytest.mark.parametrize("cfg", EXACT_KINDS)
def test_an_exact_index_gives_the_exact_results(ckpts, catalogue, model, cfg):
    exact = Recommender.load(ckpts[model], index="exact")
    rec = Recommender.load(ckpts[model], index=cfg)
    assert rec.index is not None and exact.index is None
    assert rec.index_info["kind"] == cfg.kind and rec.index_info["build_seconds"] >= 0
    assert rec.index_info["repeat_boost"] == (4.0 if model == "mkmsr+" else 0.0)
    ids = catalogue["item_id"].to_list()
    for j, ev in enumerate(sessions(catalogue, 10, seed=1)):
        for k in (1, 7, 20):
            same(rec.recommend(ev, k=k), exact.recommend(ev, k=k))
        same(rec.recommend(ev, k=10, exclude=ids[j::7]), exact.recommend(ev, k=10, exclude=ids[j::7]))
        same(rec.recommend(ev, k=10, exclude_seen=True), exact.recommend(ev, k=10, exclude_seen=True))
        same(rec.recommend(ev, k=5, candidates=ids[j::3] + ["nope"]),
             exact.recommend(ev, k=5, candidates=ids[j::3] + ["nope"]))
    batch = sessions(catalogue, 9, seed=2) + [[("never-seen", "click")]]
    for a, b in zip(rec.recommend_batch(batch, k=[3, 20, 1, 5, 8, 2, 9, 4, 6, 7]),
                    exact.recommend_batch(batch, k=[3, 20, 1, 5, 8, 2, 9, 4, 6, 7])):
        same(a, b)


@needs_hnswlib
def test_repeat_boost_is_applied_to_the_session_items(ckpts, catalogue):
    """MKM-SR+: the boosted own items rank as the model scores them, though the index never
    retrieves them for their inner product (here they are dropped from what the index returns)."""
    rec = Recommender.load(ckpts["mkmsr+"], index=IndexConfig(kind="hnsw", ef_search=2000, build_threads=1))
    exact = Recommender.load(ckpts["mkmsr+"], index="exact")
    inner = rec.index.search

    def without_session_items(q, k, threads=1):
        got = inner(q, k, threads)
        return np.where(np.isin(got, own), -1, got)

    boosted = 0
    for ev in sessions(catalogue, 6, seed=3):
        own = [rec.item_index[i] for i, _ in ev]
        rec.index.search = without_session_items
        try:
            got = rec.recommend(ev, k=20)
        finally:
            rec.index.search = inner
        same(got, exact.recommend(ev, k=20))
        boosted += bool({i for i, _ in ev} & {i for i, _ in got.items})
    assert boosted >= 3  # beta = 4 puts own items in the top 20 of most sessions


@needs_hnswlib
def test_filters_and_large_requests_on_the_index_path(ckpts, catalogue):
    rec = Recommender.load(ckpts["mkmsr"], index=IndexConfig(kind="hnsw", ef_search=2000, max_retrieve=64,
                                                             build_threads=1))
    exact = Recommender.load(ckpts["mkmsr"])
    ev = sessions(catalogue, 1, seed=4)[0]
    top = [i for i, _ in exact.recommend(ev, k=40).items]
    got = rec.recommend(ev, k=5, exclude=top[:10])
    assert [i for i, _ in got.items] == top[10:15]
    # more excluded ids than max_retrieve allows: the exact scan answers, same results
    many = catalogue["item_id"].to_list()[::2]
    same(rec.recommend(ev, k=5, exclude=many), exact.recommend(ev, k=5, exclude=many))
    # k over the catalogue: every item, as with the exact scan
    assert len(rec.recommend(ev, k=10_000).items) == rec.n_items
    # candidates are scored exactly, never from the index
    rec.index.search = None  # would raise if called
    cand = catalogue["item_id"].to_list()[5:40]
    same(rec.recommend(ev, k=7, candidates=cand), exact.recommend(ev, k=7, candidates=cand))


@needs_hnswlib
def test_index_recall_on_sessions(ckpts, catalogue):
    exact = Recommender.load(ckpts["mkmsr"])
    assert exact.index_recall(sessions(catalogue, 3)) == 1.0
    rec = Recommender.load(ckpts["mkmsr"], index=IndexConfig(kind="hnsw", ef_search=2000, build_threads=1))
    assert rec.index_recall(sessions(catalogue, 20, seed=6) + [[("never-seen", "click")]], k=10) == 1.0
    coarse = Recommender.load(ckpts["mkmsr"], index=IndexConfig(kind="hnsw", m=2, ef_construction=2, ef_search=1,
                                                                margin=0, build_threads=1))
    assert 0 < coarse.index_recall(sessions(catalogue, 20, seed=6), k=10) <= 1.0
    with pytest.raises(ValueError, match="no session"):
        rec.index_recall([[("never-seen", "click")]])


@needs_hnswlib
def test_auto_keeps_the_exact_scan_below_its_threshold(ckpts):
    rec = Recommender.load(ckpts["mkmsr"])
    assert rec.index is None and rec.index_config.kind == "auto"
    assert rec.describe()["index"]["kind"] == "exact" and "threshold" in rec.describe()["index"]["reason"]
    small = Recommender.load(ckpts["mkmsr"], index=IndexConfig(threshold=10, build_threads=1))
    info = small.describe()["index"]
    assert small.index is not None and info["kind"] == "hnsw" and info["requested"] == "auto"
    assert info["items"] == small.n_items and info["bytes"] > 0 and info["params"]["M"] == 32


def test_models_without_an_inner_product_are_refused(ckpts):
    with pytest.raises(IndexUnavailable, match="not an inner product.*index='exact'"):
        Recommender.load(ckpts["repeatnet"], index="hnsw")
    rec = Recommender.load(ckpts["repeatnet"], index=IndexConfig(threshold=1))  # auto: falls back, says why
    assert rec.index is None and "not an inner product" in rec.index_info["reason"]


def test_a_wrong_decomposition_is_refused(ckpts, monkeypatch):
    """The load-time check compares session . item vectors with the model's own scores."""
    from mkmsr.serving import recommend

    monkeypatch.setattr(recommend, "dot_product_form", lambda model: (model.scoring_vectors().detach(), 0.0))
    with pytest.raises(IndexUnavailable, match="do not reproduce"):
        Recommender.load(ckpts["mkmsr+"], index="flat")  # the repeat boost left out


def test_missing_library_says_which_extra(ckpts, monkeypatch):
    from mkmsr.serving import ann

    def missing(module, kind):
        raise IndexUnavailable(f"index {kind!r} needs {module}: pip install 'mkmsr[ann]' (test)")

    monkeypatch.setattr(ann, "_import", missing)
    with pytest.raises(IndexUnavailable, match=r"mkmsr\[ann\]"):
        Recommender.load(ckpts["mkmsr"], index="hnsw")
    assert Recommender.load(ckpts["mkmsr"], index=IndexConfig(threshold=1)).index is None
    with pytest.raises(ValueError, match="index must be one of"):
        Recommender.load(ckpts["mkmsr"], index="annoy")


@needs_hnswlib
@pytest.mark.parametrize("kind", ["hnsw", pytest.param("faiss-hnsw", marks=needs_faiss)])
def test_recall_of_the_default_graph_on_clustered_vectors(kind):
    """Recall@20 against the exact ranking on clustered item vectors, sessions near items (the
    1M-item figures are benchmarks/ann_serving.py's; this is a small regression floor)."""
    g = torch.Generator().manual_seed(0)
    n, d = 20_000, 32
    centres = torch.randn(200, d, generator=g)
    V = centres[torch.randint(0, 200, (n + 1,), generator=g)] + 0.6 * torch.randn(n + 1, d, generator=g)
    V *= torch.exp(0.3 * torch.randn(n + 1, 1, generator=g))
    Q = V[torch.randint(1, n + 1, (200,), generator=g)] + 0.5 * torch.randn(200, d, generator=g)
    index = build_index(kind, V, IndexConfig(kind=kind, build_threads=2))
    assert recall_at_k(index, V, Q, k=20) >= 0.98
    assert index.search(Q[:3].numpy(), 20).shape == (3, 20)
    assert exact_top(V, Q[:3], 20).shape == (3, 20)


@needs_hnswlib
def test_hot_swap_builds_the_index_before_the_swap(ckpts):
    from mkmsr.serving.serve import ModelHolder, ServeConfig

    cfg = IndexConfig(kind="hnsw", ef_search=2000, build_threads=1)
    holder = ModelHolder(ckpts["mkmsr"], index=cfg)
    first = holder.current
    assert first.rec.index is not None and first.description["index"]["kind"] == "hnsw"
    new = holder.reload(ckpts["mkmsr+"])
    assert holder.current is new and new.generation == first.generation + 1
    assert new.rec.index is not None and new.rec.index is not first.rec.index
    assert new.description["index"]["repeat_boost"] == 4.0
    # a model the index cannot serve is refused and the old one keeps serving
    with pytest.raises(IndexUnavailable):
        holder.reload(ckpts["repeatnet"])
    assert holder.current is new
    ServeConfig(index="hnsw", index_threshold=5, index_ef=64).validate()
    with pytest.raises(ValueError, match="index"):
        ServeConfig(index="annoy").validate()


def test_cli_flags():
    from mkmsr.cli import build_parser

    a = build_parser().parse_args(["serve", "--model", "m", "--index", "hnsw", "--index-threshold", "1000",
                                   "--index-ef", "64", "--device", "cpu"])
    assert (a.index, a.index_threshold, a.index_ef, a.device) == ("hnsw", 1000, 64, "cpu")
    a = build_parser().parse_args(["recommend", "--model", "m", "--session", "1:1", "--index", "exact"])
    assert a.index == "exact" and a.device == "cpu"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--model", "m", "--index", "annoy"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU index path is checked on a GPU "
                    "machine only")
@needs_faiss
@pytest.mark.parametrize("model", ["mkmsr", "mkmsr+"])
def test_index_on_cuda_equals_the_exact_scan(ckpts, catalogue, model):
    """--device cuda: the encoder and the exact rescoring on the GPU, the index search on the CPU;
    auto keeps the exact scan on CUDA."""
    exact = Recommender.load(ckpts[model], device="cuda", index="exact")
    rec = Recommender.load(ckpts[model], device="cuda", index="flat")
    assert Recommender.load(ckpts[model], device="cuda", index=IndexConfig(threshold=1)).index is None
    for ev in sessions(catalogue, 6, seed=5):
        same(rec.recommend(ev, k=10), exact.recommend(ev, k=10))
        same(rec.recommend(ev, k=10, exclude_seen=True), exact.recommend(ev, k=10, exclude_seen=True))


# --------------------------------------------------------------------------------------------
# the on-disk index cache: built once per checkpoint, read back at the next load
# --------------------------------------------------------------------------------------------

#: coarse graphs (few links, short search lists): their rankings depend on the graph, so a
#: cached index that answered differently from the built one would show
COARSE = [pytest.param(IndexConfig(kind="hnsw", m=4, ef_construction=8, ef_search=4, margin=0, build_threads=1),
                       id="hnsw", marks=needs_hnswlib),
          pytest.param(IndexConfig(kind="faiss-hnsw", m=4, ef_construction=8, ef_search=4, margin=0,
                                   build_threads=1), id="faiss-hnsw", marks=needs_faiss),
          pytest.param(IndexConfig(kind="flat", margin=0), id="flat", marks=needs_faiss)]
HNSW = IndexConfig(kind="hnsw", m=4, ef_construction=8, ef_search=4, margin=0, build_threads=1)


@pytest.fixture
def ckpt(ckpts, tmp_path):
    """A private copy of the MKM-SR checkpoint, without any index cache the other tests left."""
    import shutil

    return shutil.copytree(ckpts["mkmsr"], tmp_path / "ckpt", ignore=shutil.ignore_patterns("index-cache"))


def rankings(rec, catalogue, n=12):
    return [[i for i, _ in r.items] for r in rec.recommend_batch(sessions(catalogue, n, seed=8), k=20)]


def leftovers(folder):
    return sorted(p.name for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name)


@pytest.mark.parametrize("cfg", COARSE)
def test_the_second_load_reads_the_index_from_the_cache(ckpt, catalogue, cfg):
    first = Recommender.load(ckpt, index=cfg)
    info = first.describe()["index"]
    assert (info["source"], info["cache"]["status"], info["load_seconds"]) == ("built", "saved", None)
    assert info["cache"]["dir"] == str(ckpt / "index-cache" / cfg.kind)
    saved = sorted(p.name for p in (ckpt / "index-cache" / cfg.kind).iterdir())
    assert saved == sorted(["index.json", "index.faiss" if cfg.kind != "hnsw" else "index.bin"])

    second = Recommender.load(ckpt, index=cfg)
    info2 = second.describe()["index"]
    assert (info2["source"], info2["cache"]["status"]) == ("cache", "loaded")
    assert info2["load_seconds"] >= 0 and info2["build_seconds"] == info["build_seconds"]
    assert (info2["items"], info2["params"], info2["bytes"]) == (info["items"], info["params"], info["bytes"])
    fresh = Recommender.load(ckpt, index=replace(cfg, cache=False))  # one build thread: the same graph
    assert fresh.index_info["source"] == "built" and fresh.index_info["cache"] == {"dir": None, "status": "off"}
    assert rankings(second, catalogue) == rankings(first, catalogue) == rankings(fresh, catalogue)
    Q = np.random.default_rng(0).standard_normal((50, first.index.dim)).astype(np.float32)
    np.testing.assert_array_equal(second.index.search(Q, 10), first.index.search(Q, 10))
    np.testing.assert_array_equal(second.index.search(Q, 10), fresh.index.search(Q, 10))
    assert leftovers(ckpt) == []


@needs_hnswlib
def test_a_changed_item_matrix_is_rebuilt_and_overwrites_the_cache(ckpt, caplog):
    import json

    first = Recommender.load(ckpt, index=HNSW)
    sidecar = ckpt / "index-cache" / "hnsw" / "index.json"
    old_hash = json.loads(sidecar.read_text())["vectors_sha256"]
    model = first.model
    with torch.no_grad():
        model.item_embedding.weight[3] += 0.5  # the same checkpoint folder, other item vectors
    items, ops = pl.read_parquet(ckpt / "items.parquet"), pl.read_parquet(ckpt / "operations.parquet")
    with caplog.at_level("WARNING", logger="mkmsr.serving.ann"):
        changed = Recommender(model, first.meta, items, ops, index=HNSW)
    info = changed.index_info
    assert (info["source"], info["cache"]["status"]) == ("built", "saved")
    assert "other item vectors" in info["cache"]["reason"] and "other item vectors" in caplog.text
    assert json.loads(sidecar.read_text())["vectors_sha256"] != old_hash
    # the checkpoint's own vectors again: rebuilt once more, then read from the cache
    assert Recommender.load(ckpt, index=HNSW).index_info["cache"]["status"] == "saved"
    assert Recommender.load(ckpt, index=HNSW).index_info["source"] == "cache"


@needs_hnswlib
def test_changed_graph_parameters_or_library_version_are_rebuilt(ckpt, caplog):
    import json

    assert Recommender.load(ckpt, index=HNSW).index_info["source"] == "built"
    for change in ({"m": 6}, {"ef_construction": 12}, {"seed": 1}):
        caplog.clear()
        with caplog.at_level("WARNING", logger="mkmsr.serving.ann"):
            info = Recommender.load(ckpt, index=replace(HNSW, **change)).index_info
        assert (info["source"], info["cache"]["status"]) == ("built", "saved"), change
        assert "other graph parameters" in info["cache"]["reason"] and "other graph parameters" in caplog.text
        Recommender.load(ckpt, index=HNSW)  # back to the first graph (rebuilt)
    # search-time settings and the build threads do not change the graph: the cached one serves
    rec = Recommender.load(ckpt, index=replace(HNSW, ef_search=50, margin=3, max_retrieve=99, build_threads=2))
    assert rec.index_info["source"] == "cache" and rec.index_info["params"]["ef_search"] == 50
    assert rec.index._index.ef == 50
    # an index saved by another library version is not trusted
    sidecar = ckpt / "index-cache" / "hnsw" / "index.json"
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "library": "hnswlib 0.0.1"}))
    info = Recommender.load(ckpt, index=HNSW).index_info
    assert info["source"] == "built" and "library version" in info["cache"]["reason"]
    assert json.loads(sidecar.read_text())["library"] == meta["library"]


def _truncate(path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate_and_update_the_sidecar(path):
    """A truncated file whose index.json was rewritten to match: the library itself refuses it."""
    import hashlib
    import json

    _truncate(path)
    sidecar = path.parent / "index.json"
    meta = json.loads(sidecar.read_text())
    meta.update(file_bytes=path.stat().st_size, file_sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    sidecar.write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, why", [
    (_truncate, "truncated"),
    (_flip_a_byte, "corrupt"),
    (_truncate_and_update_the_sidecar, "does not load"),
    (lambda path: path.unlink(), "unreadable"),
    (lambda path: (path.parent / "index.json").write_text("{not json"), "index.json unreadable"),
])
@pytest.mark.parametrize("cfg", COARSE[:2])
def test_a_corrupt_cache_is_rebuilt(ckpt, catalogue, cfg, damage, why, caplog):
    first = Recommender.load(ckpt, index=cfg)
    folder = ckpt / "index-cache" / cfg.kind
    damage(folder / first.index.FILE)
    with caplog.at_level("WARNING", logger="mkmsr.serving.ann"):
        again = Recommender.load(ckpt, index=cfg)
    assert (again.index_info["source"], again.index_info["cache"]["status"]) == ("built", "saved")
    assert why in again.index_info["cache"]["reason"] and why in caplog.text
    assert rankings(again, catalogue) == rankings(first, catalogue)
    assert Recommender.load(ckpt, index=cfg).index_info["source"] == "cache"  # overwritten with a good one
    assert leftovers(ckpt) == []


@needs_hnswlib
def test_a_read_only_checkpoint_builds_in_memory(ckpt, catalogue, monkeypatch, caplog):
    import os
    import stat

    mode = ckpt.stat().st_mode
    ckpt.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    try:
        if os.access(ckpt, os.W_OK):  # root ignores the mode: refuse the write where it is made
            from mkmsr import fsutil

            def refused(*args, **kwargs):
                raise PermissionError(13, "Permission denied", kwargs.get("dir"))

            monkeypatch.setattr(fsutil.tempfile, "mkdtemp", refused)
        with caplog.at_level("WARNING", logger="mkmsr.serving.ann"):
            rec = Recommender.load(ckpt, index=HNSW)
        info = rec.describe()["index"]
        assert (info["kind"], info["source"], info["cache"]["status"]) == ("hnsw", "built", "unsaved")
        assert "Permission denied" in info["cache"]["reason"] and "cannot save the hnsw index" in caplog.text
        assert rankings(rec, catalogue, 4) == rankings(Recommender.load(ckpt, index=replace(HNSW, cache=False)),
                                                       catalogue, 4)
        assert not [p for p in ckpt.rglob("*") if p.is_file() and "index-cache" in p.parts]
    finally:
        ckpt.chmod(mode)


@needs_hnswlib
def test_a_failed_save_leaves_nothing_half_written(ckpt, monkeypatch):
    import os
    import time

    from mkmsr.serving import ann

    Recommender.load(ckpt, index=HNSW)  # a good cache of this graph
    cache = ckpt / "index-cache"
    stale = cache / ".hnsw.tmp-killed"  # what a process killed while saving leaves
    stale.mkdir()
    (stale / "index.bin").write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    recent = cache / ".hnsw.tmp-inflight"  # another process saving now: left alone
    recent.mkdir()

    def crash(self, path):  # the library dies half-way through the file
        path.write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(ann.HnswIndex, "write", crash)
    rec = Recommender.load(ckpt, index=replace(HNSW, m=6))
    assert rec.index is not None and rec.index_info["cache"]["status"] == "unsaved"
    assert "disk full" in rec.index_info["cache"]["reason"]
    assert leftovers(ckpt) == [".hnsw.tmp-inflight"]
    monkeypatch.undo()
    # the cache of the first graph is intact: all or nothing
    assert Recommender.load(ckpt, index=HNSW).index_info["source"] == "cache"


@needs_hnswlib
def test_the_cache_can_live_elsewhere_or_be_off(ckpt, tmp_path):
    elsewhere = tmp_path / "caches"
    rec = Recommender.load(ckpt, index=replace(HNSW, cache_dir=str(elsewhere)))
    assert rec.index_info["cache"]["dir"] == str(elsewhere / "hnsw") and (elsewhere / "hnsw" / "index.json").exists()
    assert Recommender.load(ckpt, index=replace(HNSW, cache_dir=str(elsewhere))).index_info["source"] == "cache"
    off = Recommender.load(ckpt, index=replace(HNSW, cache=False))
    assert off.index_info["cache"]["status"] == "off"
    assert not (ckpt / "index-cache").exists()
    # a model not loaded from a checkpoint has no default cache folder
    items, ops = pl.read_parquet(ckpt / "items.parquet"), pl.read_parquet(ckpt / "operations.parquet")
    bare = Recommender(rec.model, {"model": "mkmsr"}, items, ops, index=HNSW)
    assert bare.index_info["cache"]["status"] == "off" and not (ckpt / "index-cache").exists()


@needs_hnswlib
def test_the_cache_flags_reach_the_index_config(ckpt, tmp_path, capsys):
    import dataclasses

    from mkmsr.cli import _serve_config, build_parser, main
    from mkmsr.serving.serve import ModelHolder

    p = build_parser()
    a = p.parse_args(["serve", "--model", "m", "--index-cache", str(tmp_path / "c")])
    cfg = _serve_config(a)
    cfg.validate()
    assert (cfg.index_config().cache, cfg.index_config().cache_dir) == (True, str(tmp_path / "c"))
    # serve() fills in the threads with dataclasses.replace: the cache settings survive it
    assert dataclasses.replace(cfg, threads=3).index_config().cache_dir == str(tmp_path / "c")
    off = _serve_config(p.parse_args(["serve", "--model", "m", "--no-index-cache"])).index_config()
    assert (off.cache, off.cache_dir) == (False, None)
    default = _serve_config(p.parse_args(["serve", "--model", "m"])).index_config()
    assert (default.cache, default.cache_dir) == (True, None)
    with pytest.raises(SystemExit):
        p.parse_args(["serve", "--model", "m", "--no-index-cache", "--index-cache", "d"])

    # serve: the holder builds into the flag's folder, a reload of the same checkpoint reads it
    cfg = _serve_config(p.parse_args(["serve", "--model", str(ckpt), "--index", "hnsw", "--index-cache",
                                      str(tmp_path / "c"), "--threads", "1"]))
    holder = ModelHolder(ckpt, index=cfg.index_config())
    assert holder.current.description["index"]["cache"]["status"] == "saved"
    assert holder.reload(ckpt).description["index"]["source"] == "cache"
    # recommend: the same flags
    items = pl.read_parquet(ckpt / "items.parquet")["item_id"].to_list()
    ev = f"{items[0]}:click,{items[1]}:cart"
    assert main(["recommend", "--model", str(ckpt), "--session", ev, "--index", "hnsw",
                 "--index-cache", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "hnsw" / "index.json").exists()
    assert main(["recommend", "--model", str(ckpt), "--session", ev, "--index", "hnsw", "--no-index-cache"]) == 0
    assert not (ckpt / "index-cache").exists()
    capsys.readouterr()
