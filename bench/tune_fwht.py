"""Variants of the Triton base-block kernel at one width, timed against torch.clone in
one run (bench/gpu_check.sh; the numbers choose the next defaults, see NOTES-fwht.md).

    python bench/tune_fwht.py [--sizes 11008 ...] [--dtypes float16 ...] [--rows R]

Each variant overrides launch parameters of the plan's GEMM launch (tile rows MT, K-chunk
KC, num_warps, num_stages) or drops its epilogue (a wrong result, timed only to split the
time between the GEMM and the epilogue: its error is printed, not checked). Every other
variant must match the reference.
"""
from __future__ import annotations

import argparse
import sys

import torch

from fastspec import _timing
from fastspec.hadamard import check_size
from fastspec.ops.fwht import Base
from fastspec.triton_kernels.fwht import fwht_base_kernel, kernel_calls

from bench_fwht import GPU_ROWS, check  # bench/bench_fwht.py

VARIANTS = {
    "default": {},
    "stages=2": {"num_stages": 2},
    "stages=4": {"num_stages": 4},
    "warps=8": {"num_warps": 8},
    "KC=64": {"KC": 64},
    "MT=128,warps=8": {"MT": 128, "num_warps": 8},
    "no epilogue (wrong)": {"EPILOGUE": False},
}


def run(x: torch.Tensor, overrides: dict) -> torch.Tensor:
    m, p = check_size(x.shape[-1])
    out = torch.empty_like(x)
    for kernel, grid, args, meta in kernel_calls(x, out, x.shape[-1] ** -0.5, p, Base(m)):
        if kernel is fwht_base_kernel:
            if meta["KP"] % overrides.get("MT", 1) or meta["KP"] % overrides.get("KC", 1):
                raise ValueError(f"the tiles do not divide the padded block order {meta['KP']}")
            meta = {**meta, **overrides}
        kernel[grid](*args, **meta)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[11008, 27648], metavar="N")
    parser.add_argument("--dtypes", nargs="+", default=["float16"], choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--rows", type=int, default=GPU_ROWS)
    args = parser.parse_args(argv)
    device = _timing.default_device()
    if device.type != "cuda":
        print("tune_fwht: needs a CUDA GPU")
        return 0
    rows_out, failed = [], 0
    for dtype in (getattr(torch, d) for d in args.dtypes):
        for n in args.sizes:
            inputs = [(torch.randn(args.rows, n, dtype=dtype, device=device),) for _ in range(2)]
            clone_ms = _timing.median_ms(torch.clone, inputs, device=device)
            for name, overrides in VARIANTS.items():
                row = {"n": n, "dtype": str(dtype).removeprefix("torch."), "variant": name}
                try:
                    err = check(inputs[0], run(inputs[0][0], overrides))
                    ms = _timing.median_ms(lambda x, o=overrides: run(x, o), inputs, device=device)
                    ok = err <= _timing.TOLERANCE[dtype] or "wrong" in name
                    failed += not ok
                    row |= {"ms": ms, "x clone": ms / clone_ms, "rel_err": err, "status": "ok" if ok else "FAIL"}
                except Exception as exc:  # noqa: BLE001 - a variant that does not compile is reported
                    row |= {"status": f"{type(exc).__name__}: {str(exc)[:80]}"}
                print(row, flush=True)
                rows_out.append(row)
    print(_timing.format_table(rows_out, ["n", "dtype", "variant", "ms", "x clone", "rel_err", "status"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
