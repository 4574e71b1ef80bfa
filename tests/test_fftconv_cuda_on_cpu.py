"""The CUDA fft_conv kernel (csrc/fftconv/fftconv.cu, unchanged) run on the CPU.

tests/cuda_emu.py builds the source with the host compiler against the emulated CUDA
runtime (one OS thread per CUDA thread, the tensor-core mma emulated per warp), so the
launcher and the kernel are checked without a GPU at small sizes: every stage layout
(radices 8·8, 16·8, 16·16, 8·8·8, 16·8·8 and one of four stages), all three modes, gates
and D, odd L and unaligned rows (element-wise path) and 16-byte vectors, float16 and
bfloat16, against the float64 reference with the tolerance rule of tests/conftest.py; no
writes outside the output, no misaligned access (UBSan), the same bits in two thread
orders, and the launcher's argument checks. The records come from the cuda backend's own
``cuda_spectrum``; the backend's forward and backward (fastspec/ops/fftconv.py) run on the
emulated kernel too. On a GPU, tests/test_fftconv.py runs the kernel for real.
"""
import ctypes
import os

import pytest
import torch

import cuda_emu
from conftest import assert_close_to_reference, random_input
from fastspec.ops import fftconv as ops
from fastspec.reference.fftconv import fft_conv_reference

CU = os.path.join(cuda_emu.ROOT, "csrc", "fftconv", "fftconv.cu")
ENTRY = """
#include "fftconv/fftconv.h"
extern "C" int fftconv_emulated(const void* u, const void* pre, const void* post, const float* D, const float* records,
                                void* y, int64_t batch, int64_t channels, int64_t length, int log2n, int dtype) {
  return static_cast<int>(fastspec::fftconv_forward_launch(u, pre, post, D, records, y, batch, channels, length, log2n,
                                                           static_cast<fastspec::FftConvDType>(dtype), nullptr));
}
"""
DTYPE_CODE = {torch.float16: 1, torch.bfloat16: 2}  # fastspec::FftConvDType
SUCCESS, INVALID_VALUE = 0, 1  # cudaError_t
_UNAVAILABLE = cuda_emu.unavailable_reason()
pytestmark = [
    pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernel runs for real (tests/test_fftconv.py)"),
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=str(_UNAVAILABLE)),
]


@pytest.fixture(scope="module")
def emulated(request, tmp_path_factory):
    lib = cuda_emu.build_cached(request, tmp_path_factory, [CU], ENTRY)
    lib.fftconv_emulated.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 3 + [ctypes.c_int] * 2
    return lib


@pytest.fixture
def launch(emulated):
    cuda_emu.set_schedule(emulated, "parallel")
    return emulated.fftconv_emulated


def _ptr(t):
    return None if t is None else t.data_ptr()


def _placed(t, offset):
    """A copy of t inside a buffer that starts `offset` elements past a 16-byte boundary."""
    buf = torch.empty(t.numel() + offset, dtype=t.dtype)
    out = buf[offset:].view(t.shape)
    out.copy_(t)
    return out


def _run(launch, capfd, u, k, mode, pregate=None, postgate=None, D=None, offset=0):
    """y from the emulated kernel (inputs and output `offset` elements off alignment), and the
    guards around y."""
    B, H, L = u.shape
    n = ops.cuda_fft_size(mode, L, k.shape[1])
    records = ops.cuda_spectrum(k, mode, (L,))
    ins = [None if t is None else _placed(t, offset) for t in (u, pregate, postgate)]
    y, guards = cuda_emu.guarded(u.shape, u.dtype, offset)
    d = None if D is None else D.float()
    rc = launch(_ptr(ins[0]), _ptr(ins[1]), _ptr(ins[2]), _ptr(d), records.data_ptr(), y.data_ptr(), B, H, L,
                n.bit_length() - 1, DTYPE_CODE[u.dtype])
    assert "runtime error" not in capfd.readouterr().err, "UBSan: misaligned access"
    assert rc == SUCCESS
    return y, guards


def _inputs(B, H, L, Lk, dtype, gates, with_d):
    u = random_input((B, H, L), dtype, device="cpu")
    k = random_input((H, Lk), torch.float32, device="cpu") / Lk**0.5
    pre, post = ((random_input((B, H, L), dtype, device="cpu") for _ in range(2)) if gates else (None, None))
    D = random_input((H,), torch.float32, device="cpu") if with_d else None
    return u, k, pre, post, D


CASES = [  # (mode, L, Lk, dtype, gates, D, offset): FFT size, radices, path
    ("causal", 64, 64, torch.float16, True, True, 0),            # N = 128: 8·8, 16-byte vectors
    ("causal", 200, 57, torch.bfloat16, False, True, 0),         # N = 256: 16·8
    ("circular", 256, 100, torch.float16, True, False, 0),       # N = 256, L = N
    ("causal", 300, 100, torch.bfloat16, True, True, 0),         # N = 512: 16·16, L % 8 = 4: element-wise
    ("bidirectional", 500, 999, torch.float16, False, False, 0),  # N = 1024: 8·8·8
    ("causal", 777, 777, torch.float16, True, True, 0),          # N = 2048: 16·8·8, odd L
    ("causal", 1024, 1, torch.bfloat16, True, True, 1),          # N = 2048, unaligned rows: element-wise
]


@pytest.mark.parametrize("mode,L,Lk,dtype,gates,with_d,offset", CASES,
                         ids=lambda v: str(v).removeprefix("torch.") if not isinstance(v, bool) else None)
