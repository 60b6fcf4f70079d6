"""The three GEMMs of a full-catalogue softmax step, float32 against bfloat16 (AMX where the CPU has it).

    flock /tmp/mkmsr-cpu.lock .venv/bin/python benchmarks/gemm_dtypes.py [--items 139000] [--batch 128] [--dim 100]

Per dtype: logits = s E^T (B x N), dL/ds = G E (B x d), dL/dE = G^T s (N x d), each timed as the mean
of 10 calls after a warm-up, on the given threads. Prints GFLOP/s and ms and writes
benchmarks/out/gemm_dtypes.json. It measures what the mixed-precision scoring option
(`mkmsr train --precision bf16`, mkmsr.models.scoring) can gain on this machine at most.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=139_000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dim", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "gemm_dtypes.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    B, d, N = a.batch, a.dim, a.items
    flops = 2 * B * d * N
    rows = []
    for dt in (torch.float32, torch.bfloat16):
        g = torch.Generator().manual_seed(0)
        s = torch.randn(B, d, generator=g).to(dt)
        E = torch.randn(N, d, generator=g).to(dt)
        G = torch.randn(B, N, generator=g).to(dt)
        total = 0.0
        for name, f in (("logits", lambda: s @ E.T), ("grad_s", lambda: G @ E), ("grad_E", lambda: G.T @ s)):
            f()
            t = time.perf_counter()
            for _ in range(a.calls):
                f()
            sec = (time.perf_counter() - t) / a.calls
            total += sec
            rows.append({"dtype": str(dt).replace("torch.", ""), "gemm": name, "ms": round(sec * 1e3, 2),
                         "gflops": round(flops / sec / 1e9, 1)})
            print(f"{rows[-1]['dtype']:9s} {name:7s} {rows[-1]['gflops']:7.1f} GFLOP/s  {rows[-1]['ms']:6.1f} ms")
        print(f"{str(dt).replace('torch.', ''):9s} all three: {total * 1e3:.1f} ms per batch of {B}")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"items": N, "batch": B, "dim": d, "threads": a.threads, "rows": rows}, indent=2) + "\n")
    print(f"written {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
