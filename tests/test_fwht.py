"""fastspec.fwht against its float64 reference, on every backend available here."""
import math
import scipy.linalg

import numpy as np
import pytest
import torch

import fastspec
from fastspec._backend import triton_interpreted
from fastspec.hadamard import decompose, hadamard_block, is_symmetric, supported_sizes
from fastspec.ops.fwht import CUDA_MAX_N, fwht_op, register_block
from fastspec.reference.fwht import fwht_reference

from conftest import AVAILABLE, DEVICE, assert_close_to_reference, backend_params, random_input

ALL_BACKENDS = backend_params()
SMALL_SIZES = [n for n in supported_sizes() if n <= 4096]
# Triton interprets (CPU) or compiles (GPU) a kernel per plan: powers of two and a sample of
# base blocks that takes every branch of the base-block plan (H_p folded into the block,
# p < 16 as a pass, the epilogue alone, with a factor folded, with a pass) and every kind
# of block (Paley II and I over prime and prime-power fields, Kronecker, Williamson; m = 1020
# in test_float32_within_2e7).
TRITON_SIZES = sorted({n for n in SMALL_SIZES if n & (n - 1) == 0}
                      | {12, 24, 44, 48, 92, 96, 160, 172, 252, 344, 688, 12 * 64, 20 * 128, 12 * 256,
                         44 * 32, 76 * 16, 92 * 32, 140 * 16, 172 * 16})
MODEL_WIDTHS = [11008, 13824, 18944, 8960, 4864, 2304, 9216, 27648]
"""MLP and hidden widths of Llama-2, Qwen2.5 and Gemma-2 that are not powers of two."""
LARGE_SIZES = [2**13, 2**14, 2**15, 20 * 2**9, 12 * 2**11, 28 * 2**10, 2**16, 40 * 2**12, 12 * 2**12,
               20 * 2**15, 2**20, *MODEL_WIDTHS]
HALF_AND_SINGLE = [torch.float32, torch.float16, torch.bfloat16]


def _by_backend(sizes, triton_sizes):
    """(backend, n) params: `sizes` for every backend, `triton_sizes` for Triton, the
    powers of two of `sizes` for the CUDA kernel."""
    params = []
    for param in ALL_BACKENDS:
        backend = param.values[0]
        chosen = {"triton": triton_sizes, "cuda": [n for n in sizes if n & (n - 1) == 0]}.get(backend, sizes)
        params += [pytest.param(backend, n, marks=param.marks, id=f"{backend}-{n}") for n in chosen]
    return params


def _supports(backend, n, dtype=torch.float32):
    if backend == "cuda":
        return dtype != torch.float64 and n & (n - 1) == 0 and n <= CUDA_MAX_N
    return True


