"""State-space-model benchmark: fastspec.selective_scan, linear_scan and ssm_kernel on every
usable backend against their baselines, all in the same run.

    python bench/bench_ssm.py [--out DIR] [--quick] [--ops selective_scan linear_scan ssm_kernel
                              selective_state_update]
                              [--lengths L ...] [--rounds R] [--threads T]

Baselines (each where it applies and imports):
- selective_scan: the PyTorch loop over time (mamba's ``selective_scan_ref``:
  ``selective_scan_reference(dtype=float32)``), a vectorised PyTorch scan (whole-length
  doubling over materialised (B, D, N, L) tensors: ``selective_scan_parallel_pytorch``,
  forward only) (both up to L = 2K on the GPU), mamba_ssm's CUDA ``selective_scan_fn``. Mamba's layer: input-dependent
  B and C (B, N, L), D, z, delta_bias and softplus; forward, and forward+backward (the
  gradients of every input for a random gradient of out).
- linear_scan: the copy floor (torch.clone, always timed), the PyTorch loop at T ≤ 4096,
  accelerated-scan's CUDA (warp) and Triton scans.
- ssm_kernel: the materialised Vandermonde product in complex64 (S4D's
  ``log_vandermonde_naive``); peak memory on the GPU.
- selective_state_update (one decoding step of a Mamba-1 layer, dt softplus, D, z): the PyTorch
  formula (the torch backend's ``_state_update_torch``, as mamba's ``selective_state_update_ref``)
  without the op layer.

Sizes. GPU (the issue's): selective_scan batch 8, D = 2048, N = 16, L ∈ {512, 2K, 8K}, bf16
and fp32; linear_scan (8, 1536, T), T ∈ {4096, 65536}, fp32; ssm_kernel H = 1024, N = 64,
L = 16K; selective_state_update (16, 4096, 16), bf16 and fp32. CPU (what fits a 2-core machine):
selective_scan batch 2, D = 64, N = 16, L ∈ {512, 2K}, fp32; linear_scan (2, 64, T), T ∈
{4096, 65536}; ssm_kernel H = 16, N = 64, L = 16K; selective_state_update (2, 2048, 16), fp32;
three interleaved rounds.

Targets (printed in each row's note, never asserted): GPU selective_scan fwd+bwd ≥ 30× over
the PyTorch loop at L = 2K and at least mamba's speed; linear_scan ≥ 70% of the copy
bandwidth at T = 65536; ssm_kernel ≥ 10× over the materialised product. CPU: selective_scan
≥ 10× over the PyTorch loop at L = 2K (by the cpu backend, fastspec._C's C++ kernel, where it
is built; the torch backend does not reach it, README).
"""
from __future__ import annotations

import argparse
import functools
import math
import sys

import torch

from fastspec import _timing
from fastspec.ops import ssm as ops
from fastspec.reference.ssm import (linear_scan_reference, selective_scan_parallel_pytorch, selective_scan_reference,
                                    selective_state_update_reference, ssm_kernel_reference)

from harness import Case, Harness, add_run_arguments, print_header, run_settings  # bench/harness.py

GPU = {"selective_scan": ((8, 2048, 16), [512, 2048, 8192], ["bfloat16", "float32"]),
       "linear_scan": ((8, 1536), [4096, 65536], ["float32"]),
       "ssm_kernel": ((1024, 64), [16384], ["float32"]),
       "selective_state_update": ((16, 4096, 16), [1], ["bfloat16", "float32"])}
CPU = {"selective_scan": ((2, 64, 16), [512, 2048], ["float32"]),
       "linear_scan": ((2, 64), [4096, 65536], ["float32"]),
       "ssm_kernel": ((16, 64), [16384], ["float32"]),
       "selective_state_update": ((2, 2048, 16), [1], ["float32"])}
