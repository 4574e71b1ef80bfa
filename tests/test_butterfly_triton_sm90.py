"""Compile the Triton butterfly and Monarch launches for sm_90 (H100/H200) without a GPU:
every launch of triton_kernels/butterfly.py at the benchmark sizes (forward and backward,
one-launch rows, the two-launch path above TILE_MAX, the Monarch kernels at √n blocks)
compiles, fits the shared memory of a block, and keeps its tiles in registers (no stack
frame: spills would make it slow, not wrong). The interpreter tests check what the
kernels compute. Slow (ptxas takes 30 s to minutes a launch): ``pytest -m slow`` runs it.
Its first run found the Monarch kernels (then the whole batched product in registers) and the
backward on 4096-entry rows spilling; both were redesigned (triton_kernels/butterfly.py)."""
import os
import subprocess
import sys

import pytest
import torch
import triton
from triton.backends.compiler import GPUTarget

from fastspec._backend import triton_interpreted
from fastspec.triton_kernels import butterfly as kernels

from test_fwht_triton_sm90 import SM90_MAX_SHARED, _source, _stack_bytes


def _meta(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta")


def _butterfly_launches():
    batch = 16384
    for dtype in (torch.float32, torch.bfloat16):
        for n in (1024, 4096, 16384, 2**16):
            x, tw, f32 = _meta(batch, 1, n, dtype=dtype), _meta(1, 1, n.bit_length() - 1, n // 2, 2, 2,
                                                                dtype=dtype), _meta(batch, 1, n)
            for i, (grid, meta) in enumerate(kernels.butterfly_plan(batch, 1, n, 1, True)):
                yield f"butterfly {dtype} n={n} fwd launch {i}", (kernels.butterfly_kernel, grid,
                                                                  (x, tw, x, batch, 1, n, n // 2), meta)
            for i, (grid, meta) in enumerate(kernels.butterfly_plan(batch, 1, n, 1, True, backward=True)):
                yield f"butterfly {dtype} n={n} bwd launch {i}", (kernels.butterfly_backward_kernel, grid,
                                                                  (x, x, tw, f32, x, batch, 1, n, n // 2), meta)


def _monarch_launches():
    rows = 16384
    for dtype in (torch.float32, torch.bfloat16):
        for b in (32, 64, 128):
            x, w = _meta(rows, b * b, dtype=dtype), _meta(b, b, b, dtype=dtype)
            grid, meta = kernels.monarch_plan(rows, w.shape, w.shape)
            scratch = _meta(grid[0] * meta["BM"] * b * b)
            yield f"monarch {dtype} n={b * b} fwd", (kernels.monarch_kernel, grid, (x, w, w, x, scratch, rows), meta)
            yield f"monarch {dtype} n={b * b} bwd", (kernels.monarch_backward_kernel, grid,
                                                    (x, w, w, x, x, _meta(b, b, b), _meta(b, b, b), scratch, rows),
                                                    meta)


def _launches():
    yield from _butterfly_launches()
    yield from _monarch_launches()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernels compile and run for real")
@pytest.mark.skipif(triton_interpreted(), reason="interpreted kernels cannot be compiled: see the subprocess test")
@pytest.mark.parametrize("name,launch", [pytest.param(*case, id=case[0]) for case in _launches()])
def test_compiles_for_sm90(name, launch):
    kernel, _, args, meta = launch
    meta = dict(meta)
    num_warps = meta.pop("num_warps")
    compiled = triton.compile(_source(kernel, args, meta), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps})
    assert compiled.metadata.shared <= SM90_MAX_SHARED, f"{name}: {compiled.metadata.shared} bytes of shared memory"
    spilled = _stack_bytes(compiled.asm["cubin"])
    assert spilled == 0, f"{name}: {spilled} bytes of stack (registers spill)"


@pytest.mark.slow  # about 30 s of ptxas a launch: beyond the family's CI share
@pytest.mark.skipif(torch.cuda.is_available() or not triton_interpreted(), reason="the compile checks run directly")
def test_compile_checks_in_a_process_without_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
