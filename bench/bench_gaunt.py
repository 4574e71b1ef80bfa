"""Gaunt tensor product benchmark: fastspec.gaunt_tensor_product (the grid and Fourier methods
on the torch backend, the Triton grid kernel on CUDA) against, in the same run,
the dense contraction with the Gaunt table (what a Clebsch–Gordan kernel computes: method
"dense" as the baseline) and e3nn's ``o3.TensorProduct`` with Gaunt path weights where e3nn
imports (cuEquivariance is not wired in yet).

    python bench/bench_gaunt.py [--out DIR] [--quick] [--degrees L ...] [--dtypes float32 ...]
                                [--rows R] [--channels C] [--rounds K] [--threads T] [--no-backward]

Sizes: L1 = L2 = lmax_out = L ∈ {1, 2, 4, 6, 8, 10, 12}; GPU 4096 rows × 128 channels, float32
and bfloat16; CPU 1024 rows × 32 channels, float32, 3 interleaved rounds. Forward, and
forward+backward (the gradients of both inputs for a random output gradient). The record's
note says which method ``auto`` chose (its time is that method's row). On CPU the slow
functions stop early (CPU_SLOW_MAX_DEGREE). e3nn's layout is irreps-major ("C x 0e + C x 1o + ..."):
its inputs are converted (to_e3nn, "integral" normalisation) when they are made, outside the
timing, and its output is converted back for the check.

Targets (printed, never asserted): GPU faster than the dense contraction at every L ≥ 2,
≥ 10x over e3nn at L = 6 and ≥ 50x at L = 12, within 3x of the memory floor at L ≥ 8; CPU
faster than the dense contraction at L ≥ 4 and than e3nn at every L ≥ 2.
"""
from __future__ import annotations

import argparse
import functools
import sys

import torch

import fastspec
from fastspec import _timing
from fastspec.ops import gaunt as ops
from fastspec.reference.gaunt import gaunt_reference
from fastspec.spherical import from_e3nn, num_coefficients, to_e3nn

from harness import Case, Harness, add_run_arguments, print_header, run_settings  # bench/harness.py

DEGREES = (1, 2, 4, 6, 8, 10, 12)
GPU_ORDER = (6, 12, 8, 2, 4, 10, 1)
"""On the GPU the degrees run in this order, the targets' (L = 6, 12, 8) first: gpu_check.sh
gives each benchmark a share of its budget, and a run cut short still writes what it measured."""
GPU_SIZE, CPU_SIZE = (4096, 128), (1024, 32)
"""(rows, channels)."""
CHECK_ROWS = 4
"""The check compares the first rows (all channels) against the float64 reference."""
DENSE_MAX_DEGREE = 12
"""The dense baseline runs up to this L (its table has (L+1)^6 entries)."""
CPU_SLOW_MAX_DEGREE = {"dense": 8, "fourier": 6, "e3nn": 6, "backward": 6}
"""On CPU the slow functions run up to these L (forward; "backward": any of them with the
backward): at L = 8, 1024 × 32 rows, one call of e3nn takes ~4 s and of the dense
contraction ~3 s on one core, and each is called ~13 times a case."""


# ---------------------------------------------------------------------------- e3nn baseline


def _e3nn():
    try:
        from e3nn import o3
    except ImportError:
        return None
    return o3


