"""The CUDA butterfly kernel (csrc/butterfly/butterfly.cu, unchanged) run on the CPU.

tests/cuda_emu.py builds the source with the host compiler against the emulated CUDA
runtime (one OS thread per CUDA thread), so the launcher and the kernel are checked without
a GPU: every n = 2^1..2^12 (2^13, 2^14 with ``-m slow``: one, two and three register groups,
rows packed many to a tile or one to a tile), nblocks 1 and 2, both stride directions,
float32/float16/bfloat16, several stacks and more rows than a tile holds (partial last
tile), against the float64 reference with the tolerance rule of tests/conftest.py; no writes
outside the output or into the twiddles, unaligned rows, in place, the same bits in two
thread orders, and the launcher's argument checks. The cuda backend's glue
(fastspec/ops/butterfly.py: butterfly_cuda) runs on the emulated kernel too. On a GPU,
tests/test_butterfly.py runs the kernel for real through fastspec._C.
"""
import ctypes
import math
import os

import pytest
import torch

import cuda_emu
from conftest import assert_close_to_reference, random_input
from fastspec.butterfly import random_orthogonal_twiddle
from fastspec.ops import butterfly as ops
from fastspec.reference.butterfly import butterfly_reference

CU = os.path.join(cuda_emu.ROOT, "csrc", "butterfly", "butterfly.cu")
ENTRY = """
#include "butterfly/butterfly.h"
extern "C" int butterfly_emulated(const void* twiddle, const void* x, void* out, int64_t batch, int64_t nstacks,
                                  int nblocks, int log2n, int increasing, int dtype) {
  return static_cast<int>(fastspec::butterfly_forward_launch(twiddle, x, out, batch, nstacks, nblocks, log2n,
                                                             increasing != 0,
                                                             static_cast<fastspec::ButterflyDType>(dtype), nullptr));
}
"""
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # fastspec::ButterflyDType
SUCCESS, INVALID_VALUE = 0, 1  # cudaError_t
MAX_LOG2N = 14  # kButterflyMaxLog2N
_UNAVAILABLE = cuda_emu.unavailable_reason()
pytestmark = [
    pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernel runs for real (tests/test_butterfly.py)"),
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=str(_UNAVAILABLE)),
]


@pytest.fixture(scope="module")
def emulated(request, tmp_path_factory):
    """The built library (threads of a block in parallel unless a test says otherwise)."""
    lib = cuda_emu.build_cached(request, tmp_path_factory, [CU], ENTRY)
    lib.butterfly_emulated.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_int] * 4
    return lib


@pytest.fixture
def launch(emulated):
    """butterfly_forward_launch(twiddle, x, out, batch, nstacks, nblocks, log2n, increasing, dtype_code)."""
    cuda_emu.set_schedule(emulated, "parallel")
    return emulated.butterfly_emulated


def _tile_rows(log2n):
    """Rows of one tile (butterfly.cu, Plan): 2^14 floats for n <= 2^13 (2^9 rows below n = 32)."""
    return 2**9 if log2n < 5 else max(1, 2**14 >> log2n)


def _run(launch, capfd, tw, x, out, increasing):
    batch, nstacks, n = x.shape
    rc = launch(tw.data_ptr(), x.data_ptr(), out.data_ptr(), batch, nstacks, tw.shape[1], n.bit_length() - 1,
                int(increasing), DTYPE_CODE[x.dtype])
    assert "runtime error" not in capfd.readouterr().err, "UBSan: misaligned access"
    return rc


def _floor(n, nblocks, dtype):
    """float32: each factor rounds (twice: a product and an FMA), so F = nblocks·log2 n
    factors may be off by about √F roundings more than the result rounded once (the floor of
    tests/test_butterfly.py); half precision rounds once, at the output."""
    return 2 * math.sqrt(nblocks * (n.bit_length() - 1)) * 2**-24 if dtype == torch.float32 else None


def _check_sizes(launch, capfd, log2n, dtype, offset=0):
    """nblocks 1 and 2, both directions, 2 stacks, a tile and a part more rows than one tile."""
    n = 2**log2n
    batch = _tile_rows(log2n) + 3
    x = random_input((batch, 2, n), dtype, device="cpu")
    for nblocks in (1, 2):
        tw = random_orthogonal_twiddle(2, nblocks, n, dtype, "cpu")
        tw_before = tw.clone()
        for increasing in (True, False):
            out, guards = cuda_emu.guarded(x.shape, dtype, offset)
            assert _run(launch, capfd, tw, x, out, increasing) == SUCCESS
            assert_close_to_reference(out, butterfly_reference(tw, x, increasing), _floor(n, nblocks, dtype))
            assert all((g == 7.0).all() for g in guards), "wrote outside the output"
        assert torch.equal(tw, tw_before), "wrote into the twiddles"


SIZES = list(range(1, 13)) + [pytest.param(k, marks=pytest.mark.slow) for k in (13, 14)]


@pytest.mark.parametrize("dtype", list(DTYPE_CODE), ids=str)
@pytest.mark.parametrize("log2n", SIZES, ids=lambda k: f"n{2**k}")
def test_kernel_matches_reference(launch, capfd, dtype, log2n):
    _check_sizes(launch, capfd, log2n, dtype)


@pytest.mark.parametrize("log2n", [3, 11])
def test_unaligned_rows(launch, capfd, log2n):
    """x and out one element off 16-byte alignment (the kernel needs element alignment only)."""
    x = random_input((3, 2, 2**log2n), torch.float16, device="cpu")
    x_off, _ = cuda_emu.guarded(x.shape, torch.float16, offset=1)
    x_off.copy_(x)
    tw = random_orthogonal_twiddle(2, 2, 2**log2n, torch.float16, "cpu")
    out, guards = cuda_emu.guarded(x.shape, torch.float16, offset=1)
    assert _run(launch, capfd, tw, x_off, out, False) == SUCCESS
    assert_close_to_reference(out, butterfly_reference(tw, x, False))
    assert all((g == 7.0).all() for g in guards), "wrote outside the output"