def _rows(n):
    return max(1, min(9, 2**14 // n))  # odd row counts exercise partial chunks


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("backend,n", _by_backend(SMALL_SIZES, TRITON_SIZES))
def test_float64_matches_reference(backend, n):
    if not _supports(backend, n, torch.float64):
        pytest.skip(f"{backend} does not take float64")
    x = random_input((_rows(n), n), torch.float64)
    for scale in (1 / 3, 1e-70, 3e75):  # none of them a float32 (kernel arguments are)
        out = fastspec.fwht(x, scale, backend=backend)
        assert out.dtype == torch.float64 and out.shape == x.shape
        torch.testing.assert_close(out.cpu() / scale, fwht_reference(x.cpu(), 1.0), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend,n", _by_backend(SMALL_SIZES, TRITON_SIZES))
@pytest.mark.parametrize("dtype", HALF_AND_SINGLE, ids=str)
def test_dtypes_match_reference(backend, dtype, n):
    if not _supports(backend, n, dtype):
        pytest.skip(f"{backend} does not take n={n}")
    x = random_input((_rows(n), n), dtype)
    scale = 1 / math.sqrt(n)
    out = fastspec.fwht(x, scale, backend=backend)
    assert out.dtype == dtype and out.shape == x.shape and out.device == x.device
    assert_close_to_reference(out, fwht_reference(x.cpu(), scale))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype,n", [  # bfloat16 above 2^19 only with -m slow: minutes on the interpreter
    pytest.param(dtype, n, marks=[pytest.mark.slow] if dtype == torch.bfloat16 and n > 2**19 else [], id=f"{n}-{dtype}")
    for n in LARGE_SIZES for dtype in (torch.float32, torch.bfloat16)])
def test_large_sizes(backend, dtype, n):
    if not _supports(backend, n, dtype):
        pytest.skip(f"{backend} does not take n={n}")
    x = random_input((2, n), dtype)
    out = fastspec.fwht(x, 0.125, backend=backend)
    assert_close_to_reference(out, fwht_reference(x.cpu(), 0.125))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("n", [1, 2, 16, 12, 40, 256, 28 * 64, 4096, 2**16, 44 * 4, 172, 92 * 8])
def test_inverse_is_the_transpose(backend, n):
    """H_n Hᵀ_n = n·I: fwht(fwht(x), 1/n, transpose=True) = x; for a symmetric H_n
    (powers of two, Paley II) transpose changes nothing, so fwht is its own inverse."""
    if not _supports(backend, n):
        pytest.skip(f"{backend} does not take n={n}")
    x = random_input((3, n), torch.float32)
    twice = fastspec.fwht(fastspec.fwht(x, backend=backend), 1.0 / n, transpose=True, backend=backend)
    torch.testing.assert_close(twice, x, rtol=1e-5, atol=1e-5)
    if is_symmetric(decompose(n)[0]):
        torch.testing.assert_close(fastspec.fwht(fastspec.fwht(x, backend=backend), 1.0 / n, backend=backend), x,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,n", _by_backend([256, 4096, 2**15, 2**16, 12 * 64, 44 * 64, 172 * 64, 1020 * 4,
                                                    108 * 256, 924 * 128, 752 * 16],
                                                   [256, 2**15, 2**16, 44 * 64, 172 * 64, 1020 * 4, 108 * 256]))
