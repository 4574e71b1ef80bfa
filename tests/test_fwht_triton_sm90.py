"""Compile the Triton FWHT launches for sm_90 (H100/H200) without a GPU.

The interpreter checks what the kernels compute; this checks what only the GPU compiler
sees: that every plan compiles for sm_90 (dot shapes and dtypes, static branches), that
its shared memory fits a block on that chip (227 KiB), that ptxas keeps the tile in
registers (no stack frame: spills would make the kernel slow, not wrong), and that the
data goes out in 16-byte stores.
"""
import os
import re
import subprocess
import sys
import tempfile

import pytest
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from conftest import cuobjdump
from fastspec._backend import triton_interpreted
from fastspec.hadamard import check_size
from fastspec.ops.fwht import Base
from fastspec.triton_kernels.fwht import kernel_calls

SM90_MAX_SHARED = 227 * 1024
_POINTER = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float64: "*fp64"}


def _source(kernel, args, meta) -> ASTSource:
    """The kernel as a launch with these arguments would compile it: like Triton's JIT,
    integers equal to 1 become constants and pointers and multiples of 16 are marked
    divisible by 16 (which lets the compiler vectorize loads and stores)."""
    sig, constants, attrs = {}, dict(meta), {}
    for i, (name, value) in enumerate(zip(kernel.arg_names, args)):
        if isinstance(value, torch.Tensor):
            sig[name] = _POINTER[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            sig[name] = "fp32"
        elif value == 1:
            sig[name], constants[name] = "constexpr", 1
        else:
            sig[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    sig.update({k: "constexpr" for k in meta})
    return ASTSource(fn=kernel, signature=sig, constexprs=constants, attrs=attrs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernels compile and run for real")
@pytest.mark.skipif(triton_interpreted(), reason="interpreted kernels cannot be compiled: see the subprocess test")
@pytest.mark.parametrize("dtype", list(_POINTER), ids=str)
@pytest.mark.parametrize("n", [1, 2, 12, 256, 1024, 40 * 64, 4096, 2**13, 20 * 2**9, 12 * 2**11, 2**14, 28 * 2**10, 2**15, 2**16, 40 * 2**14, 2**20])
def test_compiles_for_sm90_and_fits_shared_memory(dtype, n):
    x = torch.empty(64, n, dtype=dtype, device="meta")
    m, p = check_size(n)
    for kernel, _, args, meta in kernel_calls(x, x, 0.5, p, Base(m)):
        meta = dict(meta)
        num_warps = meta.pop("num_warps")
        kernel = triton.compile(_source(kernel, args, meta), target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
        assert kernel.metadata.shared <= SM90_MAX_SHARED, f"{meta}: {kernel.metadata.shared} bytes of shared memory"
        if dtype != torch.float64:  # float64 is correct but not a speed target
            assert _stack_bytes(kernel.asm["cubin"]) == 0, f"{meta}, num_warps={num_warps}: registers spill"
            if n % 16 == 0:  # rows of 2 or 12 elements are padded tiles: element-wise access
                stores = set(re.findall(r"st\.global[.\w]*", kernel.asm["ptx"]))
                assert stores == {"st.global.v4.b32"}, f"{meta}: stores {stores} are not 16 bytes wide"


def _stack_bytes(cubin: bytes) -> int:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = cuobjdump("-res-usage", f.name)
    return int(re.search(r"STACK:(\d+)", usage).group(1))


@pytest.mark.skipif(torch.cuda.is_available() or not triton_interpreted(), reason="the compile checks run directly")
def test_compile_checks_in_a_process_without_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