def test_kernel_matches_reference(launch, capfd, mode, L, Lk, dtype, gates, with_d, offset):
    u, k, pre, post, D = _inputs(1, 2, L, Lk, dtype, gates, with_d)
    y, guards = _run(launch, capfd, u, k, mode, pre, post, D, offset)
    assert_close_to_reference(y, fft_conv_reference(u, k, mode=mode, pregate=pre, postgate=post, D=D))
    assert all((g == 7.0).all() for g in guards), "wrote outside the output"


@pytest.mark.slow
def test_four_stages(launch, capfd):
    """N = 16384 (radices 16·8·8·8, 512 threads a block), a short filter."""
    u, k, pre, post, D = _inputs(1, 1, 8192, 100, torch.float16, True, True)
    y, _ = _run(launch, capfd, u, k, "causal", pre, post, D)
    assert_close_to_reference(y, fft_conv_reference(u, k, mode="causal", pregate=pre, postgate=post, D=D))


def test_same_bits_in_any_thread_order(emulated, capfd):
    """Threads one at a time, ascending and then descending: a race on shared memory (a
    value read by another warp's stage or spectrum pair before it was written) changes bits."""
    u, k, pre, post, D = _inputs(1, 1, 100, 100, torch.float16, True, True)
    outs = []
    for order in ("ascending", "descending"):
        cuda_emu.set_schedule(emulated, order)
        outs.append(_run(emulated.fftconv_emulated, capfd, u, k, "causal", pre, post, D)[0].clone())
    assert torch.equal(outs[0], outs[1]), "the result depends on the order of the threads"
    assert_close_to_reference(outs[0], fft_conv_reference(u, k, mode="causal", pregate=pre, postgate=post, D=D))


def test_launcher_rejects_what_it_cannot_handle(launch):
    u = random_input((1, 2, 64), torch.float16, device="cpu")
    rec = torch.zeros(2, 64, 4)
    y = torch.full_like(u, 7.0)
    args = dict(u=u.data_ptr(), pre=None, post=None, D=None, rec=rec.data_ptr(), y=y.data_ptr(), B=1, H=2, L=64,
                log2n=7, dtype=1)

    def call(**changes):
        a = {**args, **changes}
        return launch(a["u"], a["pre"], a["post"], a["D"], a["rec"], a["y"], a["B"], a["H"], a["L"], a["log2n"],
                      a["dtype"])

    assert call(log2n=6) == INVALID_VALUE and call(log2n=16) == INVALID_VALUE
    assert call(L=129) == INVALID_VALUE and call(L=0) == INVALID_VALUE
    assert call(dtype=0) == INVALID_VALUE  # no float32 kernel
    assert call(u=None) == INVALID_VALUE and call(B=-1) == INVALID_VALUE
    assert call(rec=rec.data_ptr() + 4) == INVALID_VALUE  # records not 16-byte aligned
    assert call(u=u.data_ptr() + 1) == INVALID_VALUE  # not element-aligned
    assert call(y=u.data_ptr() + 2) == INVALID_VALUE  # y overlaps u
    assert call(B=0) == SUCCESS  # nothing to do
    assert (y == 7.0).all(), "a rejected call wrote"


def _emulated_kernel(launch, capfd):
    """fastspec::fft_conv_cuda's signature on the emulated launcher (for the backend's glue)."""
    def kernel(u, pregate, postgate, D, records, log2n):
        for t in (u, pregate, postgate, D, records):
            assert t is None or t.is_contiguous()
        y = torch.full_like(u, 7.0)
        B, H, L = u.shape
        rc = launch(_ptr(u), _ptr(pregate), _ptr(postgate), _ptr(D), records.data_ptr(), y.data_ptr(), B, H, L, log2n,
                    DTYPE_CODE[u.dtype])
        assert "runtime error" not in capfd.readouterr().err, "UBSan: misaligned access"
        assert rc == SUCCESS
        return y
    return kernel


@pytest.mark.parametrize("mode,L,Lk,dtype", [("causal", 100, 100, torch.float16),
                                             ("bidirectional", 64, 127, torch.bfloat16)], ids=str)
def test_backend_forward_and_backward(launch, capfd, mode, L, Lk, dtype):
    """The cuda backend's forward and backward (fastspec/ops/fftconv.py) on the emulated kernel:
    non-contiguous inputs, grad_y expanded with stride 0 (as from .sum()), every gradient
    against autograd of the float64 reference (du, dpregate, dpostgate from the kernel with
    swapped arguments and the conjugate spectrum; dk and dD from the torch backend)."""
    B, H = 2, 2
    kernel = _emulated_kernel(launch, capfd)
    u = random_input((B, L, H), dtype, device="cpu").transpose(1, 2)  # non-contiguous
    k = random_input((H, Lk), torch.float32, device="cpu") / Lk**0.5
    pre, post = (random_input((B, H, L), dtype, device="cpu") for _ in range(2))
    D = random_input((H,), dtype, device="cpu")
    y = ops.cuda_forward(u, k, None, pre, post, D, mode, kernel=kernel)
    inputs = [t.double().requires_grad_() for t in (u, k, pre, post, D)]
    ref = fft_conv_reference(inputs[0], inputs[1], mode=mode, pregate=inputs[2], postgate=inputs[3], D=inputs[4])
    assert_close_to_reference(y, ref.detach())
    grad_y = random_input((1, H, L), dtype, device="cpu").expand(B, H, L)
    grads = ops.cuda_backward(grad_y, u, k, pre, post, D, mode, [True] * 5, kernel=kernel)
    expected = torch.autograd.grad(ref, inputs, grad_y.double())
    for name, got, want, given in zip(("du", "dk", "dpregate", "dpostgate", "dD"), grads, expected,
                                      (u, k, pre, post, D)):
        assert got.dtype == given.dtype and got.shape == given.shape, name
        assert_close_to_reference(got, want, floor=1e-6 if got.dtype == torch.float32 else None)
