"""Launch each FWHT kernel once, for a profiler or a sanitizer to watch (bench/gpu_check.sh):

    ncu --clock-control none -k regex:fwht python bench/profile_fwht.py
    compute-sanitizer --tool racecheck python bench/profile_fwht.py --rows 1200 --backends cuda

Each (backend, n, dtype) is one call on fresh data (Triton compiles before it launches,
so each call is one launch, two for Triton above n = 2^15), then its first and last rows
are checked against the float64 reference. Exit status 1 if a check fails.
"""
from __future__ import annotations

import argparse
import sys

import torch

import fastspec
from fastspec import _timing

from bench_fwht import GPU_ROWS, check  # bench/bench_fwht.py


def main(argv=None) -> int:
    device = _timing.default_device()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=GPU_ROWS, help=f"rows (default {GPU_ROWS})")
    parser.add_argument("--sizes", nargs="+", type=int, default=[2048, 4096, 32768], metavar="N")
    parser.add_argument("--dtypes", nargs="+", default=["float16", "float32"], choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--backends", nargs="+", default=_timing.usable_backends(device, timing=True),
                        choices=["torch", "triton", "cuda"])
    args = parser.parse_args(argv)
    failed = 0
    for backend in args.backends:
        for dtype in (getattr(torch, d) for d in args.dtypes):
            for n in args.sizes:
                x = torch.randn(args.rows, n, dtype=dtype, device=device)
                try:
                    err = check((x,), fastspec.fwht(x, n**-0.5, backend=backend))
                except ValueError as exc:  # this backend does not take n
                    print(f"{backend:7s} n={n:<6d} {str(dtype):15s} skipped: {exc}", flush=True)
                    continue
                ok = err <= _timing.TOLERANCE[dtype]
                failed += not ok
                print(f"{backend:7s} n={n:<6d} {str(dtype):15s} rows={args.rows}: relative error {err:.1e} {'ok' if ok else 'FAIL'}",
                      flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
