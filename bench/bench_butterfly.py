"""Butterfly and Monarch benchmark: fastspec.butterfly_multiply and monarch_multiply on every
usable backend against their baselines, all in the same run.

    python bench/bench_butterfly.py [--out DIR] [--quick] [--ops butterfly monarch] [--sizes N ...]
                                    [--batch B] [--dtypes float32 bfloat16] [--rounds R] [--threads T]

Baselines:
- butterfly: dense ``nn.Linear`` (F.linear with the butterfly's dense matrix, so it computes the
  same product), and a pure-PyTorch butterfly with one broadcast-multiply-and-sum per factor
  (torch_butterfly's ``butterfly_multiply_torch`` formulation, written out here).
- monarch (nblocks = √n, blocks √n × √n): dense ``nn.Linear`` with the Monarch matrix, and
  fly's two-bmm ``BlockdiagButterflyMultiply`` forward (bmm, a permutation copy, bmm).
Each forward, and forward+backward (the gradients of x and of the weights for a random
output gradient). The copy floor (torch.clone of x) is timed in the same run: ``x clone``
is the fraction of the copy bandwidth the memory-bound butterfly reaches.

Sizes. GPU (the issue's): batch 16384, n ∈ {1024, 4096, 16384}, float32 and bfloat16. CPU:
batch 1024, n ∈ {1024, 4096}, float32; three interleaved rounds.

Targets (printed in each row's note, never asserted): GPU bf16 n = 4096, Monarch ≥ 1.5× over
the two-bmm Monarch and ≥ 3× over dense; GPU fp32, butterfly ≥ 5× over the per-factor PyTorch
butterfly and faster than dense at n ≥ 4096. CPU: the torch Monarch at least as fast as the
two-bmm baseline.
"""
from __future__ import annotations

import argparse
import functools
import math
import sys

import torch
import torch.nn.functional as F

from fastspec import _timing
from fastspec.butterfly import random_orthogonal_twiddle
from fastspec.ops import butterfly as ops
from fastspec.reference.butterfly import butterfly_per_factor, butterfly_reference, monarch_reference, monarch_two_bmm

from harness import (Case, Harness, add_run_arguments, control_note, print_header, run_settings,  # bench/harness.py
                     with_control)

GPU = {"batch": 16384, "sizes": [1024, 4096, 16384], "dtypes": ["float32", "bfloat16"]}
CPU = {"batch": 1024, "sizes": [1024, 4096], "dtypes": ["float32"]}
CHECK_ROWS = 4
"""The checks compare the first rows with the float64 reference."""


# ----------------------------------------------------------------------------- baselines


def with_backward(forward):
    """fn(*inputs, grad) running ``forward`` and the gradients of every input that requires
    grad; returns the forward's output."""

    def run(*inputs):
        *tensors, grad = inputs
        out = forward(*tensors)
        torch.autograd.grad(out, [t for t in tensors if t.requires_grad], grad.reshape(out.shape), allow_unused=True)
        return out.detach()

    return run


# ----------------------------------------------------------------------------- cases


def _dense_of(apply, n: int, dtype, device) -> torch.Tensor:
    """The (n, n) matrix W with apply(x) = x @ Wᵀ, in dtype (built in float32)."""
    return apply(torch.eye(n, device=device)).T.contiguous().to(dtype)


def butterfly_case(batch: int, n: int, dtype, device, backward: bool) -> Case:
    twiddle = random_orthogonal_twiddle(1, 1, n, torch.float32, device)
    dense = _dense_of(lambda e: ops.butterfly_torch(twiddle, e[:, None], True)[:, 0], n, dtype, device)
    twiddle = twiddle.to(dtype)

    def make():
        x = torch.randn(batch, 1, n, device=device, dtype=dtype)
        tw, w = twiddle.clone(), dense
        if not backward:
            return x, tw, w
        return x.requires_grad_(), tw.requires_grad_(), w.clone().requires_grad_(), torch.randn_like(x)

    def check(inputs, out):
        x, tw = inputs[0][:CHECK_ROWS].detach(), inputs[1].detach()
        return _timing.rel_error(out[:CHECK_ROWS].reshape(-1, 1, n), butterfly_reference(tw, x))

    def ours(backend, x, tw, w):
        return ops.butterfly_multiply(tw, x, backend=backend)

    baselines = {"dense": lambda x, tw, w: F.linear(x, w),
                 "pytorch-per-factor": lambda x, tw, w: butterfly_per_factor(tw, x)}
    candidates = {b: functools.partial(ours, b) for b in _timing.usable_backends(device, timing=True)
                  if b in ops._BUTTERFLY}

    def target(backend, times):
        notes = []
        if device.type == "cuda" and dtype == torch.float32 and "pytorch-per-factor" in times:
            speedup = times["pytorch-per-factor"] / times[backend]
            notes.append(f"vs per-factor >= 5: {'met' if speedup >= 5 else 'missed'}")
        if device.type == "cuda" and dtype == torch.float32 and n >= 4096 and "dense" in times:
            notes.append(f"faster than dense: {'met' if times['dense'] > times[backend] else 'missed'}")
        return "; ".join(notes) or None

    wrap = with_backward if backward else (lambda fn: fn)
    x_bytes = batch * n * torch.finfo(dtype).bits // 8
    return Case(op="butterfly" + (" fwd+bwd" if backward else ""), shape=(batch, n), dtype=dtype, make=make,
                candidates={k: wrap(f) for k, f in candidates.items()},
                baselines={k: wrap(f) for k, f in baselines.items()}, check=check, target=target,
                floor_bytes=(4 if backward else 2) * x_bytes)


