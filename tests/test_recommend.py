"""The Python recommendation API: top-k equals a brute-force ranking of the model's scores,
cold-start items in and out, unknown ids reported, popularity fallback, filters, bad input,
broken checkpoints, and the session files of ``mkmsr recommend --input``."""
import json
import shutil

import numpy as np
import polars as pl
import pytest
import torch

from mkmsr.data.batching import batch_from_sequences
from mkmsr.errors import DataError
from mkmsr.serving.recommend import Recommender, read_sessions, recommend_requests

from .checkpoints import untrained_checkpoint


@pytest.fixture(scope="module")
def ckpt(synthetic_data, tmp_path_factory):
    return untrained_checkpoint(synthetic_data, tmp_path_factory.mktemp("rec") / "ck", seed=3)


@pytest.fixture(scope="module")
def rec(ckpt):
    return Recommender.load(ckpt)


@pytest.fixture(scope="module")
def catalogue(ckpt):
    return pl.read_parquet(ckpt / "items.parquet")


def brute_force(rec, items, ops, allowed=None):
    """Every item's score from the model contract's ``score``, sorted by a full argsort."""
    idx = [rec.item_index[i] for i in items]
    op = [rec.op_index[o] for o in ops]
    with torch.no_grad():
        s = rec.model.score(batch_from_sequences([idx], [op]))[0].numpy()
    order = [j for j in np.argsort(-s, kind="stable") if j > 0 and (allowed is None or j in allowed)]
    return [(rec.item_ids[j], float(s[j])) for j in order]


def assert_same_ranking(got, want, k):
    assert [i for i, _ in got] == [i for i, _ in want[:k]]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want[:k]], rtol=1e-5, atol=1e-6)


def random_sessions(catalogue, n, seed=0):
    rng = np.random.default_rng(seed)
    ids = catalogue["item_id"].to_list()
    ops = ["click", "cart", "order", "favorite"]
    return [[(ids[i], ops[o]) for i, o in zip(rng.integers(0, len(ids), L), rng.integers(0, 4, L))]
            for L in rng.integers(1, 12, n)]


@pytest.mark.parametrize("scan", ["bfloat16", "float32"])
def test_topk_equals_brute_force_ranking(ckpt, catalogue, scan):
    rec = Recommender.load(ckpt, scan=scan)
    assert rec.scan == scan and rec.item_matrix.is_contiguous()
    for events in random_sessions(catalogue, 12, seed=1):
        for k in (1, 7, 20):
            got = rec.recommend(events, k=k)
            assert got.fallback is None and not got.ignored_items
            assert_same_ranking(got.items, brute_force(rec, *zip(*events)), k)


def test_bfloat16_scan_is_exact_on_near_ties(ckpt, catalogue, tmp_path):
    """Items that differ by less than bfloat16 resolves: the scan must still give the float32
    ranking (the rescoring decides), and it must take the scan path, not fall back."""
    near = tmp_path / "near"
    shutil.copytree(ckpt, near)
    state = torch.load(near / "model.pt", weights_only=True)
    w = state["item_embedding.weight"]
    g = torch.Generator().manual_seed(0)
    # five clusters of near-identical items: within a cluster, bfloat16 rounding reorders them
    bases = 2 * torch.randn(5, w.shape[1], generator=g)
    cluster = torch.arange(w.shape[0] - 1) % 5
    w[1:] = bases[cluster] + 3e-3 * torch.randn(w.shape[0] - 1, w.shape[1], generator=g)
    torch.save(state, near / "model.pt")
    rec = Recommender.load(near, scan="bfloat16")
    assert rec.scan == "bfloat16" and Recommender.load(near).scan == "float32"  # float32 is the default
    for events in random_sessions(catalogue, 6, seed=4):
        with torch.inference_mode():
            idx = [rec.item_index[i] for i, _ in events]
            op = [rec.op_index[o] for _, o in events]
            s = rec.model.encode(batch_from_sequences([idx], [op]))[0]
            assert rec._scan_top(s[None], [10], [[]]) is not None
        assert_same_ranking(rec.recommend(events, k=10).items, brute_force(rec, *zip(*events)), 10)
    sessions = random_sessions(catalogue, 6, seed=4)
    ks = [10, 3, 10, 7, 10, 1]
    with torch.inference_mode():
        tr = [rec._translate(s, "t") for s in sessions]
        S = rec.model.encode(batch_from_sequences([t[0] for t in tr], [t[1] for t in tr]))
        rows = rec._scan_top(S, ks, [[]] * len(ks))  # several rows at once
    assert rows is not None
    for events, k, (vals, idx) in zip(sessions, ks, rows):
        assert_same_ranking([(rec.item_ids[j], v) for v, j in zip(vals, idx)], brute_force(rec, *zip(*events)), k)


