"""fastspec.butterfly_multiply and fastspec.monarch_multiply against their float64 references,
and the exact fast-transform constructors against the dense matrices, on every backend here."""
import math

import numpy as np
import pytest
import scipy.fft
import torch

import fastspec
import fastspec.butterfly as fb
from fastspec._backend import triton_interpreted
from fastspec.ops.butterfly import butterfly_multiply, monarch_multiply
from fastspec.reference.butterfly import butterfly_matrix, butterfly_reference, monarch_matrix, monarch_reference

from conftest import DEVICE, assert_close_to_reference, backend_params, random_input

BACKENDS = backend_params("torch", "triton")
BUTTERFLY_BACKENDS = backend_params("torch", "triton", "cuda")
"""butterfly_multiply has a CUDA C++ kernel (real dtypes, n <= 2^14); monarch_multiply has not."""
INTERPRETED = triton_interpreted()
HALF_AND_SINGLE = [torch.float32, torch.float16, torch.bfloat16]


def random_twiddle(nstacks, nblocks, n, dtype, kind="ortho"):
    """(nstacks, nblocks, log2 n, n/2, 2, 2) twiddles: 'ortho' random rotations/reflections
    (unitary for complex dtypes: a product of them stays well conditioned, as trained
    butterflies are), 'randn' Gaussian entries of variance 1/2 (torch_butterfly's init)."""
    if kind == "randn":
        shape = (nstacks, nblocks, n.bit_length() - 1, n // 2, 2, 2)
        tw = torch.randn(*shape, dtype=torch.complex128 if dtype.is_complex else torch.float64) / math.sqrt(2)
        return tw.to(device=DEVICE, dtype=dtype)
    return fb.random_orthogonal_twiddle(nstacks, nblocks, n, dtype, DEVICE)


def random_complex(shape, dtype):
    return torch.complex(torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)).to(
        device=DEVICE, dtype=dtype)


def _data(shape, dtype):
    return random_complex(shape, dtype) if dtype.is_complex else random_input(shape, dtype)


def _factor_floor(n, nblocks, dtype):
    """float32/complex64: every factor rounds once, so a product of F = nblocks·log2 n
    factors may be off by about √F roundings more than the result rounded once."""
    if dtype in (torch.float32, torch.complex64):
        return 2 * math.sqrt(nblocks * (n.bit_length() - 1)) * 2**-24
    return None


def _check(out, ref):
    """The tolerance rule of conftest on real and imaginary parts alike."""
    if out.is_complex():
        assert_close_to_reference(torch.view_as_real(out), torch.view_as_real(ref))
    else:
        assert_close_to_reference(out, ref)


# --------------------------------------------------------------------------- reference


