"""Compile the Triton fft_conv launches for sm_90 (H100/H200) without a GPU.

The interpreter checks what the kernels compute; this checks what only the GPU compiler
sees: that every launch of the forward, the backward and the spectrum compiles for sm_90
(dot shapes and dtypes, the 5-D tile permutations, static branches), that its shared
memory fits a block on that chip (227 KiB) and that ptxas keeps the tiles in registers
(no stack frame: spills would make the kernel slow, not wrong) for half and float32 input.
"""
import os
import subprocess
import sys

import pytest
import torch
import triton
from triton.backends.compiler import GPUTarget

from fastspec._backend import triton_interpreted
from fastspec.triton_kernels import fftconv as kernels

from test_fwht_triton_sm90 import SM90_MAX_SHARED, _source, _stack_bytes

B, H = 16, 8
"""The compiled code depends on the plan, the dtypes and the signals a tile holds (up to 8
at the smallest FFT: B = 16 makes 8 signals of two rows), not on B and H otherwise."""
CASES = [("causal", 1), ("causal", 1000), ("circular", 1000), ("causal", 2048), ("causal", 4096),
         ("bidirectional", 2**20)]
"""FFT sizes 512 (8 signals a tile), 2048 (2 signals; plain and wrapped: circular of odd L),
4096 (one signal, the largest tile), 8192 (two levels in one launch: 64·128) and 2^21 (two
levels in three launches: 512·4096)."""
ONE_LAUNCH_CASES = [("circular", 5000), ("circular", 32768)]
"""16384 (wrapped) and 32768: two levels, forward and backward in one launch (64·256, 64·512);
slow (about 5 minutes of ptxas), so `pytest -m slow` runs them."""


def _calls(mode: str, L: int, dtype: torch.dtype, seen: set):
    """Every launch of spectrum, forward and backward (all gradients) for u (B, H, L) of
    ``dtype`` with gates and D and a filter as long as the mode takes, less those already in
    ``seen`` (the same kernel, meta and argument types)."""
    taps = 2 * L - 1 if mode == "bidirectional" else L
    p = kernels.plan(mode, L, taps)
    meta = torch.device("meta")
    u = torch.empty(B, H, L, dtype=dtype, device=meta)
    k = torch.empty(H, taps, dtype=dtype, device=meta)
    D = torch.empty(H, dtype=dtype, device=meta)
    prec = kernels._PREC[dtype]
    spec = torch.empty(H, p.n, 2, dtype=kernels._acc(prec), device=meta)
    calls = kernels.spectrum_calls(k, p, dtype, spec)
    calls += kernels.forward_calls(u, spec, u, u, D, p, u)
    for needs in ([True] * 5,):  # every gradient: the launches of any subset are the same or lighter
        acc = kernels._acc(prec)
        if p.outer is None:
            groups = kernels._groups(B, H, p)
            outs = (u, u, torch.empty(groups, H, taps, dtype=acc, device=meta),
                    torch.empty(groups, H, dtype=acc, device=meta))
        elif p.n <= kernels.MAX_ONE_LAUNCH:
            outs = (u, u, torch.empty(kernels._groups(B, H, p), H, taps, dtype=acc, device=meta))
        else:
            outs = (u, u, torch.empty(H, taps, dtype=acc, device=meta))
        calls += kernels.backward_calls(u, u, spec, u, u, D, p, taps, needs, outs, prec)
    unique = []
    for kernel, grid, args, meta_ in calls:
        if grid is None:  # a host step (the two-level dk sum)
            continue
        key = (kernel.__name__, tuple(sorted(meta_.items())),
               tuple(str(a.dtype) if isinstance(a, torch.Tensor) else type(a).__name__ for a in args))
        if key not in seen:
            seen.add(key)
            unique.append((kernel, args, meta_))
    return unique


def _compile(kernel, args, meta):
    meta = dict(meta)
    options = {name: meta.pop(name) for name in ("num_warps", "num_stages") if name in meta}
    compiled = triton.compile(_source(kernel, args, meta), target=GPUTarget("cuda", 90, 32), options=options)
    return compiled, f"{kernel.__name__} {meta}, {options}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernels compile and run for real")
@pytest.mark.skipif(triton_interpreted(), reason="interpreted kernels cannot be compiled: see the subprocess test")
@pytest.mark.parametrize("dtype,cases", [
    pytest.param(torch.float32, CASES, id="float32-every-case"),
    pytest.param(torch.float16, CASES[2:4] + CASES[5:], id="float16-largest-tiles"),
    pytest.param(torch.float32, ONE_LAUNCH_CASES, id="float32-one-launch", marks=pytest.mark.slow),
    pytest.param(torch.float16, ONE_LAUNCH_CASES, id="float16-one-launch", marks=pytest.mark.slow)])
def test_compiles_for_sm90_without_spills(dtype, cases):
    """float32 (TF32 parts: the most registers) at every case; float16 (bfloat16 parts, 30–80
    fewer registers a thread wherever both were compiled) at the largest tiles."""
    seen = set()
    for mode, L in cases:
        for kernel, args, meta in _calls(mode, L, dtype, seen):
            compiled, where = _compile(kernel, args, meta)
            assert compiled.metadata.shared <= SM90_MAX_SHARED, f"{where}: {compiled.metadata.shared} bytes of shared memory"
            assert _stack_bytes(compiled.asm["cubin"]) == 0, f"{where}: registers spill"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernels compile and run for real")
@pytest.mark.skipif(triton_interpreted(), reason="interpreted kernels cannot be compiled: see the subprocess test")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=str)
def test_other_dtypes_compile(dtype):
    """bfloat16 takes the float16 code with other loads; float64 (float64 dots) only has to
    compile and fit (it is correct, not a speed target)."""
    for kernel, args, meta in _calls("circular", 1000, dtype, set()):
        compiled, where = _compile(kernel, args, meta)
        assert compiled.metadata.shared <= SM90_MAX_SHARED, where
        if dtype != torch.float64:
            assert _stack_bytes(compiled.asm["cubin"]) == 0, f"{where}: registers spill"


@pytest.mark.skipif(torch.cuda.is_available() or not triton_interpreted(), reason="the compile checks run directly")
def test_compile_checks_in_a_process_without_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
