"""fastspec.compat.fast_hadamard_transform against fast-hadamard-transform 1.1.0's definition
(fastspec.reference.fwht.fast_hadamard_transform_reference), and against the peer itself
where it imports (it needs CUDA)."""
import inspect
import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

import fastspec
from fastspec.compat import fast_hadamard_transform as fht
from fastspec.hadamard import hadamard_block
from fastspec.reference.fwht import fast_hadamard_transform_reference, fwht_reference

from conftest import DEVICE, assert_close_to_reference, backend_params, random_input

FUNCTIONS = {1: fht.hadamard_transform, 12: fht.hadamard_transform_12N, 20: fht.hadamard_transform_20N,
             28: fht.hadamard_transform_28N, 40: fht.hadamard_transform_40N}
ORDERS = list(FUNCTIONS)
PEER_MAX_DIM = {1: 32768, 12: 12 * 1024, 20: 20 * 1024, 28: 28 * 1024, 40: 40 * 1024}
ALL_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
TORCH_AND_TRITON = backend_params("torch", "triton")


def _base(m):
    return None if m == 1 else fht.base_matrix(m)


def _reference(x, scale, m):
    return fast_hadamard_transform_reference(x.cpu(), scale, _base(m))


def _peer_length(dim, m):
    """The padded length as the peer's C++ computes it: pad to a multiple of 8 or 4m, then
    log_N = ceil(log2(dim / m)), length m·2^log_N."""
    multiple = 8 if m == 1 else 4 * m
    padded = dim if dim % multiple == 0 else dim + multiple - dim % multiple
    return m * 2 ** math.ceil(math.log2(padded // m))


def _grid(m):
    """Dims 1..64, odd ones, and 2^k and m·2^k with their neighbours (for the plain transform
    12·2^k ± 1 and 40·2^k too), up to the peer's largest dim for this function."""
    dims = set(range(1, 65)) | {137, 1000, 4095}
    for k in range(16):
        dims |= {2**k - 1, 2**k, 2**k + 1, m * 2**k - 1, m * 2**k, m * 2**k + 1}
        if m == 1:
            dims |= {12 * 2**k - 1, 12 * 2**k + 1, 40 * 2**k}
    return sorted(d for d in dims if 1 <= d <= PEER_MAX_DIM[m])


def _rows(dim):
    return max(1, min(5, 2**13 // dim))


# --------------------------------------------------------------------------- the definition


def test_the_peers_names_and_signatures():
    """fast_hadamard_transform(_interface).hadamard_transform{,_12N,_20N,_28N,_40N}(x, scale=1.0)."""
    assert fht.__all__ == ["hadamard_transform"] + [f"hadamard_transform_{m}N" for m in (12, 20, 28, 40)]
    for name in fht.__all__:
        params = inspect.signature(getattr(fht, name)).parameters
        assert [(p.name, p.kind, p.default) for p in params.values()] == [
            ("x", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
            ("scale", inspect.Parameter.POSITIONAL_OR_KEYWORD, 1.0),
            ("backend", inspect.Parameter.KEYWORD_ONLY, "auto"),  # ours, keyword-only
        ]


@pytest.mark.parametrize("m", [12, 20, 28, 40])
def test_base_matrices_are_hadamard(m):
    b = fht.base_matrix(m)
    assert b.shape == (m, m) and set(b.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(b @ b.T, m * torch.eye(m, dtype=torch.float64))
    assert torch.equal(b, b.T) == (m == 12)  # the peer's backward assumes symmetry: only 12 is
    assert not torch.equal(b, hadamard_block(m))  # not fastspec's own: fastspec.fwht differs at m·2^k


@pytest.mark.parametrize("m", ORDERS)
def test_reference_is_the_padded_dense_product(m):
    """pad to the peer's length, (B ⊗ H) v per row (B's index most significant), cut back."""
    for dim in [d for d in _grid(m) if d <= 2048][::3]:
        x = random_input((2, dim), torch.float64, device="cpu")
        n = _peer_length(dim, m)
        h = torch.from_numpy(scipy.linalg.hadamard(n // m).astype(np.float64))
        k = h if m == 1 else torch.kron(fht.base_matrix(m), h)
        expect = (F.pad(x, (0, n - dim)) @ k.T)[:, :dim] * 0.5
        torch.testing.assert_close(_reference(x, 0.5, m), expect, rtol=1e-12, atol=1e-12, msg=f"dim={dim}")


def test_reference_plain_is_the_peers_own():
    """The peer's tests check hadamard_transform against hadamard_transform_ref: pad to the
    next power of two only (not to 8 first); Sylvester's nesting makes the two agree."""
    for dim in [1, 2, 3, 5, 7, 9, 137, 1000]:
        x = random_input((3, dim), torch.float64, device="cpu")
        n = 2 ** math.ceil(math.log2(dim))
        h = torch.from_numpy(scipy.linalg.hadamard(n).astype(np.float64))
        expect = F.linear(F.pad(x, (0, n - dim)), h)[:, :dim] * 0.25
        torch.testing.assert_close(_reference(x, 0.25, 1), expect, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("m, dim", [(m, d) for m in ORDERS for d in _grid(m)])
def test_forward_matches_reference(m, dim):
    scale = 1 / math.sqrt(dim)
    inputs = [random_input((_rows(dim), dim), dtype) for dtype in ALL_DTYPES]
    refs = _reference(torch.stack([x.cpu().double() for x in inputs]), scale, m)  # one call for all
    for x, ref in zip(inputs, refs):
        out = FUNCTIONS[m](x, scale, backend="torch")
        assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
        assert_close_to_reference(out, ref)


TRITON_DIMS = {1: [5, 137, 4096], 12: [12, 90, 12 * 64], 20: [150, 20 * 16, 1000],
               28: [200, 28 * 8, 28 * 64 + 1], 40: [300, 40 * 4, 40 * 128]}


@pytest.mark.parametrize("backend", TORCH_AND_TRITON)
@pytest.mark.parametrize("m, dim", [(m, d) for m in ORDERS for d in TRITON_DIMS[m]])
def test_forward_on_every_backend(backend, m, dim):
    """A sample on Triton (the interpreter is slow): padded, exact, and the 8m lengths."""
    for dtype in [torch.float32, torch.float16, torch.bfloat16]:
        x = random_input((3, dim), dtype)
        assert_close_to_reference(FUNCTIONS[m](x, 0.5, backend=backend), _reference(x, 0.5, m))


@pytest.mark.parametrize("m", ORDERS)
def test_exact_lengths_are_not_padded(m):
    """dim = m·2^k (k >= 2; 2^k >= 8 for the plain one) is the unpadded transform."""
    for dim in [m * 4, m * 8, m * 256] if m > 1 else [8, 64, 4096]:
        x = random_input((3, dim), torch.float32)
        expect = fwht_reference(x.cpu(), 0.5, transpose=True, block=_base(m))
        assert_close_to_reference(FUNCTIONS[m](x, 0.5), expect)
    if m > 1:  # dims m and 2m pad to 4m: not B_m x
        for dim in (m, 2 * m):
            x = random_input((3, dim), torch.float64)
            unpadded = fwht_reference(x.cpu(), 1.0, transpose=True, block=fht.base_matrix(m))
            assert not torch.allclose(FUNCTIONS[m](x).cpu(), unpadded)


def test_fwht_is_the_peers_hadamard_transform_at_powers_of_two():
    """As the README says (dims 1, 2, 4 are padded to 8 here: Sylvester's nesting)."""
    for k in range(13):
        x = random_input((3, 2**k), torch.float32)
        torch.testing.assert_close(fastspec.fwht(x, 0.5), fht.hadamard_transform(x, 0.5))


@pytest.mark.parametrize("m", ORDERS)
def test_padded_dims_are_the_cut_transform_of_zero_padded_rows(m):
    for dim in (1, 3 * m + 1, 5 * m + 3, 137, 999):
        n = _peer_length(dim, m)
        x = random_input((3, dim), torch.float32)
        torch.testing.assert_close(FUNCTIONS[m](x, 0.5), FUNCTIONS[m](F.pad(x, (0, n - dim)), 0.5)[:, :dim])


@pytest.mark.parametrize("m", [12, 20, 28, 40])
def test_length_8m_is_the_defined_transform(m):
    """The peer launches no kernel at padded length 8m (dims 4m+1..8m) and returns
    uninitialised memory; here it is the transform its padding rule defines."""
    for dim in (4 * m + 1, 6 * m, 8 * m):
        x = random_input((3, dim), torch.float32)
        assert _peer_length(dim, m) == 8 * m
        assert_close_to_reference(FUNCTIONS[m](x, 0.5), _reference(x, 0.5, m))


# --------------------------------------------------------------------------- autograd


@pytest.mark.parametrize("backend", TORCH_AND_TRITON)
@pytest.mark.parametrize("m", ORDERS)
def test_grad_matches_reference(backend, m):
    dim = 3 * m + 5  # padded
    x = random_input((3, dim), torch.float32).requires_grad_()
    weight = random_input((3, dim), torch.float32)
    (FUNCTIONS[m](x, 0.5, backend=backend) * weight).sum().backward()
    x64 = x.detach().cpu().double().requires_grad_()
    (_reference(x64, 0.5, m) * weight.cpu().double()).sum().backward()
    assert_close_to_reference(x.grad, x64.grad)


@pytest.mark.parametrize("backend", TORCH_AND_TRITON)
@pytest.mark.parametrize("m", ORDERS)
def test_backward_through_sum(backend, m):
    """y.sum().backward() sends an expanded (stride-0) gradient in."""
    dim = 8 * m if m > 1 else 100
    x = random_input((4, dim), torch.float32).requires_grad_()
    FUNCTIONS[m](x, 0.25, backend=backend).sum().backward()
    ones = torch.ones(4, dim, dtype=torch.float64, requires_grad=True)
    _reference(ones, 0.25, m).sum().backward()
    assert_close_to_reference(x.grad, ones.grad)


@pytest.mark.parametrize("m", ORDERS)
def test_gradient_is_exact_where_the_peers_is_not(m):
    """The peer's backward is its forward applied to the gradient: right for symmetric
    matrices (plain, 12), wrong for 20, 28, 40. Ours is the exact gradient."""
    dim = 4 * m if m > 1 else 64
    x = random_input((2, dim), torch.float64).requires_grad_()
    weight = random_input((2, dim), torch.float64)
    (FUNCTIONS[m](x, 0.5) * weight).sum().backward()
    exact = torch.func.vjp(lambda t: _reference(t, 0.5, m), x.detach().cpu())[1](weight.cpu())[0]
    torch.testing.assert_close(x.grad.cpu(), exact)
    peers = FUNCTIONS[m](weight, 0.5).cpu()
    assert torch.allclose(peers, exact) == (m in (1, 12))


@pytest.mark.parametrize("m", ORDERS)
def test_gradcheck_and_double_backward(m):
    x = random_input((1, m + 1), torch.float64).requires_grad_()  # padded
    fn = lambda t: FUNCTIONS[m](t, 0.5, backend="torch")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


# --------------------------------------------------------------------------- registration


@pytest.mark.parametrize("backend", TORCH_AND_TRITON)
def test_opcheck_with_a_peer_block(backend):
    x = random_input((3, 4 * 20), torch.float32).requires_grad_()
    torch.library.opcheck(torch.ops.fastspec.fwht.default, (x, 0.5, True, fht.block_name(20), backend))


def test_compile_fullgraph():
    torch._dynamo.reset()

    def layer(x):
        return torch.relu(fht.hadamard_transform_20N(x * 2.0, 0.125)) + fht.hadamard_transform(x)

    compiled = torch.compile(layer, fullgraph=True)
    x = random_input((4, 100), torch.float32)
    torch.testing.assert_close(compiled(x), layer(x))


# --------------------------------------------------------------------------- shapes, more than the peer


@pytest.mark.parametrize("m", ORDERS)
def test_any_shape_and_strides(m):
    fn = FUNCTIONS[m]
    base = random_input((4, 6, 137), torch.float32)
    views = {
        "3-d": base,
        "transposed": base.transpose(0, 1),
        "last-dim strided": random_input((3, 274), torch.float32)[:, ::2],
        "stride-0 rows": random_input((1, 137), torch.float32).expand(5, 137),
        "1-d": base[0, 0],
    }
    for name, x in views.items():
        out = fn(x, 0.5)
        assert out.shape == x.shape, name
        assert_close_to_reference(out, _reference(x, 0.5, m))
    assert fn(torch.empty(0, 3, 137, device=DEVICE)).shape == (0, 3, 137)


@pytest.mark.parametrize("m", ORDERS)
def test_beyond_the_peers_largest_dim(m):
    """The peer stops at dim 32768 (m·1024); here the padded length goes up to 2^20."""
    dim = PEER_MAX_DIM[m] + 1
    x = random_input((2, dim), torch.float32)
    assert_close_to_reference(FUNCTIONS[m](x, 0.5), _reference(x, 0.5, m))


def test_bad_arguments():
    with pytest.raises(TypeError, match="float16, bfloat16 or float32 \\(or float64\\), got torch.int64"):
        fht.hadamard_transform(torch.ones(2, 16, dtype=torch.int64))
    with pytest.raises(TypeError, match="hadamard_transform_12N: x must be a torch.Tensor, got ndarray"):
        fht.hadamard_transform_12N(np.ones((2, 48), dtype=np.float32))
    with pytest.raises(ValueError, match="at least one dimension.*0-dim"):
        fht.hadamard_transform(torch.tensor(1.0))
    with pytest.raises(ValueError, match="last dim of x must be at least 1, got 0"):
        fht.hadamard_transform_20N(torch.ones(2, 0))
    with pytest.raises(TypeError, match="scale must be a real number, got str"):
        fht.hadamard_transform(torch.ones(2, 16), "0.5")
    with pytest.raises(ValueError, match="dim=1048577 pads to 2097152; at most 1048576 here"):
        fht.hadamard_transform(torch.ones(1, 2**20 + 1))
    with pytest.raises(ValueError, match="hadamard_transform_40N: dim=655361 pads to 1310720.*dim <= 40960"):
        fht.hadamard_transform_40N(torch.ones(1, 40 * 2**14 + 1))
    with pytest.raises(ValueError, match="backend must be one of"):
        fht.hadamard_transform(torch.ones(16), backend="numpy")
    with pytest.raises(ValueError, match="base_matrix: m must be one of \\(12, 20, 28, 40\\), got 16"):
        fht.base_matrix(16)


@pytest.mark.cuda
@pytest.mark.skipif(not fastspec.backends()["cuda"].available, reason="fastspec._C not usable here")
def test_cuda_backend_takes_the_plain_transform_only():
    x = random_input((3, 100), torch.float16)
    assert_close_to_reference(fht.hadamard_transform(x, 0.5, backend="cuda"), _reference(x, 0.5, 1))
    with pytest.raises(ValueError, match="cuda backend takes n = 2\\^k"):
        fht.hadamard_transform_12N(x, backend="cuda")


# --------------------------------------------------------------------------- the peer itself


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the peer needs a CUDA GPU")
@pytest.mark.parametrize("m", ORDERS)
def test_against_the_peer(m):
    peer = pytest.importorskip("fast_hadamard_transform.fast_hadamard_transform_interface")
    name = "hadamard_transform" if m == 1 else f"hadamard_transform_{m}N"
    dims = [d for d in _grid(m) if m == 1 or _peer_length(d, m) != 8 * m]  # 8m: the peer's uninitialised output
    for dim in dims[::4]:
        for dtype in [torch.float32, torch.float16, torch.bfloat16]:
            x = random_input((3, dim), dtype, device="cuda").requires_grad_()
            weight = random_input((3, dim), dtype, device="cuda")
            x64 = x.detach().cpu().double().requires_grad_()
            ref = _reference(x64, 0.5, m)
            ref_grad = torch.autograd.grad(ref, x64, weight.cpu().double())[0]
            for fn in (FUNCTIONS[m], getattr(peer, name)):  # the reference is the peer's definition
                out = fn(x, 0.5)
                assert_close_to_reference(out, ref.detach())
                grad = torch.autograd.grad(out, x, weight)[0]
                if fn is FUNCTIONS[m] or m in (1, 12):  # the peer's backward is exact for symmetric matrices only
                    assert_close_to_reference(grad, ref_grad)