@pytest.mark.parametrize("n", [2, 4, 8, 32])
@pytest.mark.parametrize("nblocks", [1, 2])
@pytest.mark.parametrize("increasing_stride", [True, False])
def test_reference_is_the_product_of_dense_factors(n, nblocks, increasing_stride):
    """Each factor written out as a dense matrix, multiplied in order, against the reference."""
    tw = random_twiddle(2, nblocks, n, torch.complex128, "randn").cpu()
    log_n = n.bit_length() - 1
    dense = torch.eye(n, dtype=torch.complex128).expand(2, n, n)
    increasing = increasing_stride
    for block in range(nblocks):
        for idx in range(log_n):
            stride = 1 << (idx if increasing else log_n - 1 - idx)
            factor = torch.zeros(2, n, n, dtype=torch.complex128)
            for p in range(n // 2):
                a = (p // stride) * 2 * stride + p % stride
                for i, row in enumerate((a, a + stride)):
                    for j, col in enumerate((a, a + stride)):
                        factor[:, row, col] = tw[:, block, idx, p, i, j]
            dense = factor @ dense
        increasing = not increasing
    torch.testing.assert_close(butterfly_matrix(tw, increasing_stride), dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(butterfly_matrix(tw, increasing_stride, transpose=True), dense.transpose(1, 2),
                               rtol=1e-12, atol=1e-12)


def test_reference_dense_matrix_is_fly_monarch():
    """monarch_matrix against fly's own three-step definition (block diagonal, the
    (r, l) → (l, r) reshape, block diagonal, the (l, s) → (s, l) reshape) with einsum."""
    k, q, p, l, s, r = 3, 4, 5, 6, 7, 2
    x = torch.randn(4, k * p, dtype=torch.float64)
    w1, w2 = torch.randn(k, q, p, dtype=torch.float64), torch.randn(l, s, r, dtype=torch.float64)
    out1 = torch.einsum("kqp,bkp->bkq", w1, x.reshape(4, k, p)).reshape(4, r, l).transpose(1, 2)
    expect = torch.einsum("lsr,blr->bsl", w2, out1).reshape(4, s * l)
    torch.testing.assert_close(monarch_reference(x, w1, w2), expect, rtol=1e-12, atol=1e-12)
    assert monarch_matrix(w1, w2).shape == (l * s, k * p)


# --------------------------------------------------------------------------- butterfly forward


DENSE_SIZES = [2**k for k in range(1, 9)] + [pytest.param(2**k, marks=pytest.mark.slow) for k in range(9, 13)]


@pytest.mark.parametrize("backend", backend_params("torch"))
@pytest.mark.parametrize("n", DENSE_SIZES)
def test_float64_matches_dense_product(backend, n):
    """n = 2 .. 2^12 (2^9 up slow: building their dense matrices), nblocks 1 and 2,
    both stride directions, transpose, against the dense matrix of the factors (x @ Mᵀ)."""
    x = random_input((3, 2, n), torch.float64)
    for nblocks in (1, 2):
        tw = random_twiddle(2, nblocks, n, torch.float64, "randn")
        for increasing_stride in (True, False):
            dense = butterfly_matrix(tw.cpu(), increasing_stride)
            for transpose in (False, True):
                out = butterfly_multiply(tw, x, increasing_stride=increasing_stride, transpose=transpose,
                                         backend=backend)
                mat = dense.transpose(1, 2) if transpose else dense
                expect = torch.einsum("hij,bhj->bhi", mat, x.cpu())
                torch.testing.assert_close(out.cpu(), expect, rtol=1e-10, atol=1e-10 * n)
            if n > 256:
                break  # one direction's dense matrix is enough above 256 (the other: the next test)


@pytest.mark.parametrize("backend", backend_params("torch"))
@pytest.mark.parametrize("n", [512, 1024, 2048, 4096])
def test_float64_matches_product_of_factors(backend, n):
    """The sizes above 256 against the factors applied one by one (fastspec.reference)."""
    x = random_input((3, 2, n), torch.float64)
    for nblocks, increasing_stride in ((1, True), (2, False)):
        tw = random_twiddle(2, nblocks, n, torch.float64, "randn")
        for transpose in (False, True):
            out = butterfly_multiply(tw, x, increasing_stride=increasing_stride, transpose=transpose, backend=backend)
            expect = butterfly_reference(tw.cpu(), x.cpu(), increasing_stride, transpose)
            torch.testing.assert_close(out.cpu(), expect, rtol=1e-10, atol=1e-10 * n)


@pytest.mark.parametrize("backend", backend_params("torch"))
@pytest.mark.parametrize("n", [4, 64, 1024])
def test_complex128_matches_reference(backend, n):
    tw = random_twiddle(2, 2, n, torch.complex128, "randn")
    x = random_complex((3, 2, n), torch.complex128)
    for increasing_stride in (True, False):
        for transpose in (False, True):
            out = butterfly_multiply(tw, x, increasing_stride=increasing_stride, transpose=transpose, backend=backend)
            expect = butterfly_reference(tw.cpu(), x.cpu(), increasing_stride, transpose)
            torch.testing.assert_close(out.cpu(), expect, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BUTTERFLY_BACKENDS)
@pytest.mark.parametrize("dtype", HALF_AND_SINGLE + [torch.complex64], ids=str)
@pytest.mark.parametrize("n", [2, 16, 256, 4096])
def test_dtypes_match_reference(backend, dtype, n):
    if backend != "torch" and dtype.is_complex:
        pytest.skip(f"the {backend} backend is real")
    if backend == "triton" and INTERPRETED and n > 256:
        pytest.skip("interpreter: n <= 256 (test_triton_two_launch_path covers the long-row path)")
    rows = max(2, min(6, 2**12 // n))
    for nblocks, increasing_stride, transpose in ((1, True, False), (2, False, True)):
        tw = random_twiddle(3, nblocks, n, dtype)
        x = _data((rows, 3, n), dtype)
        out = butterfly_multiply(tw, x, increasing_stride=increasing_stride, transpose=transpose, backend=backend)
        assert out.dtype == dtype and out.shape == x.shape and out.device == x.device
        ref = butterfly_reference(tw.cpu(), x.cpu(), increasing_stride, transpose)
        floor = _factor_floor(n, nblocks, dtype)
        if out.is_complex():
            assert_close_to_reference(torch.view_as_real(out), torch.view_as_real(ref), floor)
        else:
            assert_close_to_reference(out, ref, floor)


@pytest.mark.parametrize("backend", BUTTERFLY_BACKENDS)
def test_any_strides_and_empty_batch(backend):
    tw = random_twiddle(2, 1, 64, torch.float32)
    x = random_input((2, 64, 5), torch.float32).permute(2, 0, 1)  # (5, 2, 64), non-contiguous
    out = butterfly_multiply(tw, x, backend=backend)
    assert out.is_contiguous()
    assert_close_to_reference(out, butterfly_reference(tw.cpu(), x.cpu()), _factor_floor(64, 1, torch.float32))
    tw_strided = random_twiddle(2, 1, 64, torch.float32).transpose(-1, -2)
    torch.testing.assert_close(butterfly_multiply(tw_strided, x, backend=backend),
                               butterfly_multiply(tw_strided.contiguous(), x, backend="torch"))
    empty = butterfly_multiply(tw, x[:0], backend=backend)
    assert empty.shape == (0, 2, 64)


@pytest.mark.parametrize("backend", backend_params("triton"))
@pytest.mark.parametrize("nblocks,increasing_stride,n,backward_tile", [(1, True, 16, 8), (2, False, 16, 8),
                                                                       (1, False, 64, 32)])
def test_triton_two_launch_path(backend, monkeypatch, nblocks, increasing_stride, n, backward_tile):
    """Rows longer than a tile: the factors of small stride on contiguous sub-rows, then the
    others on strided ones, forward and backward (the row limits lowered to 8 so n = 16 takes
    it; with a backward tile of 32, n = 64 has two sub-rows a tile)."""
    from fastspec.triton_kernels import butterfly as kernels

    monkeypatch.setattr(kernels, "TILE_MAX", 8)
    monkeypatch.setattr(kernels, "BACKWARD_TILE_MAX", backward_tile)
    monkeypatch.setattr(kernels, "BACKWARD_ROW_MAX", 8)
    if backward_tile > 8:
        assert any(meta["R"] > 1 for _, meta in kernels.butterfly_plan(2, 2, n, nblocks, increasing_stride, True))
    tw = random_twiddle(2, nblocks, n, torch.float32).requires_grad_()
    x = random_input((2, 2, n), torch.float32).requires_grad_()
    weight = random_input((2, 2, n), torch.float32)
    out = butterfly_multiply(tw, x, increasing_stride=increasing_stride, backend=backend)
    (out * weight).sum().backward()
    tw64, x64 = (t.detach().cpu().double().requires_grad_() for t in (tw, x))
    ref = butterfly_reference(tw64, x64, increasing_stride)
    (ref * weight.cpu().double()).sum().backward()
    floor = 2 * _factor_floor(n, nblocks, torch.float32)
    assert_close_to_reference(out, ref.detach(), floor)
    assert_close_to_reference(x.grad, x64.grad, floor)
    assert_close_to_reference(tw.grad, tw64.grad, 2 * floor)


# --------------------------------------------------------------------------- butterfly autograd


@pytest.mark.parametrize("backend", BUTTERFLY_BACKENDS)
@pytest.mark.parametrize("n,nblocks,increasing_stride,transpose", [(8, 1, True, False), (64, 2, False, True),
                                                                   (1024, 2, True, True)])
def test_grad_matches_reference(backend, n, nblocks, increasing_stride, transpose):
    if backend == "triton" and INTERPRETED and n > 64:
        pytest.skip("interpreter: n <= 64")
    tw = random_twiddle(2, nblocks, n, torch.float32).requires_grad_()
    x = random_input((5, 2, n), torch.float32).requires_grad_()
    weight = random_input((5, 2, n), torch.float32)
    (butterfly_multiply(tw, x, increasing_stride=increasing_stride, transpose=transpose, backend=backend)
     * weight).sum().backward()
    tw64, x64 = (t.detach().cpu().double().requires_grad_() for t in (tw, x))
    (butterfly_reference(tw64, x64, increasing_stride, transpose) * weight.cpu().double()).sum().backward()
    floor = 2 * _factor_floor(n, nblocks, torch.float32)
    assert_close_to_reference(x.grad, x64.grad, floor)
    assert_close_to_reference(tw.grad, tw64.grad, 2 * floor)  # a sum over the batch besides


@pytest.mark.parametrize("backend", BUTTERFLY_BACKENDS)
def test_backward_through_sum(backend):
    """y.sum().backward() sends an expanded (stride-0) gradient into the backward."""
    tw = random_twiddle(1, 2, 32, torch.float32).requires_grad_()
    x = random_input((4, 1, 32), torch.float32).requires_grad_()
    butterfly_multiply(tw, x, backend=backend).sum().backward()
    tw64, x64 = (t.detach().cpu().double().requires_grad_() for t in (tw, x))
    butterfly_reference(tw64, x64).sum().backward()
    floor = 4 * _factor_floor(32, 2, torch.float32)
    assert_close_to_reference(x.grad, x64.grad, floor)
    assert_close_to_reference(tw.grad, tw64.grad, floor)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=str)
def test_gradcheck_and_double_backward(dtype):
    tw = random_twiddle(1, 2, 4, dtype, "randn").requires_grad_()
    x = _data((2, 1, 4), dtype).requires_grad_()
    for increasing_stride, transpose in ((True, False), (False, True)):
        fn = lambda t, v: butterfly_multiply(t, v, increasing_stride=increasing_stride,  # noqa: E731
                                             transpose=transpose, backend="torch")
        assert torch.autograd.gradcheck(fn, (tw, x))
    assert torch.autograd.gradgradcheck(fn, (tw, x))


@pytest.mark.parametrize("backend", BUTTERFLY_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.complex64], ids=str)
def test_opcheck(backend, dtype):
    if backend == "cuda" and dtype.is_complex:
        pytest.skip("the cuda backend is real")
    if backend == "triton" and dtype != torch.float32:
        pytest.skip("the triton backend is real; one dtype is enough for its registration (interpreter time)")
    tw = random_twiddle(2, 2, 16, dtype).requires_grad_(dtype != torch.bfloat16)
    x = _data((3, 2, 16), dtype).requires_grad_(dtype != torch.bfloat16)
    torch.library.opcheck(torch.ops.fastspec.butterfly_multiply.default, (tw, x, False, backend))
    grad = _data((3, 2, 16), dtype)
    torch.library.opcheck(torch.ops.fastspec.butterfly_multiply_backward.default,
                          (grad, tw.detach(), x.detach(), True, backend))


@pytest.mark.parametrize("backend", BUTTERFLY_BACKENDS)
def test_compile_fullgraph(backend):
    torch._dynamo.reset()
    tw = random_twiddle(1, 1, 64, torch.float32)

    def layer(x):
        return torch.relu(butterfly_multiply(tw, x * 2.0, transpose=True, backend=backend)) + 1.0

    x = random_input((4, 1, 64), torch.float32)
    torch.testing.assert_close(torch.compile(layer, fullgraph=True)(x), layer(x))


# --------------------------------------------------------------------------- monarch

MONARCH_SHAPES = [(4, 4, 4, 4, 4, 4), (8, 8, 8, 8, 8, 8), (2, 3, 5, 3, 7, 2), (4, 6, 3, 8, 5, 3), (1, 16, 16, 4, 2, 4),
                  (4, 16, 16, 4, 16, 16), (2, 32, 16, 4, 32, 16), (3, 16, 16, 3, 32, 16)]
"""(k, q, p, l, s, r): square sqrt(n) blocks, the rectangular shapes fly allows, and three
the triton backend takes (block sizes powers of two >= 16; any block counts)."""


def _skip_unsupported_monarch(backend, shape):
    if backend == "triton":
        from fastspec.triton_kernels.butterfly import monarch_unsupported

        reason = monarch_unsupported(shape[:3], shape[3:])
        if reason:
            pytest.skip(reason)


def _monarch_weights(shape, dtype):
    k, q, p, l, s, r = shape
    return _data((k, q, p), dtype) / math.sqrt(p), _data((l, s, r), dtype) / math.sqrt(r)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", MONARCH_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=str)
def test_monarch_float64_matches_dense(backend, shape, dtype):
    if backend == "triton":
        pytest.skip("the triton backend takes float16, bfloat16 and float32")
    w1, w2 = _monarch_weights(shape, dtype)
    x = _data((2, 3, shape[0] * shape[2]), dtype)
    out = monarch_multiply(x, w1, w2, backend=backend)
    assert out.shape == (2, 3, shape[3] * shape[4])
    torch.testing.assert_close(out.cpu(), monarch_reference(x.cpu(), w1.cpu(), w2.cpu()), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", MONARCH_SHAPES[1:], ids=str)
@pytest.mark.parametrize("dtype", HALF_AND_SINGLE + [torch.complex64], ids=str)
def test_monarch_dtypes_match_reference(backend, shape, dtype):
    _skip_unsupported_monarch(backend, shape)
    if backend == "triton" and dtype.is_complex:
        pytest.skip("the triton backend is real")
    w1, w2 = _monarch_weights(shape, dtype)
    x = _data((5, shape[0] * shape[2]), dtype)
    out = monarch_multiply(x, w1, w2, backend=backend)
    assert out.dtype == dtype
    # two products in float32: sums of up to max(p, r) terms each
    floor = 4 * 2**-24 * math.sqrt(shape[2] + shape[5]) if dtype in (torch.float32, torch.complex64) else None
    ref = monarch_reference(x.cpu(), w1.cpu(), w2.cpu())
    if dtype.is_complex:
        assert_close_to_reference(torch.view_as_real(out), torch.view_as_real(ref), floor)
    else:
        assert_close_to_reference(out, ref, floor)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [MONARCH_SHAPES[1], MONARCH_SHAPES[3], MONARCH_SHAPES[6]], ids=str)
def test_monarch_grad_matches_reference(backend, shape):
    _skip_unsupported_monarch(backend, shape)
    w1, w2 = (w.requires_grad_() for w in _monarch_weights(shape, torch.float32))
    x = random_input((2, 3, shape[0] * shape[2]), torch.float32).requires_grad_()
    weight = random_input((2, 3, shape[3] * shape[4]), torch.float32)
    (monarch_multiply(x, w1, w2, backend=backend) * weight).sum().backward()
    leaves = [t.detach().cpu().double().requires_grad_() for t in (x, w1, w2)]
    (monarch_reference(*leaves) * weight.cpu().double()).sum().backward()
    for got, ref in zip((x, w1, w2), leaves):
        assert_close_to_reference(got.grad, ref.grad, 8 * 2**-24 * math.sqrt(shape[2] + shape[5] + 6))
    x.grad = None
    monarch_multiply(x, w1, w2, backend=backend).sum().backward()  # an expanded (stride-0) gradient
    leaves[0].grad = None
    monarch_reference(*leaves).sum().backward()
    assert_close_to_reference(x.grad, leaves[0].grad, 8 * 2**-24 * math.sqrt(shape[2] + shape[5]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=str)
def test_monarch_gradcheck_and_double_backward(dtype):
    w1, w2 = _monarch_weights(MONARCH_SHAPES[2], dtype)
    x = _data((2, 10), dtype)
    args = tuple(t.requires_grad_() for t in (x, w1, w2))
    fn = lambda *a: monarch_multiply(*a, backend="torch")  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_monarch_opcheck(backend, dtype):
    shape = MONARCH_SHAPES[5] if backend == "triton" else MONARCH_SHAPES[3]
    w1, w2 = _monarch_weights(shape, dtype)
    x = random_input((3, shape[0] * shape[2]), dtype)
    args = tuple(t.requires_grad_(dtype == torch.float32) for t in (x, w1, w2))
    torch.library.opcheck(torch.ops.fastspec.monarch_multiply.default, (*args, backend))
    grad = random_input((3, shape[3] * shape[4]), dtype)
    torch.library.opcheck(torch.ops.fastspec.monarch_multiply_backward.default,
                          (grad, *(t.detach() for t in args), backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_monarch_compile_fullgraph(backend):
    torch._dynamo.reset()
    shape = MONARCH_SHAPES[5] if backend == "triton" else MONARCH_SHAPES[0]
    w1, w2 = _monarch_weights(shape, torch.float32)

    def layer(x):
        return torch.relu(monarch_multiply(x + 1.0, w1, w2, backend=backend)) * 2.0

    x = random_input((4, shape[0] * shape[2]), torch.float32)
    torch.testing.assert_close(torch.compile(layer, fullgraph=True)(x), layer(x))


# --------------------------------------------------------------------------- exact transforms


def _dft(n):
    j = torch.arange(n, dtype=torch.float64)
    return torch.exp(-2j * math.pi * torch.outer(j, j) / n)


@pytest.mark.parametrize("n", [2, 4, 8, 64, 256])
def test_fft_ifft_are_the_dense_dft(n):
    f = _dft(n)
    for normalized, scale in ((False, 1.0), (True, 1 / math.sqrt(n))):
        torch.testing.assert_close(fb.fft(n, normalized=normalized).matrix(), f * scale, rtol=0, atol=1e-12 * n)
        torch.testing.assert_close(fb.ifft(n, normalized=normalized).matrix(),
                                   f.conj() * (scale if normalized else 1 / n), rtol=0, atol=1e-12 * n)


@pytest.mark.parametrize("n", [2, 16, 256])
def test_hadamard_and_identity(n):
    h = fastspec.hadamard_matrix(n).double()
    assert torch.equal(fb.hadamard(n).matrix(), h)  # ±1 sums: exact
    torch.testing.assert_close(fb.hadamard(n, normalized=True).matrix(), h / math.sqrt(n), rtol=1e-14, atol=1e-15)
    assert torch.equal(fb.identity(n).matrix(), torch.eye(n, dtype=torch.float64))


@pytest.mark.parametrize("n", [2, 4, 32, 256])
def test_dct_is_scipy_dct2(n):
    for norm, normalized in ((None, False), ("ortho", True)):
        expect = torch.from_numpy(scipy.fft.dct(np.eye(n), type=2, axis=0, norm=norm))
        torch.testing.assert_close(fb.dct(n, normalized=normalized).matrix(), expect, rtol=0, atol=1e-12 * n)


@pytest.mark.parametrize("n", [2, 8, 256])
@pytest.mark.parametrize("complex_c", [False, True])
def test_circulant_is_the_dense_circulant(n, complex_c):
    c = torch.randn(n, dtype=torch.complex128 if complex_c else torch.float64)
    dense = torch.stack([torch.roll(c, j) for j in range(n)], dim=1)  # C[i, j] = c[(i - j) mod n]
    t = fb.circulant(c)
    assert t.twiddle.shape[1] == 2 and t.permutation is None
    torch.testing.assert_close(t.matrix(), dense, rtol=0, atol=1e-12 * n * c.abs().max().item())


@pytest.mark.parametrize("backend", BUTTERFLY_BACKENDS)
def test_transforms_in_float32(backend):
    """Applied to float32 data (complex64 twiddles), each transform is within float32 rounding
    of the float64 dense matrix."""
    n = 256
    x = random_input((4, n), torch.float32)
    cases = [(fb.fft(n, normalized=True), _dft(n) / math.sqrt(n)),
             (fb.hadamard(n, normalized=True), fastspec.hadamard_matrix(n).double() / math.sqrt(n)),
             (fb.dct(n, normalized=True), torch.from_numpy(scipy.fft.dct(np.eye(n), type=2, axis=0, norm="ortho")))]
    for transform, dense in cases:
        if backend != "torch" and transform.twiddle.is_complex():
            continue
        out = transform(x, backend=backend)
        ref = x.cpu().double().to(dense.dtype) @ dense.T
        _check(out, ref) if out.dtype == torch.float32 else assert_close_to_reference(
            torch.view_as_real(out), torch.view_as_real(ref), _factor_floor(n, 1, torch.complex64))


def test_transform_errors():
    with pytest.raises(ValueError, match="power of two"):
        fb.fft(12)
    with pytest.raises(ValueError, match="power of two"):
        fb.dct(1)
    with pytest.raises(ValueError, match="1-D tensor"):
        fb.circulant(torch.ones(2, 4))
    with pytest.raises(ValueError, match="power of two"):
        fb.circulant(torch.ones(6))


# --------------------------------------------------------------------------- bad input


def test_butterfly_bad_inputs():
    tw, x = torch.ones(1, 1, 3, 4, 2, 2), torch.ones(2, 1, 8)
    with pytest.raises(ValueError, match="power of two from 2 to 2\\^20, got 12"):
        butterfly_multiply(torch.ones(1, 1, 3, 6, 2, 2), torch.ones(2, 1, 12))
    with pytest.raises(ValueError, match="twiddle must be \\(nstacks, nblocks, log2 n, n/2, 2, 2\\) = \\(1, nblocks >= 1, 3, 4, 2, 2\\)"):
        butterfly_multiply(torch.ones(1, 1, 3, 2, 2, 2), x)
    with pytest.raises(ValueError, match="twiddle must be"):
        butterfly_multiply(torch.ones(2, 1, 3, 4, 2, 2), x)  # nstacks mismatch
    with pytest.raises(ValueError, match="x must be \\(batch, nstacks, n\\)"):
        butterfly_multiply(tw, torch.ones(2, 8))
    with pytest.raises(TypeError, match="same dtype, got torch.float64 and torch.float32"):
        butterfly_multiply(tw.double(), x)
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32, float64, complex64 or complex128"):
        butterfly_multiply(tw.int(), x.int())
    with pytest.raises(TypeError, match="transpose must be a bool"):
        butterfly_multiply(tw, x, transpose=1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        butterfly_multiply(tw, np.ones((2, 1, 8)))
    if fastspec.backends()["cpu"].available:  # a backend that runs here but has no butterfly kernel
        with pytest.raises(ValueError, match="backend must be 'torch', 'triton' or 'cuda'"):
            butterfly_multiply(tw, x, backend="cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        butterfly_multiply(tw, x, backend="numpy")


def test_cuda_backend_limits():
    """What the cuda kernel cannot take is refused before it (ValueError naming the limit),
    checked on the op's backend check (on any machine) and, on a GPU, through the public function."""
    from fastspec.ops import butterfly as ops

    big = torch.ones(1, 1, 2**15)
    with pytest.raises(ValueError, match="cuda backend takes n up to 2\\^14 = 16384 .* got n = 32768"):
        ops._check_butterfly_backend("cuda", big)
    with pytest.raises(ValueError, match="cuda backend takes float16, bfloat16 and float32"):
        ops._check_butterfly_backend("cuda", torch.ones(1, 1, 4, dtype=torch.complex64))
    ops._check_butterfly_backend("cuda", torch.ones(1, 1, 2**14, dtype=torch.bfloat16))
    if fastspec.backends()["cuda"].available and DEVICE.type == "cuda":
        tw = random_twiddle(1, 1, 2**15, torch.float32)
        with pytest.raises(ValueError, match="cuda backend takes n up to"):
            butterfly_multiply(tw, big.to(DEVICE), backend="cuda")


def test_monarch_bad_inputs():
    x, w1, w2 = torch.ones(3, 16), torch.ones(4, 4, 4), torch.ones(4, 4, 4)
    with pytest.raises(ValueError, match="need k·p = n and l·r = k·q"):
        monarch_multiply(torch.ones(3, 15), w1, w2)
    with pytest.raises(ValueError, match="need k·p = n and l·r = k·q"):
        monarch_multiply(x, w1, torch.ones(3, 4, 4))
    with pytest.raises(ValueError, match="w1 \\(k, q, p\\)"):
        monarch_multiply(x, torch.ones(16, 16), w2)
    with pytest.raises(TypeError, match="same dtype"):
        monarch_multiply(x, w1.double(), w2)
    with pytest.raises(TypeError, match="x must be float16"):
        monarch_multiply(x.long(), w1.long(), w2.long())
    if fastspec.backends()["triton"].available:
        with pytest.raises(ValueError, match="triton backend takes float16, bfloat16 and float32"):
            monarch_multiply(x.double(), w1.double(), w2.double(), backend="triton")
        with pytest.raises(ValueError, match="block sizes q, p, s, r that are powers of two from 16 to 128"):
            monarch_multiply(x, w1, w2, backend="triton")
        with pytest.raises(ValueError, match="powers of two from 16 to 128"):
            monarch_multiply(torch.ones(3, 256), torch.ones(1, 256, 256), torch.ones(16, 16, 16), backend="triton")
        with pytest.raises(ValueError, match="triton backend takes float16, bfloat16 and float32"):
            butterfly_multiply(torch.ones(1, 1, 3, 4, 2, 2, dtype=torch.complex64),
                               torch.ones(2, 1, 8, dtype=torch.complex64), backend="triton")


def test_auto_choice(monkeypatch):
    """auto: Triton for CUDA tensors it takes (it passes its interpreter tests), torch on the
    CPU, torch for float64/complex and for Monarch blocks the kernel does not take."""
    from fastspec.ops import butterfly as ops

    monkeypatch.setattr(ops._backend, "device_ok", lambda name, device: None)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert ops._auto_choice(cuda, torch.bfloat16) == "triton"
    assert ops._auto_choice(cuda, torch.float64) == "torch"
    assert ops._auto_choice(cuda, torch.complex64) == "torch"
    assert ops._auto_choice(cpu, torch.float32) == "torch"
    assert ops._auto_choice(cuda, torch.float32, ((64, 64, 64), (64, 64, 64))) == "triton"
    assert ops._auto_choice(cuda, torch.float32, ((4, 4, 4), (4, 4, 4))) == "torch"


# --------------------------------------------------------------------------- modules


def _butterfly_dense(layer):
    """The (out, in) matrix of a Butterfly layer from the reference (input permutation included)."""
    mats = butterfly_matrix(layer.twiddle.detach().cpu(), layer.increasing_stride)  # (nstacks, n, n)
    if layer.permutation is not None:
        mats = mats[:, :, torch.argsort(layer.permutation.cpu())]
    stacked = mats.reshape(layer.nstacks * layer.n, layer.n)[:layer.out_features, :layer.in_features]
    return stacked.real if layer.real_output else stacked


@pytest.mark.parametrize("init", ["randn", "ortho", "identity", "hadamard"])
@pytest.mark.parametrize("in_features,out_features,nblocks", [(12, 40, 2), (16, 8, 1), (5, 5, 1)])
def test_butterfly_layer_is_its_dense_matrix(init, in_features, out_features, nblocks):
    layer = fastspec.nn.Butterfly(in_features, out_features, init=init, nblocks=nblocks).double().to(DEVICE)
    x = random_input((3, 2, in_features), torch.float64)
    expect = x.cpu() @ _butterfly_dense(layer).T + layer.bias.detach().cpu()
    torch.testing.assert_close(layer(x).cpu(), expect, rtol=1e-10, atol=1e-10)
    assert layer.twiddle.shape == (math.ceil(out_features / layer.n), nblocks, layer.log_n, layer.n // 2, 2, 2)


@pytest.mark.parametrize("init,dense", [("fft", lambda n: _dft(n) / math.sqrt(n)),
                                        ("dct", lambda n: torch.from_numpy(scipy.fft.dct(np.eye(n), axis=0,
                                                                                         norm="ortho"))),
                                        ("hadamard", lambda n: fastspec.hadamard_matrix(n).double() / math.sqrt(n)),
                                        ("identity", lambda n: torch.eye(n, dtype=torch.float64))])
def test_butterfly_layer_exact_inits(init, dense):
    n = 32
    layer = fastspec.nn.Butterfly(n, n, bias=False, complex=init in ("fft", "dct"), init=init, nblocks=2)
    x = random_input((4, n), torch.float32)
    out = layer(x)
    ref = x.cpu().double().to(dense(n).dtype) @ dense(n).T
    floor = 2 * _factor_floor(n, 2, torch.float32)
    if out.is_complex():
        assert_close_to_reference(torch.view_as_real(out.detach()), torch.view_as_real(ref), floor)
    else:
        assert_close_to_reference(out.detach(), ref, floor)


def test_butterfly_layer_orthogonal_init_is_orthogonal():
    for complex_ in (False, True):
        layer = fastspec.nn.Butterfly(64, 64, bias=False, complex=complex_, init="ortho", nblocks=2).double()
        m = _butterfly_dense(layer)  # twiddles stored in float32: orthogonal to float32 rounding
        torch.testing.assert_close(m.conj().T @ m, torch.eye(64, dtype=m.dtype), rtol=0, atol=1e-6)


def test_monarch_linear_and_projection():
    layer = fastspec.nn.MonarchLinear(60, 50, nblocks=4).to(DEVICE)
    x = random_input((3, 60), torch.float32)
    torch.testing.assert_close(layer(x), x @ layer.dense_weight().T + layer.bias, rtol=1e-5, atol=1e-5)
    # a Monarch matrix projects onto itself (rectangular and padded sizes too) ...
    for shape, nblocks in (((64, 64), 8), ((64, 64), 4), ((60, 50), 4), ((32, 96), 4)):
        source = fastspec.nn.MonarchLinear(*shape, nblocks=nblocks).double()
        dense = torch.nn.Linear(*shape).double()
        with torch.no_grad():
            dense.weight.copy_(source.dense_weight())
        projected = fastspec.nn.MonarchLinear.from_dense(dense, nblocks)
        assert projected.projection_error < 1e-12
        torch.testing.assert_close(projected.bias, dense.bias)
    # ... and a dense one onto the nearest: any change of the projected factors moves away
    dense = torch.nn.Linear(64, 64).double()
    projected = fastspec.nn.MonarchLinear.from_dense(dense, 8)
    assert 0 < projected.projection_error < 1
    err = lambda m: float((m.dense_weight() - dense.weight).detach().norm() / dense.weight.detach().norm())  # noqa: E731
    assert abs(err(projected) - projected.projection_error) < 1e-12
    for _ in range(3):
        with torch.no_grad():
            projected.w1.add_(1e-3 * torch.randn_like(projected.w1))
        assert err(projected) > projected.projection_error


def test_replace_linear_on_an_mlp_trains():
    """replace_linear on a small MLP: the chosen layers become Monarch, the report counts the
    saving, and the model still trains (the loss falls) on the CPU."""
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                              torch.nn.Linear(64, 4))
    skipped = fastspec.nn.replace_linear(mlp, min_features=32, filter=lambda name, module: name != "2")
    assert skipped.replaced == ["0"]
    report = fastspec.nn.replace_linear(mlp, kind="monarch", min_features=32)
    assert report.replaced == ["2"] and isinstance(mlp[2], fastspec.nn.MonarchLinear)
    assert isinstance(mlp[4], torch.nn.Linear)  # 4 outputs < min_features
    assert report.dense_params == 64 * 64 + 64 and report.structured_params == sum(
        p.numel() for p in mlp[2].parameters())
    assert 0.4 < report.saving < 1 and "saved" in str(report) and 0 < report.projection_errors["2"] < 1
    x = torch.randn(256, 32)
    target = torch.sin(x[:, :4] * 2) + x[:, 4:8] ** 2
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.mse_loss(mlp(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_replace_linear_with_butterflies():
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    report = fastspec.nn.replace_linear(mlp, kind="butterfly", min_features=16, init="ortho")
    assert report.replaced == ["0", "2"] and isinstance(mlp[0], fastspec.nn.Butterfly)
    assert mlp(torch.randn(3, 16)).shape == (3, 16)
    with pytest.raises(ValueError, match="kind must be 'monarch' or 'butterfly'"):
        fastspec.nn.replace_linear(mlp, kind="lowrank")


def test_module_bad_inputs():
    with pytest.raises(ValueError, match="init must be one of"):
        fastspec.nn.Butterfly(8, 8, init="zeros")
    with pytest.raises(ValueError, match="needs complex=True"):
        fastspec.nn.Butterfly(8, 8, init="fft")
    with pytest.raises(ValueError, match="last dim of x must be 8"):
        fastspec.nn.Butterfly(8, 8)(torch.ones(2, 9))
    with pytest.raises(ValueError, match="last dim of x must be 12"):
        fastspec.nn.MonarchLinear(12, 8)(torch.ones(2, 9))
    with pytest.raises(ValueError, match=">= 1"):
        fastspec.nn.MonarchLinear(12, 8, nblocks=0)