def test_float32_within_2e7(backend, n):
    """The README's promise: float32 results within 2e-7 relative of the float64 reference
    (about twice the error of rounding the exact result once; a two-part TF32 split, or
    plain float32 sums over a block of 1020, would be 2–5e-7)."""
    if not _supports(backend, n):
        pytest.skip(f"{backend} does not take n={n}")
    x = random_input((max(2, 2**16 // n), n), torch.float32)
    ref = fwht_reference(x.cpu(), n**-0.5)
    out = fastspec.fwht(x, n**-0.5, backend=backend).cpu().double()
    assert (out - ref).norm() / ref.norm() <= 2e-7


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_any_shape_and_strides(backend):
    base = random_input((4, 6, 128), torch.float32)
    views = {
        "3-d": base,
        "transposed": base.transpose(0, 1),
        "sliced": base[:, ::2],
        "last-dim strided": random_input((3, 256), torch.float32)[:, ::2],
        "stride-0 rows": random_input((1, 128), torch.float32).expand(5, 128),
        "1-d": base[0, 0],
        # contiguous but not 16-byte aligned: element-wise loads on the GPU
        "storage offset": random_input((3 * 128 + 1,), torch.float32)[1:].view(3, 128),
        "storage offset, long rows": random_input((2 * 4096 + 1,), torch.float16)[1:].view(2, 4096),
    }
    for name, x in views.items():
        out = fastspec.fwht(x, 0.5, backend=backend)
        assert out.shape == x.shape and out.is_contiguous(), name
        assert_close_to_reference(out, fwht_reference(x.cpu(), 0.5))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape", [(0, 64), (3, 0, 64), (0, 2**16)])
def test_empty_batch(backend, shape):
    x = torch.empty(shape, device=DEVICE)
    if not _supports(backend, shape[-1]):  # the length is checked whatever the batch
        with pytest.raises(ValueError, match=f"got n={shape[-1]}"):
            fastspec.fwht(x, backend=backend)
        return
    out = fastspec.fwht(x, backend=backend)
    assert out.shape == shape and out.numel() == 0


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", HALF_AND_SINGLE, ids=str)
@pytest.mark.parametrize("n", [16, 1024, 12 * 16])
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy under the interpreter
def test_nan_and_inf_propagate(backend, dtype, n):
    if not _supports(backend, n, dtype):
        pytest.skip(f"{backend} does not take n={n}")
    x = random_input((3, n), dtype)
    x[0, 5] = float("nan")
    x[1, 3] = float("inf")
    out = fastspec.fwht(x, backend=backend).float().cpu()
    assert out[0].isnan().all()
    assert out[1].isinf().all()  # one infinite input: every output is ±inf, none NaN
    expect_sign = torch.from_numpy(fastspec.hadamard_matrix(n)[3].numpy())
    assert torch.equal(out[1].sign(), expect_sign.float())
    assert out[2].isfinite().all()


# --------------------------------------------------------------------------- autograd


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("n", [8, 12 * 8, 1024, 2**16, 44 * 4, 172 * 64])
def test_grad_matches_reference(backend, n):
    """Paley I (44) and Williamson (172) blocks are not symmetric: the gradient is the
    transposed transform."""
    if not _supports(backend, n):
        pytest.skip(f"{backend} does not take n={n}")
    x = random_input((3, n), torch.float32).requires_grad_()
    weight = random_input((3, n), torch.float32)
    (fastspec.fwht(x, 0.5, backend=backend) * weight).sum().backward()
    x64 = x.detach().cpu().double().requires_grad_()
    (fwht_reference(x64, 0.5) * weight.cpu().double()).sum().backward()
    assert_close_to_reference(x.grad, x64.grad)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_backward_through_sum(backend):
    """y.sum().backward() sends an expanded (stride-0) gradient into the backward."""
    x = random_input((4, 256), torch.float32).requires_grad_()
    fastspec.fwht(x, 0.25, backend=backend).sum().backward()
    expect = fwht_reference(torch.ones(4, 256, dtype=torch.float64), 0.25)
    assert_close_to_reference(x.grad, expect)


@pytest.mark.parametrize("backend", backend_params("torch", "triton", "cpu"))
@pytest.mark.parametrize("n", [4, 12, 64])
def test_gradcheck_and_double_backward(backend, n):
    if backend == "triton" and n == 64 and triton_interpreted():
        pytest.skip("a launch per probe is slow on the interpreter; n = 4 and 12 cover the kernel")
    x = random_input((2, n), torch.float64).requires_grad_()
    fn = lambda t: fastspec.fwht(t, 0.5, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


# --------------------------------------------------------------------------- blocks, transpose

ASYMMETRIC = "test.rows-rotated-12"


def _asymmetric_block() -> torch.Tensor:
    """H_12 with its rows rotated: still Hadamard, no longer symmetric."""
    h = hadamard_block(12)[torch.roll(torch.arange(12), 1)]
    register_block(ASYMMETRIC, h)
    return h


@pytest.mark.parametrize("transpose", [False, True])
def test_reference_with_a_block_is_the_dense_product(transpose):
    h = _asymmetric_block()
    assert not torch.equal(h, h.T)
    x = random_input((3, 12 * 16), torch.float64, device="cpu")
    dense = torch.kron(h, torch.from_numpy(scipy.linalg.hadamard(16).astype(np.float64)))
    expect = x @ (dense.T if transpose else dense) * 0.5
    torch.testing.assert_close(fwht_reference(x, 0.5, transpose=transpose, block=h), expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", backend_params("torch", "triton", "cpu"))
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("n", [12, 12 * 64, 12 * 2**11])
def test_named_block_and_transpose(backend, transpose, n):
    h = _asymmetric_block()
    x = random_input((3, n), torch.float32)
    out = fwht_op(x, 0.5, transpose, ASYMMETRIC, backend)
    assert_close_to_reference(out, fwht_reference(x.cpu(), 0.5, transpose=transpose, block=h))


@pytest.mark.parametrize("backend", backend_params("torch", "triton", "cpu"))
def test_asymmetric_gradient_is_the_transposed_transform(backend):
    h = _asymmetric_block()
    x = random_input((3, 12 * 8), torch.float64).requires_grad_()
    fn = lambda t: fwht_op(t, 0.5, False, ASYMMETRIC, backend)  # noqa: E731
    weight = random_input((3, 12 * 8), torch.float64)
    (fn(x) * weight).sum().backward()
    torch.testing.assert_close(x.grad.cpu(), fwht_reference(weight.cpu(), 0.5, transpose=True, block=h))
    small = x.detach()[:1, :12].clone().requires_grad_()  # the interpreter runs a launch per probe
    assert torch.autograd.gradcheck(fn, (small,))
    assert torch.autograd.gradgradcheck(fn, (small,))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_transpose_of_a_symmetric_matrix_changes_nothing(backend):
    x = random_input((3, 256), torch.float32)
    torch.testing.assert_close(fastspec.fwht(x, transpose=True, backend=backend), fastspec.fwht(x, backend=backend))


def test_register_block_checks_its_matrix():
    h = _asymmetric_block()
    with pytest.raises(ValueError, match="not a Hadamard matrix"):
        register_block("test.bad", h + 0.5)
    with pytest.raises(ValueError, match="not a Hadamard matrix"):
        register_block("test.bad", torch.ones(4, 4))
    with pytest.raises(ValueError, match="square matrix"):
        register_block("test.bad", h[:6])
    with pytest.raises(ValueError, match="already registered with another matrix"):
        register_block(ASYMMETRIC, hadamard_block(12))
    with pytest.raises(ValueError, match="unknown block 'test.missing'"):
        fwht_op(torch.ones(2, 12), 1.0, False, "test.missing", "torch")
    with pytest.raises(ValueError, match="has order 12: n must be 12·2\\^k"):
        fwht_op(torch.ones(2, 36), 1.0, False, ASYMMETRIC, "torch")
    with pytest.raises(TypeError, match="transpose must be a bool"):
        fastspec.fwht(torch.ones(2, 16), transpose=1)


# --------------------------------------------------------------------------- registration


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype,n", [(torch.float32, 64), (torch.bfloat16, 256), (torch.float16, 12 * 4)], ids=str)
def test_opcheck(backend, dtype, n):
    if not _supports(backend, n, dtype):
        pytest.skip(f"{backend} does not take n={n}")
    x = random_input((3, n), dtype).requires_grad_(dtype == torch.float32)
    torch.library.opcheck(torch.ops.fastspec.fwht.default, (x, 0.5, False, "", backend))


@pytest.mark.parametrize("backend", backend_params("torch", "triton", "cpu"))
def test_opcheck_named_block_transposed(backend):
    _asymmetric_block()
    x = random_input((3, 12 * 4), torch.float32).requires_grad_()
    torch.library.opcheck(torch.ops.fastspec.fwht.default, (x, 0.5, True, ASYMMETRIC, backend))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_compile_fullgraph(backend):
    torch._dynamo.reset()

    def layer(x):
        return torch.relu(fastspec.fwht(x * 2.0, 0.125, backend=backend)) + 1.0

    compiled = torch.compile(layer, fullgraph=True)
    x = random_input((4, 64), torch.float32)
    torch.testing.assert_close(compiled(x), layer(x))


def test_compile_fullgraph_auto_backend():
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: fastspec.fwht(x, 0.5), fullgraph=True)
    x = random_input((4, 32), torch.float32)
    torch.testing.assert_close(compiled(x), fastspec.fwht(x, 0.5))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("n,nearest", [(3, "2, 4"), (6, "4, 8"), (18, "16, 20"), (45, "44, 48"), (236, "232, 240"),
                                       (2**20 + 2**19, "1048576")])
def test_unsupported_length_names_nearest(n, nearest):
    with pytest.raises(ValueError, match=f"unsupported length n={n}.*nearest supported: {nearest}"):
        fastspec.fwht(torch.ones(2, n))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.complex64])
def test_non_float_dtype_is_type_error(dtype):
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        fastspec.fwht(torch.ones(2, 16, dtype=dtype))


def test_bad_arguments():
    with pytest.raises(ValueError, match="0-dim"):
        fastspec.fwht(torch.tensor(1.0))
    with pytest.raises(TypeError, match="torch.Tensor"):
        fastspec.fwht(np.ones(16, dtype=np.float32))
    with pytest.raises(TypeError, match="scale must be a Python float"):
        fastspec.fwht(torch.ones(16), "0.5")
    with pytest.raises(TypeError, match="scale must be a Python float"):
        fastspec.fwht(torch.ones(16), True)
    with pytest.raises(ValueError, match="backend must be one of"):
        fastspec.fwht(torch.ones(16), backend="numpy")


@pytest.mark.skipif("cuda" in fastspec.backends() and fastspec.backends()["cuda"].available, reason="cuda is available")
def test_unavailable_backend_raises_never_falls_back():
    with pytest.raises(RuntimeError, match="backend 'cuda' is not usable"):
        fastspec.fwht(torch.ones(2, 16), backend="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params("cuda"))
def test_cuda_backend_rejects_what_it_cannot_do(backend):
    with pytest.raises(ValueError, match="cuda backend takes n = 2\\^k"):
        fastspec.fwht(torch.ones(2, 12, device="cuda"), backend=backend)
    with pytest.raises(ValueError, match="float64"):
        fastspec.fwht(torch.ones(2, 16, device="cuda", dtype=torch.float64), backend=backend)
    with pytest.raises(RuntimeError, match="got a cpu tensor"):
        fastspec.fwht(torch.ones(2, 16), backend=backend)


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    if DEVICE.type == "cuda":
        pytest.skip("a GPU is present")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="backend 'triton' is not usable.*TRITON_INTERPRET=1"):
        fastspec.fwht(torch.ones(2, 16), backend="triton")


# --------------------------------------------------------------------------- backend choice


def test_backends_report():
    info = fastspec.backends()
    assert set(info) == {"torch", "triton", "cuda", "cpu"}
    assert info["torch"].available
    assert all(isinstance(i.reason, str) and i.reason for i in info.values())


def test_auto_choice_and_env_override(monkeypatch):
    from fastspec.ops.fwht import choose_backend

    cpu = torch.device("cpu")
    assert choose_backend("auto", cpu, torch.float32, 64, 1) == ("cpu" if "cpu" in AVAILABLE else "torch")
    monkeypatch.setenv("FASTSPEC_BACKEND", "torch")
    assert choose_backend("auto", cpu, torch.float32, 64, 1) == "torch"
    if "triton" in {k for k, v in fastspec.backends().items() if v.available}:
        monkeypatch.setenv("FASTSPEC_BACKEND", "triton")
        assert choose_backend("auto", DEVICE, torch.float32, 64, 1) == "triton"
        assert choose_backend("torch", DEVICE, torch.float32, 64, 1) == "torch"  # explicit wins
    monkeypatch.setenv("FASTSPEC_BACKEND", "fortran")
    with pytest.raises(ValueError, match="FASTSPEC_BACKEND must be one of"):
        choose_backend("auto", cpu, torch.float32, 64, 1)


def test_auto_table_on_cuda(monkeypatch):
    """The AUTO_CUDA table as measured on the H200: the CUDA kernel for 2^k <= 2^15, Triton
    for every other length, torch for float64 (checked as if every backend were here)."""
    from fastspec.ops import fwht as ops

    monkeypatch.setattr(ops._backend, "device_ok", lambda name, device: None)
    dev = torch.device("cuda")
    assert ops._auto_choice(dev, torch.float16, 4096, 1) == "cuda"
    assert ops._auto_choice(dev, torch.float32, 2**15, 1) == "cuda"
    assert ops._auto_choice(dev, torch.bfloat16, 12 * 64, 12) == "triton"
    assert ops._auto_choice(dev, torch.float16, 2**16, 1) == "triton"
    assert ops._auto_choice(dev, torch.float64, 4096, 1) == "torch"


def test_auto_table_on_cpu(monkeypatch):
    """CPU tensors take the C++ kernel for every n and dtype where it is built and the block
    order is at most 76, torch otherwise (and for base blocks larger than the table lists)."""
    from fastspec.ops import fwht as ops

    cpu = torch.device("cpu")
    monkeypatch.setattr(ops._backend, "device_ok", lambda name, device: None)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        assert ops._auto_choice(cpu, dtype, 4096, 1) == "cpu"
    assert ops._auto_choice(cpu, torch.float32, 12 * 2**16, 12) == "cpu"
    assert ops._auto_choice(cpu, torch.float32, 2 * 2048, 2048) == "torch"
    monkeypatch.setattr(ops._backend, "device_ok", lambda name, device: "not built" if name == "cpu" else None)
    assert ops._auto_choice(cpu, torch.float32, 4096, 1) == "torch"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_on_cuda_uses_a_gpu_backend():
    from fastspec.ops.fwht import choose_backend

    dev = torch.device("cuda")
    assert choose_backend("auto", dev, torch.float16, 4096, 1) in ("triton", "cuda")
    assert choose_backend("auto", dev, torch.float64, 4096, 1) == "torch"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", HALF_AND_SINGLE, ids=str)
def test_cuda_and_triton_agree_on_gpu(dtype):
    """Every backend on the GPU against the reference at Dao's benchmark sizes."""
    for n in (256, 4096, 32768):
        x = random_input((64, n), dtype)
        ref = fwht_reference(x.cpu(), 1 / math.sqrt(n))
        for backend in sorted(b for b in ("triton", "cuda") if fastspec.backends()[b].available):
            assert_close_to_reference(fastspec.fwht(x, 1 / math.sqrt(n), backend=backend), ref)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", HALF_AND_SINGLE, ids=str)
def test_triton_model_widths_on_gpu(dtype):
    """Every model width with many rows (more programs than SMs), float32 within 2e-7."""
    for n in MODEL_WIDTHS + [1020 * 64, 12 * 2**16]:
        x = random_input((min(300, 2**23 // n), n), dtype)
        ref = fwht_reference(x.cpu(), 1 / math.sqrt(n))
        out = fastspec.fwht(x, 1 / math.sqrt(n), backend="triton")
        assert_close_to_reference(out, ref)
        if dtype == torch.float32:
            assert (out.cpu().double() - ref).norm() / ref.norm() <= 2e-7, n


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params("cuda"))
@pytest.mark.parametrize("dtype", HALF_AND_SINGLE, ids=str)
@pytest.mark.parametrize("n, rows", [(2048, 5000), (32768, 700)])
def test_cuda_persistent_grid_many_rows(backend, dtype, n, rows):
    """Rows of 2^11 and more run on a persistent grid (the blocks resident at once, at most
    a few per SM) that prefetches each block's next row: more rows than blocks, so every
    block transforms several, in place of a fresh block per row."""
    x = random_input((rows, n), dtype)
    assert_close_to_reference(fastspec.fwht(x, 0.5, backend=backend), fwht_reference(x.cpu(), 0.5))


# --------------------------------------------------------------------------- nn module


def test_hadamard_transform_module_is_orthonormal_and_invertible():
    layer = fastspec.nn.HadamardTransform(256, random_signs=True, seed=0).to(DEVICE)
    x = random_input((5, 256), torch.float32)
    y = layer(x)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.inverse(y), x, rtol=1e-5, atol=1e-5)
    again = fastspec.nn.HadamardTransform(256, random_signs=True, seed=0)
    assert torch.equal(again.signs, layer.signs.cpu())
    assert set(layer.signs.unique().tolist()) == {-1.0, 1.0}
    assert "signs" in layer.state_dict()


def test_quarot_rotation_of_a_model_width():
    """QuaRot's online rotation of Llama-2-7B's MLP activations (width 11008 = 172·64, a
    non-symmetric Williamson block): orthonormal, invertible, and W x = (W R)(Rᵀ x)."""
    n = 11008
    rotate = fastspec.nn.HadamardTransform(n, random_signs=True, seed=0).to(DEVICE)
    x = random_input((2, n), torch.float32)
    y = rotate(x)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rotate.inverse(y), x, rtol=1e-5, atol=1e-4)
    weight = random_input((3, n), torch.float32)  # a down-projection's rows
    torch.testing.assert_close(rotate(weight) @ y.T, weight @ x.T, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("n,scale", [(12 * 16, None), (64, 1.0), (1024, 0.5), (44 * 8, None), (172, 2.0)])
def test_hadamard_transform_module_matches_matrix(n, scale):
    layer = fastspec.nn.HadamardTransform(n, scale=scale)
    x = random_input((3, n), torch.float64)
    expect = scale if scale is not None else 1 / math.sqrt(n)
    torch.testing.assert_close(layer(x).cpu(), fwht_reference(x.cpu(), expect))
    torch.testing.assert_close(layer.inverse(layer(x)), x)


def test_hadamard_transform_module_bad_input():
    with pytest.raises(ValueError, match="unsupported length"):
        fastspec.nn.HadamardTransform(236)
    with pytest.raises(ValueError, match="last dim of x must be 64"):
        fastspec.nn.HadamardTransform(64)(torch.ones(2, 32))


# --------------------------------------------------------------------------- properties

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    n=st.sampled_from([n for n in SMALL_SIZES if n <= 1024]),
    batch=st.lists(st.integers(0, 3), min_size=0, max_size=3),
    scale=st.floats(-4.0, 4.0, allow_nan=False, allow_infinity=False),
    transpose=st.booleans(),
)
def test_property_any_batch_and_scale(n, batch, scale, transpose):
    """Linear in x and scale, for any batch shape (empty included) and layout."""
    x = random_input((*batch, n), torch.float64)
    if transpose and len(batch) >= 2:
        x = x.transpose(0, 1)
    out = fastspec.fwht(x, scale, backend="torch")
    assert out.shape == x.shape
    torch.testing.assert_close(out.cpu(), fwht_reference(x.cpu(), scale), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_eager_calls_skip_the_op_dispatch_with_the_same_result(monkeypatch, backend):
    """Without autograd to record, an eager fwht runs the op's body directly; with it, it goes
    through fastspec::fwht. Both give the registered op's result bit for bit."""
    from fastspec.ops import fwht as ops
    x = random_input((3, 12 * 16), torch.float32)
    through_op = torch.ops.fastspec.fwht(x, 0.5, True, "", backend)
    calls = []
    monkeypatch.setattr(ops, "fwht_op", lambda *args: calls.append(args) or through_op)
    assert torch.equal(fastspec.fwht(x, 0.5, transpose=True, backend=backend), through_op) and not calls
    assert torch.equal(fastspec.fwht(x.requires_grad_(), 0.5, transpose=True, backend=backend), through_op)
    assert len(calls) == 1