@pytest.mark.parametrize("log2n", [4, 10])
def test_in_place(launch, capfd, log2n):
    x = random_input((_tile_rows(log2n) + 1, 1, 2**log2n), torch.float32, device="cpu")
    tw = random_orthogonal_twiddle(1, 2, 2**log2n, torch.float32, "cpu")
    ref = butterfly_reference(tw, x, True)
    assert _run(launch, capfd, tw, x, x, True) == SUCCESS
    assert_close_to_reference(x, ref, _floor(2**log2n, 2, torch.float32))


@pytest.mark.parametrize("log2n, nblocks", [(6, 2), (12, 3)], ids=["n64-2groups", "n4096-3groups-3blocks"])
def test_same_bits_in_any_thread_order(emulated, capfd, log2n, nblocks):
    """The threads of a block one at a time, each until its next barrier, in ascending and
    then in descending order: a shared-memory race (a slot of the tile read by another
    thread before its put, or written before its get) gives different bits. Two tiles of
    one stack on the two emulated SMs... and a second stack."""
    n = 2**log2n
    x = random_input((_tile_rows(log2n) + 1, 2, n), torch.float32, device="cpu")
    tw = random_orthogonal_twiddle(2, nblocks, n, torch.float32, "cpu")
    outs = []
    for order in ("ascending", "descending"):
        cuda_emu.set_schedule(emulated, order)
        outs.append(torch.full_like(x, 7.0))
        assert _run(emulated.butterfly_emulated, capfd, tw, x, outs[-1], True) == SUCCESS
    assert torch.equal(outs[0], outs[1]), "the result depends on the order of the threads"
    assert_close_to_reference(outs[0], butterfly_reference(tw, x, True), _floor(n, nblocks, torch.float32))


def test_launcher_rejects_what_it_cannot_handle(launch):
    x = random_input((4, 2, 64), torch.float32, device="cpu")
    tw = random_orthogonal_twiddle(2, 1, 64, torch.float32, "cpu")
    out = torch.full_like(x, 7.0)
    args = dict(tw=tw.data_ptr(), x=x.data_ptr(), out=out.data_ptr(), batch=4, nstacks=2, nblocks=1, log2n=6,
                increasing=1, dtype=0)

    def call(**changes):
        a = {**args, **changes}
        return launch(a["tw"], a["x"], a["out"], a["batch"], a["nstacks"], a["nblocks"], a["log2n"], a["increasing"],
                      a["dtype"])

    assert call(log2n=0) == INVALID_VALUE and call(log2n=MAX_LOG2N + 1) == INVALID_VALUE
    assert call(nblocks=0) == INVALID_VALUE
    assert call(batch=-1) == INVALID_VALUE and call(nstacks=-1) == INVALID_VALUE
    assert call(dtype=3) == INVALID_VALUE  # no such dtype
    assert call(tw=None) == INVALID_VALUE and call(x=None) == INVALID_VALUE and call(out=None) == INVALID_VALUE
    assert call(x=x.data_ptr() + 2) == INVALID_VALUE  # not element-aligned
    assert call(tw=tw.data_ptr() + 4) == INVALID_VALUE  # not at a whole 2x2 matrix (16 bytes)
    assert call(out=x.data_ptr() + 4) == INVALID_VALUE  # partial overlap with x
    assert call(out=tw.data_ptr()) == INVALID_VALUE  # out over the twiddles
    huge = 1 << 44  # never dereferenced: 2^31 tiles of one row of 2^14 are refused first
    assert call(x=huge, out=huge + (1 << 47), batch=1 << 31, nstacks=1, log2n=14) == INVALID_VALUE
    assert call(batch=0) == SUCCESS and call(nstacks=0) == SUCCESS  # nothing to do
    assert (out == 7.0).all(), "a rejected call wrote"


def _emulated_kernel(launch, capfd):
    """fastspec::butterfly_cuda's signature on the emulated launcher (for the backend's glue)."""

    def kernel(twiddle, x, increasing_stride):
        assert twiddle.is_contiguous() and x.is_contiguous()
        out = torch.full_like(x, 7.0)
        assert _run(launch, capfd, twiddle, x, out, increasing_stride) == SUCCESS
        return out

    return kernel


def test_backend_glue(launch, capfd):
    """fastspec/ops/butterfly.py: butterfly_cuda on the emulated kernel: a non-contiguous x, a
    transposed (strided) twiddle, and one that starts mid-matrix (copied to a whole-matrix
    boundary before the kernel sees it)."""
    kernel = _emulated_kernel(launch, capfd)
    n = 256
    x = random_input((2, n, 3), torch.bfloat16, device="cpu").permute(0, 2, 1)  # (2, 3, n), strided
    tw = random_orthogonal_twiddle(3, 2, n, torch.bfloat16, "cpu")
    tw_t, increasing = ops.transposed_twiddle(tw, True)
    out = ops.butterfly_cuda(tw_t, x, increasing, kernel=kernel)
    assert_close_to_reference(out, butterfly_reference(tw, x, True, transpose=True))
    storage = torch.empty(tw.numel() + 1, dtype=tw.dtype)
    shifted = storage[1:].view(tw.shape)  # 2 bytes past the allocation: not at a whole matrix
    shifted.copy_(tw)
    out = ops.butterfly_cuda(shifted, x, False, kernel=kernel)
    assert_close_to_reference(out, butterfly_reference(tw, x, False))