def _irreps(channels: int, lmax: int) -> str:
    return " + ".join(f"{channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1))


def to_irreps_layout(x: torch.Tensor, lmax: int) -> torch.Tensor:
    """(rows, C, (L+1)²) in our basis -> e3nn's (rows, Σ_l C·(2l+1)) in its basis ("integral")."""
    e = to_e3nn(x, lmax, "integral")
    return torch.cat([e[..., l * l:(l + 1) ** 2].flatten(-2) for l in range(lmax + 1)], dim=-1)


def from_irreps_layout(y: torch.Tensor, lmax: int, channels: int) -> torch.Tensor:
    parts, start = [], 0
    for l in range(lmax + 1):
        size = channels * (2 * l + 1)
        parts.append(y[..., start:start + size].unflatten(-1, (channels, 2 * l + 1)))
        start += size
    return from_e3nn(torch.cat(parts, dim=-1), lmax, "integral")


@functools.lru_cache(maxsize=8)
def gaunt_path_weights(lmax: int) -> tuple[list[tuple[int, int, int]], torch.Tensor]:
    """The paths (l1, l2, l3), l1+l2+l3 even, of e3nn's "uuu" product up to lmax and the weight
    of each that makes it the Gaunt product (float64). Each path is one scalar times e3nn's 3j
    tensor, so the weight is fitted exactly from one path at a time on a single channel."""
    o3 = _e3nn()
    paths = [(l1, l2, l3) for l1 in range(lmax + 1) for l2 in range(lmax + 1)
             for l3 in range(abs(l1 - l2), min(l1 + l2, lmax) + 1, 2)]
    single = o3.Irreps(_irreps(1, lmax))
    probe = o3.TensorProduct(single, single, single, [(*p, "uuu", True) for p in paths], internal_weights=False,
                             shared_weights=True).double()
    x1, x2 = (torch.randn(4, 1, num_coefficients(lmax), dtype=torch.float64) for _ in range(2))
    a, b = to_irreps_layout(x1, lmax), to_irreps_layout(x2, lmax)
    weights = torch.zeros(len(paths), dtype=torch.float64)
    for i, (l1, l2, l3) in enumerate(paths):
        got = from_irreps_layout(probe(a, b, torch.eye(len(paths), dtype=torch.float64)[i]), lmax, 1)
        want = gaunt_reference(x1 * _only(l1, lmax), x2 * _only(l2, lmax), lmax)
        got, want = (t[..., l3 * l3:(l3 + 1) ** 2] for t in (got, want))
        weights[i] = (got * want).sum() / (got * got).sum()
    return paths, weights


@functools.lru_cache(maxsize=8)
def e3nn_gaunt(channels: int, lmax: int, device: torch.device, dtype: torch.dtype):
    """e3nn's o3.TensorProduct over every Gaunt path up to lmax, "uuu" (channel-wise), with the
    fitted path weights as the buffer ``gaunt_weights`` (one weight a path and channel)."""
    o3 = _e3nn()
    paths, weights = gaunt_path_weights(lmax)
    irreps = o3.Irreps(_irreps(channels, lmax))
    tp = o3.TensorProduct(irreps, irreps, irreps, [(*p, "uuu", True) for p in paths], internal_weights=False,
                          shared_weights=True)
    tp.register_buffer("gaunt_weights", weights.repeat_interleave(channels).to(dtype))
    return tp.to(device=device, dtype=dtype)


def _only(l: int, lmax: int) -> torch.Tensor:
    mask = torch.zeros(num_coefficients(lmax), dtype=torch.float64)
    mask[l * l:(l + 1) ** 2] = 1.0
    return mask


# ---------------------------------------------------------------------------- cases


def _with_backward(forward):
    """fn(x1, x2, grad, ...) running forward and the backward of both inputs for grad."""
    def run(x1, x2, grad, *rest):
        a, b = x1.detach().requires_grad_(), x2.detach().requires_grad_()
        out = forward(a, b, *rest)
        ga, gb = torch.autograd.grad(out, (a, b), grad)
        return torch.cat([ga.flatten(), gb.flatten()])
    return run


def case(rows: int, channels: int, lmax: int, dtype: torch.dtype, device: torch.device, backward: bool,
         e3nn_ok: bool) -> Case:
    d = num_coefficients(lmax)
    use_e3nn = e3nn_ok and _e3nn() is not None and (device.type == "cuda" or lmax <= CPU_SLOW_MAX_DEGREE["e3nn"])
    tp = e3nn_gaunt(channels, lmax, device, dtype) if use_e3nn else None

    def make():
        x1, x2 = (torch.randn(rows, channels, d, device=device).to(dtype) for _ in range(2))
        grad = torch.randn(rows, channels, d, device=device).to(dtype)
        extra = (to_irreps_layout(x1, lmax), to_irreps_layout(x2, lmax), to_irreps_layout(grad, lmax)) if use_e3nn else ()
        return (x1, x2, grad, *extra)

    def ours(method, backend):
        return lambda x1, x2, *rest: fastspec.gaunt_tensor_product(x1, x2, lmax, method=method, backend=backend)

    def e3nn_fwd(x1, x2, grad, a, b, g):
        return tp(a, b, tp.gaunt_weights)

    def check(inputs, out):
        x1, x2, grad = (t[:CHECK_ROWS].double() for t in inputs[:3])
        if not backward:
            return _timing.rel_error(out[:CHECK_ROWS], gaunt_reference(x1, x2, lmax))
        r1, r2 = x1.requires_grad_(), x2.requires_grad_()
        want = torch.autograd.grad(gaunt_reference(r1, r2, lmax), (r1, r2), grad)
        n = inputs[0].numel()
        got = (out[:n].view_as(inputs[0])[:CHECK_ROWS], out[n:].view_as(inputs[1])[:CHECK_ROWS])
        return max(_timing.rel_error(g, w) for g, w in zip(got, want))

    def check_e3nn(inputs, out):
        x1, x2, grad = inputs[:3]
        if backward:  # e3nn's gradients are in its basis: convert them (orthogonal per degree)
            n = inputs[3].numel()
            out = torch.cat([from_irreps_layout(out[:n].view_as(inputs[3]), lmax, channels).flatten(),
                             from_irreps_layout(out[n:].view_as(inputs[4]), lmax, channels).flatten()])
            return check(inputs, out)
        return check(inputs, from_irreps_layout(out, lmax, channels))

    wrap = _with_backward if backward else (lambda fn: fn)
    cpu = device.type != "cuda"

    def runs(name):  # the slow functions at small L only on CPU
        return not cpu or lmax <= min(CPU_SLOW_MAX_DEGREE[name], CPU_SLOW_MAX_DEGREE["backward"] if backward else 99)

    candidates = {"torch:grid": ours("grid", "torch")}
    if runs("fourier"):
        candidates["torch:fourier"] = ours("fourier", "torch")
    if device.type == "cuda" and fastspec.backends()["triton"].available:
        candidates["triton:grid"] = ours("grid", "triton")
    candidates = {name: wrap(fn) for name, fn in candidates.items()}
    baselines = {}
    if lmax <= DENSE_MAX_DEGREE and runs("dense"):
        baselines["dense"] = wrap(ours("dense", "torch"))
    if use_e3nn:
        baselines["e3nn"] = (lambda x1, x2, grad, a, b, g: _with_backward(
            lambda p, q: tp(p, q, tp.gaunt_weights))(a, b, g)) if backward else e3nn_fwd
    chosen = ops.choose_method("auto", ops.choose_backend("auto", device, dtype, "auto"), lmax, lmax, lmax)

    def target(backend, times):
        notes = []
        if "dense" in times and lmax >= (2 if device.type == "cuda" else 4):
            notes.append(f"vs dense {times['dense'] / times[backend]:.2f}x (need > 1)")
        if "e3nn" in times and lmax >= 2:
            need = {6: 10, 12: 50}.get(lmax, 1) if device.type == "cuda" else 1
            notes.append(f"vs e3nn {times['e3nn'] / times[backend]:.1f}x (need >= {need})")
        return "; ".join(notes) or None

    op = "gaunt_tensor_product" + (" fwd+bwd" if backward else "")
    return Case(op=op, shape=(rows, channels, lmax), dtype=dtype, make=make, candidates=candidates,
                baselines=baselines, check=check, checks={"e3nn": check_e3nn}, target=target,
                tolerances={"e3nn": 1e-4 if dtype == torch.float32 else 3e-2},
                floor_bytes=(3 if not backward else 6) * rows * channels * d * torch.empty((), dtype=dtype).element_size(),
                note=f"auto chose method={chosen!r}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, quick="tiny sizes, short timing")
    parser.add_argument("--degrees", nargs="+", type=int, help="default: 1 2 4 6 8 10 12 (GPU: in GPU_ORDER)")
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--rows", type=int)
    parser.add_argument("--channels", type=int)
    parser.add_argument("--no-backward", action="store_true", help="forward only")
    parser.add_argument("--no-e3nn", action="store_true", help="leave e3nn out")
    args = parser.parse_args(argv)
    run = run_settings(args, cpu_rep_ms=200, gpu_rep_ms=100, warmup_ms=25, quick_rounds=3)
    device = run.device
    rows, channels = GPU_SIZE if device.type == "cuda" else CPU_SIZE
    if args.quick:
        rows, channels = 64, 4
    args.degrees = args.degrees or ([2] if args.quick else list(GPU_ORDER if device.type == "cuda" else DEGREES))
    rows, channels = args.rows or rows, args.channels or channels
    dtypes = args.dtypes or (["float32", "bfloat16"] if device.type == "cuda" else ["float32"])
    print_header("gaunt", run, _timing.usable_backends(device, timing=True),
                 "e3nn left out" if args.no_e3nn else f"e3nn {'found' if _e3nn() else 'not installed'}")
    with Harness("gaunt", device, args.out, rounds=run.rounds, **run.timing) as harness:
        for lmax in args.degrees:
            for name in dtypes:
                for backward in ((False,) if args.no_backward else (False, True)):
                    print(f"gaunt L={lmax} {name} {'fwd+bwd' if backward else 'fwd'}", flush=True)
                    harness.run(case(rows, channels, lmax, getattr(torch, name), device, backward, not args.no_e3nn))
    return 1 if harness.failures else 0


if __name__ == "__main__":
    sys.exit(main())
