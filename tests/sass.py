"""sm_90a machine code of a csrc/ source without a GPU, for the tests/test_*_cuda_sm90.py checks:
compile it to a cubin with nvcc, read it with cuobjdump (``conftest.cuobjdump``), and split the
listing per kernel instance."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK_SHARED_LIMIT = 227 * 1024
"""Shared memory one block may have on sm_90 (static plus dynamic), bytes."""
STATIC_SHARED_LIMIT = 48 * 1024
"""Static shared memory without an opt-in, bytes."""
TORCH_NVCC_FLAGS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr"]
"""The defines torch.utils.cpp_extension adds to every nvcc call of the real build."""


def compile_cubin(tmp_path_factory, source: str) -> str:
    """csrc/``source`` compiled for sm_90a as the extension builds it; the cubin's path (the
    test is skipped where nvcc is missing)."""
    if shutil.which("nvcc") is None:
        pytest.skip("needs nvcc")
    path = str(tmp_path_factory.mktemp("sm90") / (os.path.splitext(os.path.basename(source))[0] + ".cubin"))
    cmd = ["nvcc", "-std=c++17", "-O3", f"-I{ROOT}/csrc", *TORCH_NVCC_FLAGS, "-gencode=arch=compute_90a,code=sm_90a",
           "-cubin", os.path.join(ROOT, "csrc", source), "-o", path]
    subprocess.run(cmd, check=True, capture_output=True)
    return path


def per_instance(text: str, instance: re.Pattern, key: Callable[[re.Match], tuple]) -> dict:
    """cuobjdump's -res-usage or -sass listing split per kernel: {key(match of ``instance`` on
    the mangled name): that kernel's section}."""
    out = {}
    for section in re.split(r"^\s*Function\s*:?\s*", text, flags=re.MULTILINE)[1:]:
        out[key(instance.search(section.split("\n", 1)[0]))] = section
    return out


def resources(usage: str) -> dict[str, int]:
    """A -res-usage section's numbers: REG, STACK, SHARED, LOCAL, ..."""
    return {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", usage.split("\n", 1)[1])}
