"""FWHT benchmark: every usable fastspec.fwht backend against torch.clone (the copy
floor), the dense matmul x @ H, a pure-PyTorch butterfly and, when importable, the peers
fast_hadamard_transform.hadamard_transform (GPU) and, on the CPU, fht_cpu.fht (package
fht-cpu: SIMD C++ with OpenMP) and hadamard_transform.hadamard_transform (package
hadamard-transform: pure PyTorch), all measured in the same run.

    python bench/bench_fwht.py [--out DIR] [--quick] [--dtypes float16 ...] [--sizes 256 ...]
                               [--rows R ...] [--threads T] [--rounds K]

GPU headline: 16*2048 rows for n = 2^8..2^15 in float16, bfloat16 and float32, and
n = 2^16..2^20 with the rows cut so the input is about 1 GiB; the model widths that are
not powers of two (MODEL_WIDTHS: Llama-2, Qwen2.5, Gemma-2) in float16 and bfloat16 at
16*2048 rows. CPU: 256 and 4096 rows for n = 2^8..2^14 in float32 and float64, and the
model widths in float32, torch.set_num_threads(2), 11 interleaved rounds (a shared
machine's load hits every function alike). Scale is 1/sqrt(n) (fht_cpu has none: it
computes x @ H_n). Targets are printed, not asserted: on GPU time <= 1.10x clone for 2^k up
to 2^15, <= 2.2x beyond, <= 1.5x for a width with a base block; on CPU the cpu backend at
least as fast as fht_cpu, and the torch backend >= 5x faster than the matmul at n = 4096 fp32.
"""
from __future__ import annotations

import argparse
import functools
import sys

import torch

import fastspec
from fastspec import _timing
from fastspec.reference.fwht import fwht_dense, fwht_reference

from harness import Case, Harness, add_run_arguments, print_header, run_settings  # bench/harness.py

GPU_ROWS = 16 * 2048
"""Rows up to n = 2^15 on GPU (the shape of Dao's fast-hadamard-transform benchmark)."""
GPU_LARGE_BYTES = 2**30
"""Input bytes for n > 2^15 on GPU."""
CPU_ROWS, CPU_THREADS, CPU_ROUNDS = (256, 4096), 2, 11
"""CPU defaults: row counts, torch threads, interleaved rounds (the CPU peers' comparison)."""
MATMUL_MAX_N_GPU, MATMUL_MAX_N_CPU = 8192, 16384
"""Largest n for the dense-matmul baseline (the matrix is n x n)."""
MATMUL_MAX_FLOP_CPU = 2**33
"""... and on CPU at most this many flops a call (2·rows·n²)."""
CHECK_ROWS = 4
"""The correctness check compares this many first and last rows."""
MODEL_WIDTHS = (2304, 4864, 8960, 9216, 11008, 13824, 18944, 27648)
"""Hidden and MLP widths that are not powers of two: Gemma-2-2B 2304 = 36·64 and
9216 = 36·256, Qwen2.5-0.5B 4864 = 76·64, Qwen2.5-1.5B 8960 = 140·64, Llama-2-7B 11008 =
172·64, Llama-2-13B / Qwen2.5-14B 13824 = 108·128, Qwen2.5-7B 18944 = 148·128, Qwen2.5-32B
27648 = 108·256."""