def test_k_larger_than_catalogue_returns_every_item(rec):
    got = rec.recommend([(rec.item_ids[1], "click")], k=10_000)
    assert len(got.items) == rec.n_items
    assert len({i for i, _ in got.items}) == rec.n_items


def test_batch_equals_single(rec, catalogue):
    sessions = random_sessions(catalogue, 9, seed=2)
    sessions.insert(4, [("never-seen", "click")])  # a fallback row in the middle
    ks = [3, 5, 20, 1, 4, 9, 2, 6, 8, 10]
    together = rec.recommend_batch(sessions, ks, chunk_size=4)
    for s, k, t in zip(sessions, ks, together):
        alone = rec.recommend(s, k=k)
        assert [i for i, _ in t.items] == [i for i, _ in alone.items]
        np.testing.assert_allclose([x for _, x in t.items], [x for _, x in alone.items], rtol=1e-5, atol=1e-6)
        assert t.fallback == alone.fallback


def test_cold_start_items_are_inputs_and_outputs(rec, catalogue):
    cold = catalogue.filter(pl.col("train_count") == 0)["item_id"].to_list()
    warm = catalogue.filter(pl.col("train_count") > 0)["item_id"].to_list()
    assert len(cold) >= 5 and all(rec.is_cold(c) for c in cold) and not rec.is_cold(warm[0])
    # a cold item in the session is used, not ignored: it changes the ranking
    with_cold = rec.recommend([(warm[0], "click"), (cold[0], "cart")], k=10)
    without = rec.recommend([(warm[0], "click")], k=10)
    assert with_cold.ignored_items == [] and with_cold.fallback is None
    assert with_cold.items != without.items
    assert_same_ranking(with_cold.items, brute_force(rec, [warm[0], cold[0]], ["click", "cart"]), 10)
    # recommending among new items only
    got = rec.recommend([(warm[0], "click")], k=5, candidates=cold)
    assert len(got.items) == 5 and all(rec.is_cold(i) for i, _ in got.items)
    allowed = {rec.item_index[c] for c in cold}
    assert_same_ranking(got.items, brute_force(rec, [warm[0]], ["click"], allowed), 5)


def test_unknown_items_and_operations_are_ignored_and_reported(rec, catalogue):
    a, b = catalogue["item_id"][0], catalogue["item_id"][1]
    got = rec.recommend([(a, "click"), ("no-such-item", "click"), (b, "teleport")], k=10)
    assert got.ignored_items == ["no-such-item"] and got.ignored_operations == ["teleport"]
    assert got.fallback is None
    # the unknown item's event is dropped; the unknown operation becomes the padding operation
    idx = [rec.item_index[a], rec.item_index[b]]
    with torch.no_grad():
        s = rec.model.score(batch_from_sequences([idx], [[rec.op_index["click"], 0]]))[0]
    top = torch.topk(s, 10).indices.tolist()
    assert [i for i, _ in got.items] == [rec.item_ids[j] for j in top]
    # integer ids and surrounding blanks are read as the stripped string
    ints = Recommender.__new__(Recommender)
    ints.__dict__.update(rec.__dict__)
    ints.item_index = {**rec.item_index, "42": rec.item_index[a]}
    assert ints.recommend([(42, "click")], k=3).items == ints.recommend([(" 42 ", "click")], k=3).items


