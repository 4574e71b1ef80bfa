"""Compile the CUDA fft_conv kernel (csrc/fftconv/fftconv.cu) for sm_90a without a GPU and
check what only the machine code shows, for every instance (N = 2^7..2^15 x float16/bfloat16):
no registers spilled (no stack, no local memory), static
plus dynamic shared memory (8·M bytes, M = N/2) within the 227 KiB of a block, the DFT
stages on tensor cores (HMMA.16816.F32.BF16, three per 16 x 16 tile: hi·hi, hi·lo, lo·hi),
and 16-byte global loads and stores (the path for aligned rows with L % 8 == 0).
What the kernel computes is checked by tests/test_fftconv_cuda_on_cpu.py.
"""
import re

import pytest
import torch

from conftest import cuobjdump
from sass import BLOCK_SHARED_LIMIT, compile_cubin, per_instance, resources

_INSTANCE = re.compile(r"fftconv_forward_kernelI(\w+?)Li(\d+)EE")
_DTYPE = {"6__half": "float16", "13__nv_bfloat16": "bfloat16"}

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the extension is built and run")


@pytest.fixture(scope="module")
def cubin(tmp_path_factory):
    return compile_cubin(tmp_path_factory, "fftconv/fftconv.cu")


def _per_instance(text: str) -> dict:
    """{(dtype, log2n): section}"""
    return per_instance(text, _INSTANCE, lambda m: (_DTYPE[m.group(1)], int(m.group(2))))


def test_every_instance_is_compiled(cubin):
    instances = _per_instance(cuobjdump("-res-usage", cubin))
    assert set(instances) == {(d, n) for d in _DTYPE.values() for n in range(7, 16)}


def test_no_spills_and_shared_memory_fits(cubin):
    for (dtype, log2n), usage in _per_instance(cuobjdump("-res-usage", cubin)).items():
        fields = resources(usage)
        assert fields["STACK"] == 0 and fields["LOCAL"] == 0, f"{dtype} N=2^{log2n}: registers spill ({fields})"
        dynamic = 8 << (log2n - 1)  # M complex float32 values
        assert fields["SHARED"] + dynamic <= BLOCK_SHARED_LIMIT, f"{dtype} N=2^{log2n}: {fields['SHARED']} + {dynamic} B"


def test_dft_stages_run_on_tensor_cores(cubin):
    """Every instance multiplies with bfloat16 tensor-core mma into float32 (HMMA.16816.F32.BF16)."""
    for (dtype, log2n), sass in _per_instance(cuobjdump("-sass", cubin)).items():
        assert "HMMA.16816.F32.BF16" in sass, f"{dtype} N=2^{log2n}: no bfloat16 tensor-core mma"


def test_aligned_rows_move_16_bytes_per_access(cubin):
    for (dtype, log2n), sass in _per_instance(cuobjdump("-sass", cubin)).items():
        assert "LDG.E.128" in sass and "STG.E.128" in sass, f"{dtype} N=2^{log2n}: no 16-byte LDG/STG"
