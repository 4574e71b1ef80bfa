"""Launch the fft_conv kernels once per case, for a profiler or a sanitizer to watch (bench/gpu_check.sh):

    ncu --clock-control none -k regex:fftconv python bench/profile_fftconv.py --lengths 1024 16384

Each (backend, L, dtype) is one gated causal forward call on fresh data (``--backward``: and
the gradients of u, k and the gates), after one untimed warm-up call that compiles the
kernels (ncu then profiles both calls' launches); its first rows are checked against the
float64 FFT convolution. Exit status 1 if a check fails.
"""
from __future__ import annotations

import argparse
import sys

import torch

from fastspec import _timing
from fastspec.ops import fftconv as ops

from bench_fftconv import check, make_inputs, shape_for  # bench/bench_fftconv.py


def main(argv=None) -> int:
    device = _timing.default_device()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", nargs="+", type=int, default=[1024, 16384], metavar="L")
    parser.add_argument("--dtypes", nargs="+", default=["float16"], choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--batch", type=int, help="B (default: the benchmark's)")
    parser.add_argument("--channels", type=int, help="H (default: the benchmark's)")
    parser.add_argument("--backward", action="store_true", help="the gradients too")
    parser.add_argument("--backends", nargs="+", choices=["torch", "triton"],
                        default=[b for b in _timing.usable_backends(device, timing=True) if b in ops._IMPLS])
    args = parser.parse_args(argv)
    failed = 0
    for backend in args.backends:
        for dtype in (getattr(torch, d) for d in args.dtypes):
            for L in args.lengths:
                shape = shape_for(L, device, args.batch, args.channels)
                inputs = make_inputs(shape, dtype, device, gated=True, backward=args.backward)
                u, k, pregate, postgate = inputs[:4]
                for _ in range(2):  # the first call compiles
                    y = ops.fft_conv(u, k, pregate=pregate, postgate=postgate, backend=backend)
                    if args.backward:
                        torch.autograd.grad(y, (u, k, pregate, postgate), inputs[4])
                err = check(inputs, y.detach())
                ok = err <= _timing.TOLERANCE[dtype]
                failed += not ok
                print(f"{backend:7s} L={L:<7d} {str(dtype):15s} shape={shape}: relative error {err:.1e} "
                      f"{'ok' if ok else 'FAIL'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
