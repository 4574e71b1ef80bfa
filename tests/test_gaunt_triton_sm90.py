"""Compile the Triton Gaunt launches for sm_90 (H100/H200) without a GPU: the grid kernel of
triton_kernels/gaunt.py at the benchmark's degrees compiles, fits the shared memory of a
block and keeps its tiles in registers (no stack frame: spills would make it slow, not
wrong). The interpreter tests (tests/test_gaunt.py) check what it computes. The default
run compiles the smallest and the largest benchmark degree (each compile takes ~5-10 s of
CPU); the others are marked slow."""
import os
import subprocess
import sys

import pytest
import torch
import triton
from triton.backends.compiler import GPUTarget

from fastspec._backend import triton_interpreted
from fastspec.spherical import num_coefficients
from fastspec.triton_kernels import gaunt as kernels

from test_fwht_triton_sm90 import SM90_MAX_SHARED, _source, _stack_bytes

CASES = [(1, torch.float32), (12, torch.bfloat16)]
SLOW_CASES = [(lmax, dtype) for lmax in (2, 4, 6, 8, 10, 12) for dtype in (torch.float32, torch.bfloat16)
              if (lmax, dtype) not in CASES]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernels compile and run for real")
@pytest.mark.skipif(triton_interpreted(), reason="interpreted kernels cannot be compiled: see the subprocess test")
@pytest.mark.parametrize("lmax,dtype", [pytest.param(*c, id=f"L{c[0]}-{c[1]}") for c in CASES]
                         + [pytest.param(*c, id=f"L{c[0]}-{c[1]}", marks=pytest.mark.slow) for c in SLOW_CASES])
def test_compiles_for_sm90(lmax, dtype):
    d = num_coefficients(lmax)
    x = torch.empty(4096 * 128, d, dtype=dtype, device="meta")
    tables = [t.to("meta") for t in kernels.padded_tables(lmax, lmax, lmax, torch.device("cpu"))]
    kernel, _, args, meta = kernels.gaunt_grid_call(x, x, *tables, torch.empty_like(x))
    meta = dict(meta)
    num_warps = meta.pop("num_warps")
    compiled = triton.compile(_source(kernel, args, meta), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps})
    assert compiled.metadata.shared <= SM90_MAX_SHARED, f"L={lmax}: {compiled.metadata.shared} bytes of shared memory"
    spilled = _stack_bytes(compiled.asm["cubin"])
    assert spilled == 0, f"L={lmax}: registers spill ({spilled} bytes of stack)"


@pytest.mark.skipif(torch.cuda.is_available() or not triton_interpreted(), reason="the compile checks run directly")
def test_compile_checks_in_a_process_without_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
