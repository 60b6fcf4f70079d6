"""Serving from an approximate nearest-neighbour index (issue 10, item 4): an exact index gives
exactly the exact scan's results (filters, MKM-SR+'s repeat boost and all), the index path
honours ``exclude`` / ``candidates`` / ``exclude_seen``, models whose scores are no inner product
are refused, ``auto`` keeps the exact scan below its threshold, and a hot swap builds the new
index before it swaps. Needs the ``ann`` extra (hnswlib, faiss-cpu); skipped without it."""
import importlib.util

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