"""op -> (sizes besides the length, lengths, dtypes); selective_state_update: (batch, D, N), one
step (its length is 1)."""
LOOP_MAX_T = 4096
"""linear_scan's PyTorch loop runs up to this length (a Python step per time step)."""
GPU_BASELINE_MAX_L = 2048
"""On the GPU the selective-scan PyTorch baselines run up to this length (the target's; at
8K the loop's backward takes seconds a call and the parallel scan's tensors tens of GB)."""
CHECK_CHANNELS = 4
"""The checks compare the first batch element's first channels with the float64 reference."""


def _optional(module: str, name: str):
    """``module.name`` if it imports, else None."""
    try:
        return getattr(__import__(module, fromlist=[name]), name)
    except (ImportError, AttributeError):
        return None


def with_backward(forward):
    """fn(*inputs, grad) running ``forward`` and the gradients of every input that requires
    grad; returns the forward's output."""

    def run(*inputs):
        *tensors, grad = inputs
        out = forward(*tensors)
        torch.autograd.grad(out, [t for t in tensors if t.requires_grad], grad.to(out.dtype))
        return out.detach()

    return run


# ----------------------------------------------------------------------------- selective scan


def selective_inputs(shape, L, dtype, device, backward):
    """(u, delta, A, B, C, D, z, delta_bias[, grad]) of a Mamba layer: Δ after softplus in
    1e-3 … 0.1, A = −(1 … N), B and C (batch, N, L)."""
    batch, channels, N = shape
    u, z = (torch.randn(batch, channels, L, device=device, dtype=dtype) for _ in range(2))
    delta = (torch.randn(batch, channels, L, device=device) * 0.5).to(dtype)
    A = -torch.arange(1, N + 1, device=device, dtype=torch.float32).expand(channels, N).contiguous()
    B, C = (torch.randn(batch, N, L, device=device, dtype=dtype) for _ in range(2))
    D = torch.ones(channels, device=device)
    dt = torch.exp(torch.rand(channels, device=device) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    bias = dt + torch.log(-torch.expm1(-dt))
    tensors = (u, delta, A, B, C, D, z, bias)
    if not backward:
        return tensors
    return (*(t.requires_grad_() for t in tensors), torch.randn(batch, channels, L, device=device, dtype=dtype))


def _selective_rows(inputs):
    """The inputs cut to the first batch element and CHECK_CHANNELS channels."""
    u, delta, A, B, C, D, z, bias = (t.detach() for t in inputs[:8])
    c = slice(0, CHECK_CHANNELS)
    return u[:1, c], delta[:1, c], A[c], B[:1], C[:1], D[c], z[:1, c], bias[c]


def selective_check(inputs, out):
    rows = _selective_rows(inputs)
    return _timing.rel_error(out[:1, :CHECK_CHANNELS], selective_scan_reference(*rows, True))


def selective_case(shape, L, dtype, device, backward) -> Case:
    def ours(backend, *t):
        return ops.selective_scan(*t, True, backend=backend)

    baselines = {}
    if device.type != "cuda" or L <= GPU_BASELINE_MAX_L:
        baselines["pytorch-loop"] = lambda *t: selective_scan_reference(*t, True, dtype=torch.float32)
        if not backward:
            baselines["pytorch-parallel"] = lambda *t: selective_scan_parallel_pytorch(*t, True)
    mamba = _optional("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn")
    if mamba is not None and device.type == "cuda":
        baselines["mamba_ssm"] = lambda *t: mamba(*t, delta_softplus=True)
    wrap = with_backward if backward else (lambda fn: fn)
    candidates = {b: functools.partial(ours, b) for b in _timing.usable_backends(device, timing=True)
                  if b in ops._SELECTIVE}

    def target(backend, times):
        if "pytorch-loop" not in times or L != 2048:
            return None
        speedup = times["pytorch-loop"] / times[backend]
        need = 30 if device.type == "cuda" and backward else (10 if device.type != "cuda" else None)
        notes = [f"vs loop >= {need}: {'met' if speedup >= need else 'missed'}"] if need else []
        if "mamba_ssm" in times:
            notes.append(f"vs mamba >= 1: {'met' if times['mamba_ssm'] >= times[backend] else 'missed'}")
        return "; ".join(notes) or None

    return Case(op="selective_scan" + (" fwd+bwd" if backward else ""), shape=(*shape[:2], L), dtype=dtype,
                make=lambda: selective_inputs(shape, L, dtype, device, backward),
                candidates={k: wrap(f) for k, f in candidates.items()},
                baselines={k: wrap(f) for k, f in baselines.items()}, check=selective_check, target=target)


# ----------------------------------------------------------------------------- decoding step


def state_update_inputs(shape, dtype, device):
    """(state, x, dt, A, B, C, D, z, dt_bias) of one Mamba-1 decoding step: state (batch, D, N)."""
    batch, channels, N = shape
    state = torch.randn(batch, channels, N, device=device)
    x, z = (torch.randn(batch, channels, device=device, dtype=dtype) for _ in range(2))
    dt = (torch.randn(batch, channels, device=device) * 0.5).to(dtype)
    A = -torch.arange(1, N + 1, device=device, dtype=torch.float32).expand(channels, N).contiguous()
    B, C = (torch.randn(batch, N, device=device) for _ in range(2))
    return state, x, dt, A, B, C, torch.ones(channels, device=device), z, torch.randn(channels, device=device) - 4


def state_update_case(shape, dtype, device) -> Case:
    """Each call updates a copy of the state (the copy is timed too, the same for every entry)."""

    def step(fn):
        return lambda state, *rest: fn(state.clone(), *rest)

    def check(inputs, out):
        return _timing.rel_error(out, selective_state_update_reference(*inputs, True)[1])

    candidates = {b: step(functools.partial(lambda backend, *t: ops.selective_state_update(*t, True, backend=backend),
                                            b))
                  for b in _timing.usable_backends(device, timing=True) if b in ops._STATE_UPDATE}
    return Case(op="selective_state_update", shape=shape, dtype=dtype,
                make=lambda: state_update_inputs(shape, dtype, device), candidates=candidates,
                baselines={"pytorch-step": step(lambda *t: ops._state_update_torch(*t, True))}, check=check)


# ----------------------------------------------------------------------------- linear scan


def linear_inputs(shape, T, dtype, device):
    gates = torch.rand(*shape, T, device=device).to(dtype)
    return gates, torch.randn(*shape, T, device=device, dtype=dtype)


def linear_check(inputs, out):
    gates, tokens = (t[:1, :CHECK_CHANNELS] for t in inputs)
    return _timing.rel_error(out[:1, :CHECK_CHANNELS], linear_scan_reference(gates, tokens))


def linear_case(shape, T, dtype, device) -> Case:
    baselines = {}
    if T <= LOOP_MAX_T:
        baselines["pytorch-loop"] = lambda a, b: linear_scan_reference(a, b).to(b.dtype)
    if device.type == "cuda":
        for name, module in (("accelerated-scan-warp", "accelerated_scan.warp"),
                             ("accelerated-scan-triton", "accelerated_scan.triton")):
            scan = _optional(module, "scan")
            if scan is not None:
                baselines[name] = scan

    def target(backend, times):
        if "clone" not in times or T != 65536 or device.type != "cuda":
            return None
        fraction = times["clone"] * 1.5 / times[backend]  # scan moves 3 tensors, clone 2
        return f"copy bandwidth {fraction:.0%} >= 70%: {'met' if fraction >= 0.7 else 'missed'}"

    candidates = {b: functools.partial(lambda backend, a, x: ops.linear_scan(a, x, backend=backend), b)
                  for b in _timing.usable_backends(device, timing=True) if b in ops._LINEAR_SCAN}
    return Case(op="linear_scan", shape=(*shape, T), dtype=dtype, make=lambda: linear_inputs(shape, T, dtype, device),
                candidates=candidates, baselines=baselines, check=linear_check, target=target)


# ----------------------------------------------------------------------------- S4D kernel


def kernel_inputs(shape, dtype, device):
    H, N = shape
    A = torch.complex(torch.full((H, N), -0.5), torch.pi * torch.arange(N, dtype=torch.float32).expand(H, N))
    B = torch.ones(H, N, dtype=torch.complex64)
    C = torch.randn(H, N, dtype=torch.complex64)
    log_dt = torch.rand(H) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)
    return tuple(t.to(device) for t in (A, B, C, log_dt))