def test_empty_session_falls_back_to_popularity(rec, catalogue):
    by_pop = catalogue.sort(["train_count", "item_idx"], descending=[True, False])
    for events in ([], [("ghost", "click"), ("phantom", "cart")]):
        got = rec.recommend(events, k=5)
        assert got.fallback == "popularity"
        assert [s for _, s in got.items] == sorted(by_pop["train_count"].to_list(), reverse=True)[:5]
        assert set(i for i, _ in got.items) <= set(by_pop["item_id"].to_list())
    got = rec.recommend([("ghost", "click")], k=3, exclude=[by_pop["item_id"][0]])
    assert by_pop["item_id"][0] not in [i for i, _ in got.items]


def test_exclude_candidates_and_exclude_seen(rec, catalogue):
    events = random_sessions(catalogue, 1, seed=5)[0]
    full = rec.recommend(events, k=10)
    top = [i for i, _ in full.items]
    got = rec.recommend(events, k=10, exclude=top[:3] + ["unknown-is-fine"])
    assert [i for i, _ in got.items] == top[3:] + [i for i, _ in rec.recommend(events, k=13).items][10:13]
    seen = {i for i, _ in events}
    assert not seen & {i for i, _ in rec.recommend(events, k=50, exclude_seen=True).items}
    cands = top[5:8] + ["nope"]
    got = rec.recommend(events, k=10, candidates=cands, exclude=[top[6]])
    assert [i for i, _ in got.items] == [top[5], top[7]] and got.ignored_candidates == ["nope"]
    assert rec.recommend(events, k=10, candidates=["nope"]).items == []
    assert rec.recommend(events, k=10, candidates=[]).items == []


def test_scoring_without_item_embeddings_uses_the_model_contract(rec, catalogue):
    """A model that only implements ``score`` (no item matrix) is served through it."""
    plain = Recommender.__new__(Recommender)
    plain.__dict__.update(rec.__dict__)
    plain.item_matrix = None
    cold = catalogue.filter(pl.col("train_count") == 0)["item_id"].to_list()
    for events in random_sessions(catalogue, 4, seed=7):
        a, b = rec.recommend(events, k=8), plain.recommend(events, k=8)
        assert [i for i, _ in a.items] == [i for i, _ in b.items]
        a, b = rec.recommend(events, k=3, candidates=cold), plain.recommend(events, k=3, candidates=cold)
        assert [i for i, _ in a.items] == [i for i, _ in b.items]


def test_bad_input_raises_a_clear_error(rec):
    with pytest.raises(ValueError, match="sequence of"):
        rec.recommend("i1:click")
    with pytest.raises(ValueError, match="event 1: expected an"):
        rec.recommend([("i1", "click"), ("i2", "click", "extra")])
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        rec.recommend([("i1", "click")], k=0)
    with pytest.raises(ValueError, match="candidates must be a list"):
        rec.recommend([("i1", "click")], candidates="i1")
    with pytest.raises(ValueError, match="k has 1 entries for 2 sessions"):
        rec.recommend_batch([[], []], k=[3])