def monarch_case(batch: int, n: int, dtype, device, backward: bool) -> Case:
    b = math.isqrt(n)
    if b * b != n:
        raise ValueError(f"monarch: n must be a square (nblocks = √n), got {n}")
    w1 = (torch.randn(b, b, b, device=device) / math.sqrt(b))
    w2 = (torch.randn(b, b, b, device=device) / math.sqrt(b))
    dense = _dense_of(lambda e: ops.monarch_torch(e, w1, w2), n, dtype, device)
    w1, w2 = w1.to(dtype), w2.to(dtype)

    def make():
        x = torch.randn(batch, n, device=device, dtype=dtype)
        if not backward:
            return x, w1, w2, dense
        return (x.requires_grad_(), w1.clone().requires_grad_(), w2.clone().requires_grad_(),
                dense.clone().requires_grad_(), torch.randn_like(x))

    def check(inputs, out):
        x, a, c = (t.detach() for t in inputs[:3])
        return _timing.rel_error(out[:CHECK_ROWS], monarch_reference(x[:CHECK_ROWS], a, c))

    def ours(backend, x, a, c, w):
        return ops.monarch_multiply(x, a, c, backend=backend)

    baselines = with_control({"dense": lambda x, a, c, w: F.linear(x, w),
                              "two-bmm": lambda x, a, c, w: monarch_two_bmm(x, a, c)}, "two-bmm", device)
    candidates = {k: functools.partial(ours, k) for k in _timing.usable_backends(device, timing=True)
                  if k in ops._MONARCH}

    def target(backend, times):
        notes = []
        if device.type == "cuda" and dtype == torch.bfloat16 and n == 4096:
            for base, need in (("two-bmm", 1.5), ("dense", 3.0)):
                if base in times:
                    notes.append(f"vs {base} >= {need}: {'met' if times[base] / times[backend] >= need else 'missed'}")
        if device.type == "cpu" and backend == "torch" and "two-bmm" in times:
            notes.append(f"vs two-bmm >= 1: {'met' if times['two-bmm'] >= times[backend] else 'missed'}"
                         f"{control_note(times, 'two-bmm')}")
        return "; ".join(notes) or None

    wrap = with_backward if backward else (lambda fn: fn)
    x_bytes = batch * n * torch.finfo(dtype).bits // 8
    return Case(op="monarch" + (" fwd+bwd" if backward else ""), shape=(batch, n), dtype=dtype, make=make,
                candidates={k: wrap(f) for k, f in candidates.items()},
                baselines={k: wrap(f) for k, f in baselines.items()}, check=check, target=target,
                floor_bytes=(4 if backward else 2) * x_bytes)


# ----------------------------------------------------------------------------- main


def cases(ops_wanted, device, quick: bool, sizes=None, batch=None, dtypes=None):
    table = GPU if device.type == "cuda" else CPU
    batch = batch or (64 if quick else table["batch"])
    sizes = sizes or ([256] if quick else table["sizes"])
    out = []
    for dtype in (getattr(torch, d) for d in (dtypes or table["dtypes"][:1 if quick else None])):
        for n in sizes:
            for backward in (False, True):
                if "butterfly" in ops_wanted:
                    out.append(butterfly_case(batch, n, dtype, device, backward))
                if "monarch" in ops_wanted and math.isqrt(n) ** 2 == n:
                    out.append(monarch_case(batch, n, dtype, device, backward))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, quick="tiny sizes, short timing")
    parser.add_argument("--ops", nargs="+", choices=["butterfly", "monarch"], default=["butterfly", "monarch"])
    parser.add_argument("--sizes", nargs="+", type=int, metavar="N", help="replaces the sizes n")
    parser.add_argument("--batch", type=int, help="replaces the batch")
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    run = run_settings(args)
    print_header("butterfly", run, _timing.usable_backends(run.device, timing=True))
    with Harness("butterfly", run.device, args.out, rounds=run.rounds, **run.timing) as harness:
        for case in _timing.progress(cases(args.ops, run.device, args.quick, args.sizes, args.batch, args.dtypes),
                                     "butterfly", lambda c: f"{c.op} {c.shape} {c.dtype}"):
            harness.run(case)
    return 1 if harness.failures else 0


if __name__ == "__main__":
    sys.exit(main())