def butterfly(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Baseline: x @ H_n * scale for n = 2^k by log2(n) PyTorch passes of (a + b, a - b),
    ping-ponging between two buffers; float16/bfloat16 are computed in float32."""
    n = x.shape[-1]
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    src = x.reshape(-1, n).to(acc)
    bufs = (torch.empty_like(src), torch.empty_like(src))
    for stage in range(n.bit_length() - 1):
        h = 1 << stage
        a = src.view(-1, n // (2 * h), 2, h)
        dst = bufs[stage % 2]
        d = dst.view(a.shape)
        torch.add(a[:, :, 0], a[:, :, 1], out=d[:, :, 0])
        torch.sub(a[:, :, 0], a[:, :, 1], out=d[:, :, 1])
        src = dst
    return (src * scale).to(x.dtype).reshape(x.shape)


def check(inputs: tuple, out: torch.Tensor, scale: float | None = None) -> float:
    """Relative error of ``out`` on the first and last rows against the float64 reference
    (scale: 1/sqrt(n) unless given)."""
    (x,) = inputs
    n = x.shape[-1]
    rows, flat = x.reshape(-1, n), out.reshape(-1, n)
    idx = sorted({*range(min(CHECK_ROWS, len(rows))), *range(max(len(rows) - CHECK_ROWS, 0), len(rows))})
    return _timing.rel_error(flat[idx], fwht_reference(rows[idx], n**-0.5 if scale is None else scale))


@functools.cache
def peer(name: str):
    """A peer's transform if its package is importable, else None: 'fast_hadamard_transform'
    (Dao, CUDA: hadamard_transform(x, scale)), 'fht_cpu' (fht(array, inplace, num_threads),
    float32/float64 numpy, unscaled) and 'hadamard_transform' (hadamard_transform(x), 1-D or
    2-D, scaled by 1/sqrt(n))."""
    module = {"fast_hadamard_transform": "fast_hadamard_transform", "fht_cpu": "fht_cpu",
              "hadamard_transform": "hadamard_transform"}[name]
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return mod.fht if name == "fht_cpu" else mod.hadamard_transform


def fht_cpu(x: torch.Tensor) -> torch.Tensor:
    """fht_cpu.fht out of place on torch's threads: x @ H_n (no scale)."""
    out = peer("fht_cpu")(x.numpy(), inplace=False, num_threads=torch.get_num_threads())
    return torch.from_numpy(out)


def hadamard_transform_2d(x: torch.Tensor) -> torch.Tensor:
    """hadamard-transform's hadamard_transform on (rows, n): x @ H_n / sqrt(n)."""
    return peer("hadamard_transform")(x)


def default_rows(n: int, dtype: torch.dtype, device: torch.device) -> tuple[int, ...]:
    size = torch.empty((), dtype=dtype).element_size()
    if device.type == "cuda":
        return (GPU_ROWS if n <= 2**15 else max(1, GPU_LARGE_BYTES // (n * size)),)
    return CPU_ROWS


def target(device: torch.device, n: int, dtype: torch.dtype):
    """The speed target for this point as Case.target, or None where there is none."""
    if device.type == "cuda":
        limit = 1.5 if n & (n - 1) else 1.10 if n <= 2**15 else 2.2

        def on_gpu(backend, times):
            if backend == "torch" or "clone" not in times:
                return None
            ratio = times[backend] / times["clone"]
            return f"x clone <= {limit}: {'met' if ratio <= limit else 'missed'}"

        return on_gpu

    def on_cpu(backend, times):
        if backend == "cpu" and "fht_cpu" in times:
            return f"vs fht_cpu >= 1: {'met' if times['fht_cpu'] >= times[backend] else 'missed'}"
        if backend == "torch" and "matmul" in times and n == 4096 and dtype == torch.float32:
            return f"vs matmul >= 5: {'met' if times['matmul'] / times[backend] >= 5 else 'missed'}"
        return None

    return on_cpu


def make_case(n: int, dtype: torch.dtype, rows: int, device: torch.device) -> Case:
    scale = n**-0.5
    gpu = device.type == "cuda"
    baselines, checks = {}, {}
    if gpu:
        matmul = n <= MATMUL_MAX_N_GPU
    else:
        matmul = n <= MATMUL_MAX_N_CPU and 2 * rows * n * n <= MATMUL_MAX_FLOP_CPU
    if matmul:
        baselines["matmul"] = functools.partial(fwht_dense, scale=scale)
    if n & (n - 1) == 0:
        baselines["butterfly"] = functools.partial(butterfly, scale=scale)
        if gpu and n <= 2**15 and peer("fast_hadamard_transform"):
            baselines["fast_hadamard_transform"] = functools.partial(peer("fast_hadamard_transform"), scale=scale)
        if not gpu and dtype in (torch.float32, torch.float64) and peer("fht_cpu"):
            baselines["fht_cpu"] = fht_cpu
            checks["fht_cpu"] = functools.partial(check, scale=1.0)
        if not gpu and peer("hadamard_transform"):
            baselines["hadamard_transform"] = hadamard_transform_2d
    return Case(
        op="fwht",
        shape=(rows, n),
        dtype=dtype,
        make=lambda: (torch.randn(rows, n, dtype=dtype, device=device),),
        candidates={b: functools.partial(fastspec.fwht, scale=scale, backend=b)
                    for b in _timing.usable_backends(device, timing=True)},
        baselines=baselines,
        check=check,
        target=target(device, n, dtype),
        checks=checks,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, quick="a few sizes, one dtype, shorter timing", cpu_rounds=CPU_ROUNDS,
                      cpu_threads=CPU_THREADS)
    parser.add_argument("--dtypes", nargs="+", choices=["float16", "bfloat16", "float32", "float64"])
    parser.add_argument("--sizes", nargs="+", type=int, metavar="N", help="transform lengths n")
    parser.add_argument("--rows", nargs="+", type=int, help="row counts for every n (default: see the module docstring)")
    args = parser.parse_args(argv)
    run = run_settings(args, quick_rep_ms=30, cpu_rounds=CPU_ROUNDS, quick_rounds=3, cpu_threads=CPU_THREADS)
    device, gpu = run.device, run.gpu
    if gpu:
        sizes = [2**10, 2**12, 2**15, 2**20] if args.quick else [2**k for k in range(8, 21)]
        dtypes = ["float16"] if args.quick else ["float16", "bfloat16", "float32"]
    else:
        sizes = [2**10, 2**12] if args.quick else [2**k for k in range(8, 15)]
        dtypes = ["float32"] if args.quick else ["float32", "float64"]
    sizes, dtypes = args.sizes or sizes, [getattr(torch, d) for d in args.dtypes or dtypes]

    points = [(n, dtype, rows) for dtype in dtypes for n in sizes for rows in args.rows or default_rows(n, dtype, device)]
    if not (args.quick or args.sizes):  # the model widths first: half precision on GPU, float32 on CPU
        width_dtypes = [d for d in dtypes if d in ((torch.float16, torch.bfloat16) if gpu else (torch.float32,))]
        points = [(n, dtype, (args.rows or default_rows(n, dtype, device))[0])
                  for dtype in width_dtypes for n in MODEL_WIDTHS] + points
    peers = ["fast_hadamard_transform"] if gpu else ["fht_cpu", "hadamard_transform"]
    print_header("fwht", run, _timing.usable_backends(device, timing=True),
                 ", ".join(f"{p} {'found' if peer(p) else 'not installed'}" for p in peers))
    with Harness("fwht", device, args.out, rounds=run.rounds, **run.timing) as harness:
        for n, dtype, rows in _timing.progress(points, "fwht", lambda p: f"n={p[0]} {p[1]} rows={p[2]}"):
            harness.run(make_case(n, dtype, rows, device))
    return 1 if harness.failures else 0


if __name__ == "__main__":
    sys.exit(main())