def test_broken_checkpoints_are_refused(ckpt, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    items = pl.read_parquet(bad / "items.parquet")
    items.head(items.height - 1).write_parquet(bad / "items.parquet")
    with pytest.raises(DataError, match="item map does not match"):
        Recommender.load(bad)
    nan = tmp_path / "nan"
    shutil.copytree(ckpt, nan)
    state = torch.load(nan / "model.pt", weights_only=True)
    state["item_embedding.weight"][5, 0] = float("nan")
    torch.save(state, nan / "model.pt")
    with pytest.raises(ValueError, match="NaN"):
        Recommender.load(nan).self_check()
    with pytest.raises(DataError, match="no checkpoint here"):
        Recommender.load(tmp_path / "nothing")


def test_describe_names_the_model_and_dataset(rec):
    d = rec.describe()
    assert d["model"] == "mkmsr" and d["catalogue"]["items"] == rec.n_items
    assert d["catalogue"]["cold_items"] > 0 and d["dataset"]["manifest"]["counts"]["items"] == rec.n_items
    json.dumps(d, allow_nan=False)  # strict JSON


# ---- session files (mkmsr recommend --input) -------------------------------------------------

def test_session_files_jsonl_csv_text_agree(rec, catalogue, tmp_path):
    a, b, c = catalogue["item_id"].to_list()[:3]
    (tmp_path / "s.jsonl").write_text(
        json.dumps({"session_id": "x", "events": [{"item_id": a, "operation": "click"},
                                                  {"item_id": b, "operation": "cart"}]}) + "\n\n"
        + json.dumps({"session_id": "y", "events": [[c, "order"]], "k": 2, "exclude_seen": True}) + "\n")
    (tmp_path / "s.csv").write_text(f"session_id,item_id,operation\nx,{a},click\ny,{c},order\nx,{b},cart\n")
    (tmp_path / "s.txt").write_text(f"{a}:click,{b}:cart\n{c}:order\n")
    runs = {f: list(recommend_requests(rec, read_sessions(tmp_path / f), k=4, batch_size=1))
            for f in ("s.jsonl", "s.csv", "s.txt")}
    for f, res in runs.items():
        assert len(res) == 2, f
        assert [i["item_id"] for i in res[0]["items"]] == [i for i, _ in rec.recommend([(a, "click"), (b, "cart")], 4).items]
    assert [r["session_id"] for r in runs["s.jsonl"]] == ["x", "y"] == [r["session_id"] for r in runs["s.csv"]]
    assert len(runs["s.jsonl"][1]["items"]) == 2 and c not in [i["item_id"] for i in runs["s.jsonl"][1]["items"]]
    assert len(runs["s.csv"][1]["items"]) == 4


@pytest.mark.parametrize("name,text,match", [
    ("bad.jsonl", '{"events": []}\n{"events": [}\n', r"bad.jsonl, row 2: not valid JSON"),
    ("bad.jsonl", '{"events": [], "kk": 3}\n', r"row 1, column 'kk': unknown key"),
    ("bad.jsonl", '{"events": [{"operation": "click"}]}\n', r"row 1, column 'events': event 0 .*item_id missing"),
    ("bad.jsonl", '{"events": [], "k": 0}\n', r"row 1, column 'k'.*expected an integer >= 1"),
    ("bad.jsonl", '{"events": "i1:click"}\n', r"column 'events': events missing or not a list"),
    ("bad.csv", "session_id,item,operation\ns,i1,click\n", r"bad.csv, column 'item_id': no column 'item_id'"),
    ("bad.csv", "session_id,item_id,operation\ns,i1,click\ns,,click\n", r"row 2, column 'item_id': empty value"),
    ("bad.txt", "i1:click\ni2\n", r"bad.txt, row 2: bad micro-behaviour"),
])
def test_bad_session_files_name_row_and_column(tmp_path, name, text, match):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=match):
        list(read_sessions(tmp_path / name))


def test_cli_recommend_files_jsonl_out(ckpt, catalogue, tmp_path):
    import subprocess
    import sys

    a, b = catalogue["item_id"][0], catalogue["item_id"][1]
    (tmp_path / "ev.csv").write_text(f"sess,item,op\nu1,{a},click\nu2,ghost,click\nu1,{b},cart\n")
    out = tmp_path / "o" / "recs.jsonl"
    p = subprocess.run([sys.executable, "-m", "mkmsr", "-q", "recommend", "--model", str(ckpt), "--input",
                        str(tmp_path / "ev.csv"), "--session-col", "sess", "--item-col", "item", "--op-col", "op",
                        "-k", "4", "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["session_id"] for x in lines] == ["u1", "u2"]
    assert len(lines[0]["items"]) == 4 and lines[0]["fallback"] is None
    assert lines[1]["ignored_items"] == ["ghost"] and lines[1]["fallback"] == "popularity"
    (tmp_path / "bad.jsonl").write_text('{"events": [["a", "b"]]}\n{"events": 3}\n')
    p = subprocess.run([sys.executable, "-m", "mkmsr", "-q", "recommend", "--model", str(ckpt), "--input",
                        str(tmp_path / "bad.jsonl"), "--output", str(tmp_path / "never.jsonl")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "bad.jsonl, row 2, column 'events'" in p.stderr
    assert not (tmp_path / "never.jsonl").exists() and not list(tmp_path.glob(".never*"))
