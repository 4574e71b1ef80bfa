"""FFT long-convolution benchmark: every usable fastspec.fft_conv backend against the
PyTorch FFT convolution everyone writes (rfft of u and k at 2L, product, irfft, gates as
separate ops: ``fastspec.reference.fftconv.fft_conv_pytorch``) and, where importable,
FlashFFTConv itself (``FlashFFTConv(2L)``), all in the same run; causal mode, a filter as
long as the sequence (k in float32, as FlashFFTConv wants it).

    python bench/bench_fftconv.py [--out DIR] [--quick] [--lengths L ...] [--dtypes ...]
                                  [--kinds KIND ...] [--batch B] [--channels H] [--rounds R]
                                  [--rep-ms MS] [--threads T]

Cases (issue 7's table): L = 256, 1K, 4K, 8K, 16K, 32K, 64K and 1M; plain (u, k) and gated
(u·pregate, ·postgate); forward, and forward+backward (the gradients of u, k and the gates
for a random grad_y). Kinds run in the order gated forward, gated forward+backward, plain
forward, plain forward+backward (so a run cut short keeps the headline rows).
GPU: float16 and bfloat16; B = 64, H = 768, scaled down so that B·H·L ≤ 2^28 (u of 512 MiB
in half precision; B = 42 at L = 8K, ..., B = 1 and H = 256 at L = 1M): the PyTorch
baseline's forward+backward keeps several float32 and complex copies of u at 2L, and at
L = 1M 64·768 rows would be 100 GB of u alone. Each scaled record says so in its ``note``.
Peak memory of every function (peak_mb, baseline_peak_mb). CPU: float32 and bfloat16,
B = 8, H = 64, L up to 64K (1M: 2 GiB a float32 tensor there, more than this machine's
memory for the baseline's backward), three interleaved rounds (other jobs share the
machine: the load average is printed).

The memory floor (x_floor): the bytes of u, the gates and y once (for the backward also
grad_y, u and the gates again, and du and the gates' gradients) over the copy bandwidth of
``torch.clone`` measured in the same run. Each row's target note gives, on the GPU, the
issue's targets: forward gated ≥ 8× over the PyTorch baseline at L = 1K, ≥ 5× at 4K–16K,
≥ 2× at 1M; forward+backward ≥ 4× at 1K–16K; peak memory ≤ 1/6 of the baseline's. On the
CPU: the torch backend at least as fast as the baseline, beside the run's noise (the baseline
timed twice: harness.with_control).
"""
from __future__ import annotations

import argparse
import functools
import sys

import torch

from fastspec import _timing
from fastspec.ops import fftconv as ops
from fastspec.reference.fftconv import fft_conv_pytorch

from harness import (Case, Harness, add_run_arguments, control_note, print_header, run_settings,  # bench/harness.py
                     with_control)

GPU_BATCH, GPU_CHANNELS, GPU_MAX_ELEMENTS = 64, 768, 2**28
CPU_BATCH, CPU_CHANNELS = 8, 64
LENGTHS = [256, 1024, 4096, 8192, 16384, 32768, 65536, 2**20]
CPU_LENGTHS = LENGTHS[:-1]
GPU_DTYPES, CPU_DTYPES = ["float16", "bfloat16"], ["float32", "bfloat16"]
KINDS = {"gated": (True, False), "gated-bwd": (True, True), "plain": (False, False), "plain-bwd": (False, True)}
"""--kinds names: (gated, forward+backward), in the order they run."""
CHECK_ROWS = 2
"""The correctness check compares the first channels of the first batch element."""
FLASHFFTCONV_TOLERANCE = 5e-2
"""Relative error FlashFFTConv is timed within: it computes its FFTs in float16/bfloat16
(its own tests allow an absolute 1e-2 on outputs of about 0.02·√L)."""
GPU_SPEEDUP = {1024: 8.0, 4096: 5.0, 8192: 5.0, 16384: 5.0, 2**20: 2.0}
"""Forward, gated: the least speedup over the PyTorch baseline the issue asks for, by L."""
GPU_BACKWARD_SPEEDUP, GPU_PEAK_FRACTION = 4.0, 1 / 6
"""Forward+backward at 1K–16K; peak memory at most this fraction of the baseline's."""


