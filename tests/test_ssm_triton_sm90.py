"""Compile the Triton SSM launches for sm_90 (H100/H200) without a GPU: every kernel of
triton_kernels/ssm.py at the benchmark shapes compiles (scans, reverse scans, float64
phases, atomics, strided state), fits the shared memory of a block and, in float32 and
half precision, keeps its tiles in registers (no stack frame: spills would make it slow,
not wrong). The interpreter tests check what the kernels compute.

Known to spill (an expected failure until tuned on a GPU): the selective-scan backward with
input-dependent B or C (at N = 16 and 64 its reverse scan, states, λ and B/C tiles over a
chunk do not fit at 4 or 8 warps) and the float32 S4D kernel forward (float64 phases)."""
import os
import subprocess
import sys

import pytest
import torch
import triton
from triton.backends.compiler import GPUTarget

from fastspec._backend import triton_interpreted
from fastspec.triton_kernels import ssm as kernels

from test_fwht_triton_sm90 import SM90_MAX_SHARED, _source, _stack_bytes


def _meta(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta")


def _linear_scan_launches():
    for dtype in (torch.float32, torch.bfloat16, torch.complex64, torch.float64):
        for T in (1000, 65536):
            for reverse in (False, True):
                x = _meta(8, 1536, T, dtype=dtype)
                yield f"linear_scan {dtype} T={T} reverse={reverse}", dtype, kernels.linear_scan_call(
                    x, x, _meta(8, 1536, dtype=dtype), torch.empty_like(x), reverse)


def _selective_launches():
    for dtype in (torch.bfloat16, torch.float32):
        for N in (16, 64, 256):
            for forms in (("var", "var"), ("fixed", "fixed"), ("group", "var")):
                batch, D, L = 8, 2048, 2048
                u = _meta(batch, D, L, dtype=dtype)
                bc = {"var": _meta(batch, N, L, dtype=dtype), "fixed": _meta(D, N), "group": _meta(batch, 4, N, L,
                                                                                                   dtype=dtype)}
                B, C = bc[forms[0]], bc[forms[1]]
                A, vec, state = _meta(D, N), _meta(D), _meta(batch, D, N)
                chunks = triton.cdiv(L, kernels.selective_chunk(N, L))
                starts = _meta(batch, D, N, chunks)
                name = f"selective {dtype} N={N} {forms}"
                yield name + " fwd", dtype, kernels.selective_forward_call(u, u, A, B, C, vec, u, vec, state, True, u,
                                                                          state, starts)
                for deterministic in (False, True):
                    kernel, grid, args, meta, _ = kernels.selective_backward_call(
                        u, state, u, u, A, B, C, vec, u, vec, starts, True, deterministic)
                    yield f"{name} bwd deterministic={deterministic}", dtype, (kernel, grid, args, meta)


def _kernel_launches():
    for N in (64, 1024):
        v = _meta(1024, N, dtype=torch.complex128)
        for dtype in (torch.float32, torch.float64):
            yield f"vandermonde N={N} {dtype}", dtype, kernels.vandermonde_call(v, v, _meta(1024, 16384, dtype=dtype))
        G = _meta(1024, N, 2, dtype=torch.float64)
        yield f"vandermonde bwd N={N}", torch.float64, kernels.vandermonde_backward_call(_meta(1024, 16384), v, G, G)


def _state_update_launches():
    for N in (16, 128):
        for heads in (None, (24, 1)):
            if heads is None:
                state, x, A, B = _meta(8, 2048, N), _meta(8, 2048), _meta(2048, N), _meta(8, N)
                vec = _meta(2048)
            else:
                state, x, A, B = _meta(8, 24, 64, N), _meta(8, 24, 64), _meta(24, 64, N), _meta(8, 1, N)
                vec = _meta(24, 64)
            yield f"state update N={N} heads={heads}", torch.float32, kernels.state_update_call(
                state, x, x, A, B, B, vec, x, vec, True, torch.empty_like(x))


def _launches():
    for group in (_linear_scan_launches, _selective_launches, _kernel_launches, _state_update_launches):
        yield from group()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernels compile and run for real")
@pytest.mark.skipif(triton_interpreted(), reason="interpreted kernels cannot be compiled: see the subprocess test")
@pytest.mark.parametrize("name,dtype,launch", [pytest.param(*case, id=case[0]) for case in _launches()])
def test_compiles_for_sm90(name, dtype, launch):
    kernel, _, args, meta = launch
    meta = dict(meta)
    num_warps = meta.pop("num_warps")
    compiled = triton.compile(_source(kernel, args, meta), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps})
    assert compiled.metadata.shared <= SM90_MAX_SHARED, f"{name}: {compiled.metadata.shared} bytes of shared memory"
    if dtype not in (torch.float64, torch.complex128):
        spilled = _stack_bytes(compiled.asm["cubin"])
        if spilled and _known_to_spill(name):
            pytest.xfail(f"{name}: {spilled} bytes of stack (known: to tune on a GPU)")
        assert spilled == 0, f"{name}: registers spill"


def _known_to_spill(name: str) -> bool:
    return (" bwd " in name and "'var'" in name) or (name.startswith("vandermonde N=") and "float32" in name)


@pytest.mark.skipif(torch.cuda.is_available() or not triton_interpreted(), reason="the compile checks run directly")
def test_compile_checks_in_a_process_without_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
