"""Generate a JDATA 2018-sized raw dataset in the real layout (jdata_action.csv, jdata_product.csv).

The real action log has 37,214,269 rows from about 1.6M users on 378k items over Feb 1 -
Apr 15 2018. This writes the same number of rows in the same columns and formats
(``user_id,sku_id,action_time,module_id,type``; datetimes with the trailing ``.0``; an empty
module_id now and then; rows in time order), with session-like bursts per user (gaps of about
a minute inside a burst, hours to days between bursts), Zipf-like item popularity and
repeated items, so that sessions, filters and joins do realistic work. Nothing here is
committed: write it under benchmarks/out/ or /tmp.

    python benchmarks/gen_jdata2018.py --out /tmp/jdata2018-37m            # 37.2M rows, ~1.6 GB
    python benchmarks/gen_jdata2018.py --out /tmp/jd-small --rows 1000000
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import polars as pl

T_START = 1517443200  # 2018-02-01 00:00:00
DAYS = 74
OPS = np.array([1, 2, 3, 4, 5])
OP_P = np.array([0.86, 0.03, 0.03, 0.02, 0.06])  # browse, order, follow, comment, cart


def generate(out: Path, rows: int, users: int, items: int, seed: int = 0, chunk: int = 4_000_000) -> None:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    # sessions: 1 + geometric lengths with mean ~6.5 (many singletons, a long tail)
    draw = rows // 4 + 1000
    lens = rng.geometric(1 / 5.5, size=draw).astype(np.int64) + rng.integers(0, 2, draw)
    lens = np.maximum(lens, 1)
    cum = np.cumsum(lens)
    n_sess = int(np.searchsorted(cum, rows)) + 1
    lens = lens[:n_sess]
    lens[-1] -= int(cum[n_sess - 1] - rows)
    lens = lens[lens > 0]
    n_sess = lens.size
    sess_user = rng.integers(0, users, n_sess)
    sess_start = rng.uniform(0, DAYS * 86400 - 7200, n_sess)
    sess_of = np.repeat(np.arange(n_sess), lens)
    first = np.repeat(np.cumsum(lens) - lens, lens)
    pos = np.arange(rows) - first
    gaps = rng.exponential(70.0, rows).clip(1, 1800)
    gaps[pos == 0] = 0.0
    # within-session time = session start + running sum of gaps inside the session
    run = np.cumsum(gaps)
    t = sess_start[sess_of] + run - run[first]
    # items: power-law popularity over a shuffled id space; 30% of actions repeat the previous item
    ids = rng.permutation(np.arange(100_000, 100_000 + items))
    pop = (items * rng.random(rows) ** 2.5).astype(np.int64).clip(0, items - 1)
    item = ids[pop]
    rep = (rng.random(rows) < 0.3) & (pos > 0)
    idx = np.arange(rows)
    src = np.maximum.accumulate(np.where(~rep, idx, 0))  # the latest non-repeated position
    item = item[src]
    op = rng.choice(OPS, rows, p=OP_P)
    user = sess_user[sess_of] + 1
    order = np.argsort(t, kind="stable")
    del sess_of, first, pos, gaps, run, pop, rep, idx, src
    module = rng.integers(1, 9000, rows)
    path = out / "jdata_action.csv"
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        fh.write(b"user_id,sku_id,action_time,module_id,type\n")
        for lo in range(0, rows, chunk):
            o = order[lo:lo + chunk]
            df = pl.DataFrame({"user_id": user[o], "sku_id": item[o], "t": (T_START + t[o]).astype(np.int64),
                               "module_id": module[o], "type": op[o]})
            df = df.select("user_id", "sku_id",
                           (pl.from_epoch("t", time_unit="s").dt.strftime("%Y-%m-%d %H:%M:%S") + ".0").alias("action_time"),
                           pl.when(pl.col("module_id") % 50 == 0).then(pl.lit("")).otherwise(pl.col("module_id").cast(pl.Utf8))
                           .alias("module_id"), "type")
            df.write_csv(fh, include_header=False)
    prod = pl.DataFrame({"sku_id": ids, "brand": rng.integers(1, 9000, items), "shop_id": rng.integers(1, 12000, items),
                         "cate": rng.integers(1, 80, items),
                         "m": T_START - rng.integers(0, 6 * 365 * 86400, items)})
    prod.select("sku_id", "brand", "shop_id", "cate",
                (pl.from_epoch("m", time_unit="s").dt.strftime("%Y-%m-%d %H:%M:%S") + ".0").alias("market_time")) \
        .write_csv(out / "jdata_product.csv")
    print(f"wrote {rows:,} actions ({n_sess:,} bursts, {users:,} users, {items:,} items) to {path} "
          f"({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--rows", type=int, default=37_214_269)
    p.add_argument("--users", type=int, default=1_608_707)
    p.add_argument("--items", type=int, default=378_457)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    generate(a.out, a.rows, a.users, a.items, a.seed)


if __name__ == "__main__":
    main()
