"""Compile the CUDA FWHT kernel (csrc/fwht/fwht.cu) for sm_90a without a GPU and check what
only the machine code shows, for every instance (n = 2^0..2^15 x three dtypes x 16-byte
or element-wise access): no registers spilled (no stack, no local memory), static shared
memory within the 48 KiB a block gets without opt-in (the prefetch stage of long rows is
dynamic shared memory, sized by a static_assert in the source), and 16-byte global loads
and stores in the instances that take the vectorized path.
What the kernel computes is checked by tests/test_fwht_cuda_on_cpu.py.
"""
import re

import pytest
import torch

from conftest import cuobjdump
from sass import STATIC_SHARED_LIMIT, compile_cubin, per_instance, resources

_INSTANCE = re.compile(r"fwht_kernelI(\w+?)Li(\d+)ELb([01])E")
_DTYPE = {"f": "float32", "6__half": "float16", "13__nv_bfloat16": "bfloat16"}


pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the extension is built and run")


@pytest.fixture(scope="module")
def cubin(tmp_path_factory):
    return compile_cubin(tmp_path_factory, "fwht/fwht.cu")


def _per_instance(text: str) -> dict:
    """{(dtype, log2n, vectorized): section}"""
    return per_instance(text, _INSTANCE, lambda m: (_DTYPE[m.group(1)], int(m.group(2)), m.group(3) == "1"))


def test_every_instance_is_compiled(cubin):
    instances = _per_instance(cuobjdump("-res-usage", cubin))
    expected = {(d, n, v) for d in _DTYPE.values() for n in range(16) for v in (True, False)}
    assert set(instances) == expected


def test_no_spills_and_static_shared_memory_fits(cubin):
    for instance, usage in _per_instance(cuobjdump("-res-usage", cubin)).items():
        fields = resources(usage)
        assert fields["STACK"] == 0 and fields["LOCAL"] == 0, f"{instance}: registers spill ({fields})"
        assert fields["SHARED"] <= STATIC_SHARED_LIMIT, f"{instance}: {fields['SHARED']} bytes of shared memory"


def test_vectorized_instances_move_16_bytes_per_access(cubin):
    """Rows of 2^11 and more load with 16-byte asynchronous copies into shared memory
    (LDGSTS, cp.async bypassing L1), shorter rows with 16-byte loads into registers."""
    for (dtype, log2n, vectorized), sass in _per_instance(cuobjdump("-sass", cubin)).items():
        if vectorized:
            load = "LDGSTS.E.BYPASS.128" if log2n >= 11 else "LDG.E.128"
            assert load in sass and "STG.E.128" in sass, f"{dtype} n=2^{log2n}: no 16-byte {load} and STG.E.128"
