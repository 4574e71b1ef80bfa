"""Compile the CUDA butterfly kernel (csrc/butterfly/butterfly.cu) for sm_90a without a GPU and
check what only the machine code shows, for every instance (n = 2^1..2^14 × float32, float16,
bfloat16): no registers spilled (no stack, no local memory), registers within what the block
size allows (64K a block), the tile's dynamic shared memory (butterfly.cu: Plan) plus the
static within the 227 KiB of a block, and each 2×2 twiddle matrix read as one vector
(16 bytes for float32, 8 for half precision).
What the kernel computes is checked by tests/test_butterfly_cuda_on_cpu.py.
"""
import re

import pytest
import torch

from conftest import cuobjdump
from sass import BLOCK_SHARED_LIMIT, compile_cubin, per_instance, resources

REGISTERS_PER_BLOCK = 64 * 1024
_INSTANCE = re.compile(r"butterfly_forward_kernelI(\w+?)Li(\d+)EE")
_DTYPE = {"f": "float32", "6__half": "float16", "13__nv_bfloat16": "bfloat16"}

pytestmark = [pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the extension is built and run"),
              pytest.mark.slow]  # nvcc takes about 2 minutes for the 42 instances: beyond the family's CI share


def plan(log2n: int) -> tuple[int, int]:
    """(threads, tile floats) of an instance, as butterfly.cu's Plan: 5 register bits (all of a
    shorter row), at least 256 threads, 2 rows a thread below n = 2^14."""
    lc = min(5, log2n)
    log_threads = max(8, log2n - lc)
    return 1 << log_threads, 1 << (log_threads + lc + (0 if log2n >= 14 else 1))


@pytest.fixture(scope="module")
def cubin(tmp_path_factory):
    return compile_cubin(tmp_path_factory, "butterfly/butterfly.cu")


def _per_instance(text: str) -> dict:
    """{(dtype, log2n): section}"""
    return per_instance(text, _INSTANCE, lambda m: (_DTYPE[m.group(1)], int(m.group(2))))


def test_every_instance_is_compiled(cubin):
    instances = _per_instance(cuobjdump("-res-usage", cubin))
    assert set(instances) == {(d, n) for d in _DTYPE.values() for n in range(1, 15)}


def test_no_spills_and_resources_fit(cubin):
    for (dtype, log2n), usage in _per_instance(cuobjdump("-res-usage", cubin)).items():
        fields = resources(usage)
        assert fields["STACK"] == 0 and fields["LOCAL"] == 0, f"{dtype} n=2^{log2n}: registers spill ({fields})"
        threads, tile_floats = plan(log2n)
        assert fields["REG"] * threads <= REGISTERS_PER_BLOCK, f"{dtype} n=2^{log2n}: {fields['REG']} x {threads}"
        dynamic = 4 * tile_floats
        assert fields["SHARED"] + dynamic <= BLOCK_SHARED_LIMIT, f"{dtype} n=2^{log2n}: {fields['SHARED']} + {dynamic} B"


def test_twiddle_matrices_load_as_one_vector(cubin):
    """Each 2×2 matrix is one 16-byte (float32) or 8-byte (half) load: LDG.E.128 / LDG.E.64."""
    for (dtype, log2n), sass in _per_instance(cuobjdump("-sass", cubin)).items():
        load = "LDG.E.128" if dtype == "float32" else "LDG.E.64"
        assert load in sass, f"{dtype} n=2^{log2n}: no {load} for the twiddles"
