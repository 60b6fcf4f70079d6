"""A synthetic micro-behaviour dataset whose next item depends on the operation *and* on item
attributes, with cold-start items known only through their knowledge.

Items carry four attributes (category, brand, shop, year). A session starts on a popular
item; operations follow a Markov chain; the next item depends on the current item and the
operation performed on it:

=========  =================================================================
operation  next item
=========  =================================================================
click      another item of the same category (any brand)
cart       an item of the same brand in another category
order      an item of the *complementary* category (category + 1)
favorite   the same item again (repeat consumption)
comment    an item of the same shop (only with ``n_operations=5``)
=========  =================================================================

with a small share of random jumps. Within a group, items are drawn by a Zipf popularity, so
many items are rare. The latest ``test_fraction`` of sessions may also draw *cold* items —
items that never occur before the test period but have knowledge triplets: only a model that
learns from knowledge can rank them. A model without operations cannot tell which of the
four transitions comes next; a model without knowledge cannot place rare and cold items.

Generation is vectorised over sessions (one numpy step per position), so JDATA-sized data
(hundreds of thousands of sessions) takes seconds.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from ..fsutil import atomic_dir

OPERATIONS = ("click", "cart", "order", "favorite")
# Markov chain over operations (rows: current op, columns: next op)
OP_TRANSITIONS = np.array([
    [0.55, 0.20, 0.10, 0.15],
    [0.35, 0.25, 0.30, 0.10],
    [0.60, 0.20, 0.05, 0.15],
    [0.45, 0.30, 0.15, 0.10],
])
OP_START = np.array([0.6, 0.2, 0.05, 0.15])
# five operations as in JDATA (click, cart, order, favorite, comment), for jdata_scale()
OP_TRANSITIONS5 = np.array([
    [0.52, 0.19, 0.09, 0.14, 0.06],
    [0.33, 0.24, 0.28, 0.10, 0.05],
    [0.55, 0.18, 0.05, 0.14, 0.08],
    [0.43, 0.28, 0.14, 0.10, 0.05],
    [0.60, 0.15, 0.10, 0.10, 0.05],
])
OP_START5 = np.array([0.58, 0.19, 0.05, 0.14, 0.04])


@dataclass
class SyntheticConfig:
    n_sessions: int = 4000
    n_items: int = 1500            # warm items
    n_cold_items: int = 150        # items that appear only in the test period
    n_categories: int = 12
    n_brands: int = 30
    n_shops: int = 30
    n_years: int = 8
    mean_length: float = 5.4       # mean micro-behaviours per session (>= 2)
    max_length: int = 60
    noise: float = 0.05            # share of random next items
    cold_share: float = 0.3        # in test-period sessions, share of next items drawn from cold items
    zipf: float = 0.6              # popularity exponent (flat enough that the group, not a few hits, matters)
    test_fraction: float = 0.1
    n_operations: int = 4          # 4 (click, cart, order, favorite) or 5 (+ comment: same shop)
    seed: int = 0


def jdata_scale(**overrides) -> SyntheticConfig:
    """The paper's JDATA(N) at full size (Table 1): 455k sessions, 139k items of which 3.3% appear
    only in the test period, 5 operations, 4 relations, mean session length 5.4."""
    return SyntheticConfig(**{"n_sessions": 455_481, "n_items": 134_548, "n_cold_items": 4_551,
                              "n_categories": 400, "n_brands": 6_000, "n_shops": 4_000, "n_years": 12,
                              "mean_length": 5.4, "n_operations": 5, "cold_share": 0.05, "zipf": 0.5, **overrides})


def _group_sampler(keys: np.ndarray, weights: np.ndarray, n_keys: int):
    """For items grouped by ``keys``, return a vectorised sampler key -> popularity-weighted item."""
    order = np.lexsort((-weights, keys))
    sk = keys[order]
    starts = np.searchsorted(sk, np.arange(n_keys))
    ends = np.searchsorted(sk, np.arange(n_keys), side="right")
    w = weights[order]
    cum = np.zeros(w.size + 1)
    cum[1:] = np.cumsum(w)  # group g owns the interval [cum[starts[g]], cum[ends[g]])

    def sample(k: np.ndarray, rng: np.random.Generator, fallback: np.ndarray) -> np.ndarray:
        s, e = starts[k], ends[k]
        lo, hi = cum[s], cum[e]
        empty = (e <= s) | (hi <= lo)
        u = lo + rng.random(k.size) * (hi - lo)
        pos = np.clip(np.searchsorted(cum, u, side="right") - 1, s, np.maximum(e - 1, s))
        out = order[np.minimum(pos, order.size - 1)]
        return np.where(empty, fallback, out)

    return sample


def generate(config: SyntheticConfig | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Return ``(events, knowledge)``.

    events: session_id, user_id, item_id, operation, timestamp (unix seconds), in time order.
    knowledge: item_id, relation, value for relations category, brand, shop, year.
    """
    c = config or SyntheticConfig()
    if c.n_operations not in (4, 5):
        raise ValueError(f"n_operations must be 4 or 5, got {c.n_operations}")
    n_ops = c.n_operations
    op_names = OPERATIONS + ("comment",) if n_ops == 5 else OPERATIONS
    trans, op_start = (OP_TRANSITIONS5, OP_START5) if n_ops == 5 else (OP_TRANSITIONS, OP_START)
    rng = np.random.default_rng(c.seed)
    n_all = c.n_items + c.n_cold_items
    cat = rng.integers(0, c.n_categories, n_all)
    brand = rng.integers(0, c.n_brands, n_all)
    shop = (brand * 7 + rng.integers(0, 3, n_all)) % c.n_shops  # shops mostly follow brands
    year = rng.integers(0, c.n_years, n_all)
    is_cold = np.zeros(n_all, dtype=bool)
    is_cold[c.n_items:] = True
    pop = 1.0 / (1.0 + rng.permutation(n_all)) ** c.zipf * 1000.0
    warm_w = np.where(is_cold, 0.0, pop)
    cold_w = np.where(is_cold, 1.0, 0.0)
    by_cat = _group_sampler(cat, warm_w, c.n_categories)
    by_brand = _group_sampler(brand, warm_w, c.n_brands)
    cold_by_cat = _group_sampler(cat, cold_w, c.n_categories)
    cold_by_brand = _group_sampler(brand, cold_w, c.n_brands)
    by_shop = _group_sampler(shop, warm_w, c.n_shops) if n_ops == 5 else None
    warm_p = warm_w / warm_w.sum()

    S = c.n_sessions
    lengths = np.clip(2 + rng.poisson(c.mean_length - 2, S), 2, c.max_length)
    starts = np.sort(rng.uniform(0, 30 * 86400, S)) + 1.6e9
    late = np.arange(S) >= int(round(S * (1 - c.test_fraction)))  # test-period sessions
    L = int(lengths.max())
    items = np.zeros((S, L), dtype=np.int64)
    ops = np.zeros((S, L), dtype=np.int64)
    items[:, 0] = rng.choice(n_all, S, p=warm_p)
    ops[:, 0] = rng.choice(n_ops, S, p=op_start)
    cum_t = np.cumsum(trans, axis=1)
    for t in range(1, L):
        prev, o = items[:, t - 1], ops[:, t - 1]
        c_same, c_comp = cat[prev], (cat[prev] + 1) % c.n_categories
        nxt = np.where(o == 0, by_cat(c_same, rng, prev),
              np.where(o == 1, by_brand(brand[prev], rng, prev),
              np.where(o == 2, by_cat(c_comp, rng, prev),
              np.where(o == 4, by_shop(shop[prev], rng, prev) if by_shop else prev, prev))))
        # cold items enter only test-period sessions, through the same attribute-driven rules
        cold = late & (rng.random(S) < c.cold_share) & (o != 3) & (o != 4)
        cold_pick = np.where(o == 1, cold_by_brand(brand[prev], rng, nxt),
                             cold_by_cat(np.where(o == 2, c_comp, c_same), rng, nxt))
        nxt = np.where(cold, cold_pick, nxt)
        noise = rng.random(S) < c.noise
        nxt = np.where(noise, rng.choice(n_all, S, p=warm_p), nxt)
        items[:, t] = nxt
        ops[:, t] = (rng.random(S)[:, None] > cum_t[o]).sum(axis=1).clip(0, n_ops - 1)
    mask = np.arange(L)[None, :] < lengths[:, None]
    sess_idx = np.nonzero(mask)[0]
    pos = np.nonzero(mask)[1]
    times = starts[sess_idx] + pos * 30.0 + rng.uniform(0, 20, pos.size)
    events = pl.DataFrame({"s": sess_idx, "i": items[mask], "o": ops[mask], "timestamp": np.round(times, 3)}).select(
        pl.format("s{}", "s").alias("session_id"),
        (pl.col("s") % max(1, S // 3)).alias("user_id"),
        pl.format("i{}", "i").alias("item_id"),
        pl.col("o").replace_strict(list(range(n_ops)), list(op_names), return_dtype=pl.Utf8).alias("operation"),
        "timestamp")
    knowledge = pl.DataFrame({
        "i": np.repeat(np.arange(n_all), 4),
        "relation": np.tile(["category", "brand", "shop", "year"], n_all),
        "v": np.stack([cat, brand, shop, 2010 + year], axis=1).reshape(-1),
    }).select(pl.format("i{}", "i").alias("item_id"), "relation", pl.col("v").cast(pl.Utf8).alias("value"))
    return events, knowledge


def write_synthetic(out: str | Path, config: SyntheticConfig | None = None, overwrite: bool = True) -> Path:
    """Write ``events.csv`` and ``knowledge.csv`` (generic format) into directory ``out``."""
    events, knowledge = generate(config)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        events.write_csv(tmp / "events.csv")
        knowledge.write_csv(tmp / "knowledge.csv")
    return Path(out)