def shape_for(L: int, device: torch.device, batch: int | None, channels: int | None) -> tuple[int, int, int]:
    """(B, H, L): the headline B and H, scaled down on the GPU to B·H·L ≤ 2^28."""
    if device.type != "cuda":
        return batch or CPU_BATCH, channels or CPU_CHANNELS, L
    H = channels or min(GPU_CHANNELS, max(1, GPU_MAX_ELEMENTS // L))
    return batch or max(1, min(GPU_BATCH, GPU_MAX_ELEMENTS // (H * L))), H, L


def scale_note(shape: tuple[int, int, int], device: torch.device) -> str | None:
    """Why a GPU shape is smaller than the headline 64 x 768, or None."""
    B, H, L = shape
    if device.type != "cuda" or (B, H) == (GPU_BATCH, GPU_CHANNELS):
        return None
    return (f"B x H scaled down from {GPU_BATCH} x {GPU_CHANNELS} to {B} x {H} so that B·H·L <= 2^28 "
            f"(memory of the PyTorch baseline's forward+backward)")


@functools.cache
def flashfftconv():
    """flashfftconv.FlashFFTConv if the package imports, else None."""
    try:
        from flashfftconv import FlashFFTConv
    except ImportError:
        return None
    return FlashFFTConv


def make_inputs(shape, dtype, device, gated: bool, backward: bool) -> tuple[torch.Tensor, ...]:
    """(u, k[, pregate, postgate][, grad_y]); u, k and the gates require grad for ``backward``."""
    B, H, L = shape
    u = torch.randn(shape, dtype=dtype, device=device)
    k = torch.randn(H, L, dtype=torch.float32, device=device) / L**0.5
    tensors = [u, k] + ([torch.randn(shape, dtype=dtype, device=device) for _ in range(2)] if gated else [])
    if not backward:
        return tuple(tensors)
    return (*(t.requires_grad_() for t in tensors), torch.randn(shape, dtype=dtype, device=device))


def with_backward(forward):
    """fn(*inputs) running ``forward`` and the gradients of every input that requires grad."""

    def run(*inputs):
        *tensors, grad_y = inputs
        y = forward(*tensors)
        torch.autograd.grad(y, tensors, grad_y)
        return y.detach()

    return run


def check(inputs: tuple, out: torch.Tensor) -> float:
    """Relative error of ``out`` on the first rows against the float64 FFT convolution."""
    u, k, *rest = (t.detach() for t in inputs)
    gates = rest[:2] if len(rest) >= 2 else [None, None]
    rows = (slice(0, 1), slice(0, CHECK_ROWS))
    pregate, postgate = (g[rows].double() if g is not None else None for g in gates)
    ref = fft_conv_pytorch(u[rows].double(), k[rows[1]].double(), pregate=pregate, postgate=postgate)
    return _timing.rel_error(out[rows], ref)


def floor_bytes(shape, dtype, gated: bool, backward: bool) -> int:
    """Bytes a fused kernel must move at least: u, the gates and y once; for the backward
    also grad_y, u and the gates again, and du and the gates' gradients (k is small)."""
    tensors = 2 + 2 * gated  # u, y, gates
    if backward:
        tensors += 2 + 2 * gated + 1 + 2 * gated  # grad_y, u, gates; du, dgates
    return tensors * torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()


def target(device, L, gated, backward):
    """Case.target: the issue's speed target for this point, met or missed."""

    def note(backend, times):
        if "pytorch" not in times:
            return None
        speedup = times["pytorch"] / times[backend]
        if device.type != "cuda":
            return f"vs pytorch >= 1: {'met' if speedup >= 1 else 'missed'}{control_note(times, 'pytorch')}"
        if backward and 1024 <= L <= 16384:
            return f"vs pytorch >= {GPU_BACKWARD_SPEEDUP:g}: {'met' if speedup >= GPU_BACKWARD_SPEEDUP else 'missed'}"
        if gated and not backward and L in GPU_SPEEDUP:
            return f"vs pytorch >= {GPU_SPEEDUP[L]:g}: {'met' if speedup >= GPU_SPEEDUP[L] else 'missed'}"
        return None

    return note


def make_case(L: int, dtype: torch.dtype, gated: bool, backward: bool, device: torch.device,
              batch: int | None = None, channels: int | None = None) -> Case:
    shape = shape_for(L, device, batch, channels)

    def ours(backend, u, k, pregate=None, postgate=None):
        return ops.fft_conv(u, k, pregate=pregate, postgate=postgate, backend=backend)

    def pytorch(u, k, pregate=None, postgate=None):
        return fft_conv_pytorch(u, k, pregate=pregate, postgate=postgate)

    baselines = with_control({"pytorch": pytorch}, "pytorch", device)
    flash = flashfftconv()
    if flash is not None and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        module = flash(2 * L, dtype=dtype).to(device)
        baselines["flashfftconv"] = lambda u, k, pregate=None, postgate=None: module(u, k, pregate, postgate)
    candidates = {b: functools.partial(ours, b) for b in _timing.usable_backends(device, timing=True)
                  if b in ops._IMPLS}
    wrap = with_backward if backward else (lambda fn: fn)
    return Case(
        op="fft_conv" + (" gated" if gated else "") + (" fwd+bwd" if backward else ""),
        shape=shape,
        dtype=dtype,
        make=lambda: make_inputs(shape, dtype, device, gated, backward),
        candidates={name: wrap(fn) for name, fn in candidates.items()},
        baselines={name: wrap(fn) for name, fn in baselines.items()},
        check=check,
        target=target(device, L, gated, backward),
        tolerances={"flashfftconv": FLASHFFTCONV_TOLERANCE},
        floor_bytes=floor_bytes(shape, dtype, gated, backward),
        note=scale_note(shape, device),
    )


def add_memory_targets(records: list[dict], device: torch.device) -> None:
    """Append the peak-memory comparison with the PyTorch baseline to each GPU record's note."""
    if device.type != "cuda":
        return
    for r in records:
        if r["baseline"] == "pytorch" and r["peak_mb"] and r["baseline_peak_mb"]:
            met = "met" if r["peak_mb"] <= GPU_PEAK_FRACTION * r["baseline_peak_mb"] else "missed"
            note = f"peak {r['peak_mb']:.0f}/{r['baseline_peak_mb']:.0f} MB <= 1/6: {met}"
            r["target"] = f"{r['target']}; {note}" if r["target"] else note


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, quick="L = 256 plain forward and gated forward+backward, short timing")
    parser.add_argument("--lengths", nargs="+", type=int, metavar="L")
    parser.add_argument("--dtypes", nargs="+", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), help="default: all, in this order")
    parser.add_argument("--batch", type=int, help="B for every length")
    parser.add_argument("--channels", type=int, help="H for every length")
    parser.add_argument("--rep-ms", type=float, help="timing per function and case, over all rounds "
                        "(default: 50 on GPU, 100 on CPU)")
    args = parser.parse_args(argv)
    run = run_settings(args, cpu_rep_ms=args.rep_ms or 100, gpu_rep_ms=args.rep_ms or 50, quick_rep_ms=args.rep_ms or 20)
    lengths, dtypes, kinds = (LENGTHS, GPU_DTYPES, list(KINDS)) if run.gpu else (CPU_LENGTHS, CPU_DTYPES, list(KINDS))
    if args.quick:
        lengths, dtypes, kinds = [256], dtypes[:1], ["plain", "gated-bwd"]
    lengths, kinds = args.lengths or lengths, args.kinds or kinds
    dtypes = [getattr(torch, d) for d in args.dtypes or dtypes]

    points = [(L, dtype, *KINDS[kind]) for kind in kinds for dtype in dtypes for L in lengths]
    print_header("fft_conv", run, [b for b in _timing.usable_backends(run.device, timing=True) if b in ops._IMPLS],
                 f"flashfftconv {'found' if flashfftconv() else 'not installed'}")
    with Harness("fftconv", run.device, args.out, rounds=run.rounds, **run.timing) as harness:
        try:
            for L, dtype, gated, backward in _timing.progress(
                    points, "fftconv", lambda p: f"L={p[0]} {p[1]} {'gated' if p[2] else 'plain'}{' fwd+bwd' * p[3]}"):
                harness.run(make_case(L, dtype, gated, backward, run.device, args.batch, args.channels))
        finally:  # also when the run is cut short: the records written say what was met
            add_memory_targets(harness.records, run.device)
    return 1 if harness.failures else 0


if __name__ == "__main__":
    sys.exit(main())