def kernel_case(shape, L, dtype, device) -> Case:
    def check(inputs, out):
        return _timing.rel_error(out[:CHECK_CHANNELS], ssm_kernel_reference(*(t[:CHECK_CHANNELS] for t in inputs), L))

    def target(backend, times):
        if "materialised" not in times:
            return None
        speedup = times["materialised"] / times[backend]
        return f"vs materialised >= 10: {'met' if speedup >= 10 else 'missed'}" if device.type == "cuda" else None

    candidates = {b: functools.partial(lambda backend, *t: ops.ssm_kernel(*t, L, backend=backend), b)
                  for b in _timing.usable_backends(device, timing=True) if b in ops._VANDERMONDE}
    return Case(op="ssm_kernel", shape=(*shape, L), dtype=dtype, make=lambda: kernel_inputs(shape, dtype, device),
                candidates=candidates,
                baselines={"materialised": lambda *t: ssm_kernel_reference(*t, L, dtype=torch.complex64)},
                check=check, target=target)


# ----------------------------------------------------------------------------- main


def cases(ops_wanted, device, quick: bool, lengths=None):
    table = GPU if device.type == "cuda" else CPU
    out = []
    for op in ops_wanted:
        shape, default_lengths, dtypes = table[op]
        op_lengths = lengths or ([min(default_lengths)] if quick else default_lengths)
        if quick:
            shape = tuple(min(s, 4) for s in shape[:-1]) + shape[-1:] if op.startswith("selective") else tuple(
                min(s, 4) for s in shape)
            op_lengths = [min(L, 256) for L in op_lengths]
        if op == "selective_state_update":
            op_lengths = [1]  # one step
        for dtype in (getattr(torch, d) for d in (dtypes[:1] if quick else dtypes)):
            for L in op_lengths:
                if op == "selective_scan":
                    out += [selective_case(shape, L, dtype, device, backward) for backward in (False, True)]
                elif op == "selective_state_update":
                    out.append(state_update_case(shape, dtype, device))
                elif op == "linear_scan":
                    out.append(linear_case(shape, L, dtype, device))
                else:
                    out.append(kernel_case(shape, L, dtype, device))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, quick="tiny sizes, short timing")
    parser.add_argument("--ops", nargs="+", choices=list(GPU), default=list(GPU))
    parser.add_argument("--lengths", nargs="+", type=int, metavar="L", help="replaces every op's lengths")
    args = parser.parse_args(argv)
    run = run_settings(args)
    peers = ", ".join(f"{name} {'found' if _optional(module, '__name__') else 'not installed'}"
                      for name, module in (("mamba_ssm", "mamba_ssm"), ("accelerated-scan", "accelerated_scan")))
    print_header("ssm", run, _timing.usable_backends(run.device, timing=True), peers)
    with Harness("ssm", run.device, args.out, rounds=run.rounds, **run.timing) as harness:
        for case in _timing.progress(cases(args.ops, run.device, args.quick, args.lengths), "ssm",
                                     lambda c: f"{c.op} {c.shape} {c.dtype}"):
            harness.run(case)
    return 1 if harness.failures else 0


if __name__ == "__main__":
    sys.exit(main())
