"""The CUDA FWHT kernel (csrc/fwht/fwht.cu, unchanged) run on the CPU.

tests/cuda_emu.py builds the source with the host compiler against a small CUDA runtime
that runs every CUDA thread as an OS thread, so the launcher and every kernel instance
(each n = 2^0..2^15, float32/float16/bfloat16, 16-byte and element-wise access) are
checked without a GPU: results against the float64 reference, no writes outside the
output, no misaligned vector access (UBSan), and the argument checks of fwht_launch.
On a GPU, tests/test_fwht.py runs the same kernel for real through fastspec._C.
"""
import ctypes
import os

import pytest
import torch

import cuda_emu
from conftest import assert_close_to_reference, random_input
from fastspec.reference.fwht import fwht_reference

CU = os.path.join(cuda_emu.ROOT, "csrc", "fwht", "fwht.cu")
ENTRY = """
#include "fwht/fwht.h"
extern "C" int fwht_emulated(const void* x, void* out, int64_t rows, int log2n, float scale, int dtype) {
  return static_cast<int>(fastspec::fwht_launch(x, out, rows, log2n, scale, static_cast<fastspec::DType>(dtype), nullptr));
}
"""
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # fastspec::DType
SUCCESS, INVALID_VALUE = 0, 1  # cudaError_t
_UNAVAILABLE = cuda_emu.unavailable_reason()
pytestmark = [
    pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernel runs for real (tests/test_fwht.py)"),
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=str(_UNAVAILABLE)),
]


@pytest.fixture(scope="module")
def emulated(request, tmp_path_factory):
    """The built library (threads of a block in parallel unless a test says otherwise)."""
    lib = cuda_emu.build_cached(request, tmp_path_factory, [CU], ENTRY)
    lib.fwht_emulated.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_int]
    return lib


@pytest.fixture
def fwht_launch(emulated):
    """fwht_launch(x, out, rows, log2n, scale, dtype_code) -> cudaError_t, on tensor pointers."""
    cuda_emu.set_schedule(emulated, "parallel")
    return emulated.fwht_emulated


def _run(fwht_launch, x, out, scale, capfd, log2n=None):
    rows, n = x.shape
    rc = fwht_launch(x.data_ptr(), out.data_ptr(), rows, n.bit_length() - 1 if log2n is None else log2n, scale, DTYPE_CODE[x.dtype])
    assert "runtime error" not in capfd.readouterr().err, "UBSan: misaligned access"
    return rc


def _rows(log2n, dtype):
    """Rows for several blocks plus a partial tile (and, for n below a 16-byte vector, a
    partial vector): a tile holds 2^11 float32 or 2^12 half elements when rows are packed.
    Rows of 2^11 and more are a tile each, and the emulated device runs two persistent
    blocks: five rows make each block prefetch and transform more than one."""
    tile = 2**11 if dtype == torch.float32 else 2**12
    return 5 if 2**log2n >= 2**11 else 2 * tile // 2**log2n + 3


@pytest.mark.parametrize("dtype", list(DTYPE_CODE), ids=str)
@pytest.mark.parametrize(
    "log2n, aligned",
    [(k, True) for k in range(16)] + [(k, False) for k in (0, 2, 5, 9, 12, 15)],  # element-wise path: a sample
    ids=lambda v: ("vec16" if v else "unaligned") if isinstance(v, bool) else f"n{2**v}",
)
def test_kernel_matches_reference(fwht_launch, capfd, dtype, log2n, aligned):
    rows, scale = _rows(log2n, dtype), 0.5
    x = random_input((rows, 2**log2n), dtype, device="cpu")
    out, guards = cuda_emu.guarded(x.shape, dtype, offset=0 if aligned else 1)
    assert _run(fwht_launch, x, out, scale, capfd) == SUCCESS
    assert_close_to_reference(out, fwht_reference(x.double(), scale))
    assert all((g == 7.0).all() for g in guards), "wrote outside the output"


@pytest.mark.parametrize(
    "log2n, dtype, rows",
    [(11, torch.float32, 3), (12, torch.float16, 3), (14, torch.float32, 1)],
    ids=["n2048-float32-2blocks", "n4096-float16-2blocks", "n16384-float32-2pieces"],
)
def test_same_bits_in_any_thread_order(emulated, capfd, log2n, dtype, rows):
    """The threads of each block one at a time, each until its next barrier, in ascending
    and then in descending order: a shared-memory race (a slot written and touched by
    another thread between two barriers) gives different bits. Covered: the exchange with
    one piece, with two pieces, and across the tiles of one block (three rows on the two
    emulated blocks), and the prefetch stage. Sizes are small: each turn is a context
    switch."""
    x = random_input((rows, 2**log2n), dtype, device="cpu")
    outs = []
    for order in ("ascending", "descending"):
        cuda_emu.set_schedule(emulated, order)
        outs.append(torch.full_like(x, 7.0))
        assert _run(emulated.fwht_emulated, x, outs[-1], 0.5, capfd) == SUCCESS
    assert torch.equal(outs[0], outs[1]), "the result depends on the order of the threads"
    assert_close_to_reference(outs[0], fwht_reference(x.double(), 0.5))


@pytest.mark.parametrize("dtype", list(DTYPE_CODE), ids=str)
@pytest.mark.parametrize("log2n", [3, 10, 14])
def test_in_place(fwht_launch, capfd, dtype, log2n):
    x = random_input((5, 2**log2n), dtype, device="cpu")
    ref = fwht_reference(x.double(), 1.0)
    assert _run(fwht_launch, x, x, 1.0, capfd) == SUCCESS
    assert_close_to_reference(x, ref)


@pytest.mark.parametrize("log2n", [4, 11, 15])
def test_nan_and_inf_stay_in_their_row(fwht_launch, capfd, log2n):
    x = random_input((3, 2**log2n), torch.float32, device="cpu")
    x[0, 3], x[2, -1] = float("inf"), float("nan")
    out = torch.empty_like(x)
    assert _run(fwht_launch, x, out, 1.0, capfd) == SUCCESS
    assert out[0].isinf().all() and out[1].isfinite().all() and out[2].isnan().all()


def test_launcher_rejects_what_it_cannot_handle(fwht_launch, capfd):
    x = random_input((4, 64), torch.float32, device="cpu")
    out = torch.full_like(x, 7.0)
    assert _run(fwht_launch, x, out, 1.0, capfd, log2n=16) == INVALID_VALUE
    assert fwht_launch(x.data_ptr(), out.data_ptr(), -1, 6, 1.0, 0) == INVALID_VALUE
    assert fwht_launch(x.data_ptr(), out.data_ptr(), 4, 6, 1.0, 3) == INVALID_VALUE  # no such dtype
    assert fwht_launch(None, out.data_ptr(), 4, 6, 1.0, 0) == INVALID_VALUE
    assert fwht_launch(x.data_ptr() + 2, out.data_ptr(), 4, 6, 1.0, 0) == INVALID_VALUE  # not element-aligned
    assert fwht_launch(x.data_ptr(), x.data_ptr() + 4, 4, 6, 1.0, 0) == INVALID_VALUE  # partial overlap
    assert fwht_launch(x.data_ptr(), out.data_ptr(), 0, 6, 1.0, 0) == SUCCESS  # nothing to do
    assert (out == 7.0).all(), "a rejected call wrote"
