"""fastspec.gaunt_tensor_product against the float64 dense contraction and the product on
the sphere, for every method and every backend available here (Triton under the interpreter)."""
import pytest
import torch

import fastspec
from fastspec.ops.gaunt import MAX_INPUT_DEGREE, choose_method, gaunt_op
from fastspec.reference.gaunt import evaluate, gaunt_reference
from fastspec.spherical import num_coefficients, wigner_D

from conftest import DEVICE, assert_close_to_reference, backend_params, random_input

BACKENDS = backend_params("torch", "triton")
TORCH_METHODS = ["dense", "grid", "fourier"]
HALF_AND_SINGLE = [torch.float32, torch.float16, torch.bfloat16]
FLOAT32_FLOOR = 1e-6
"""The family's float32 floor: the grid and Fourier methods sum ~(3L/2)·3L node values with
cancellation (the product is a sum of terms larger than the result), so float32 loses a few
bits more than one rounding; measured ≤ 3.3e-7 over 64×4 rows up to L = 12 (README, precision)."""
BFLOAT16_FLOOR = 4e-3
"""The family's bfloat16 floor: the Triton kernel's dots run on TF32 (``dot_precision``), whose
three roundings (tables, node product, projection; 2^-11 each) can carry the float32 result
across a bfloat16 rounding boundary the exact value does not cross, one bfloat16 ulp (up to
2^-8) in an element. Rows of few elements show it: at degrees (0, 0, 0), rows of 3, the error
above 2× the reference's own rounding reached 2.5e-3 over 500 seeds (≤ 1.2e-4 at every other
Triton test degree; float16, on IEEE dots, never above it)."""
DEGREES = [(0, 0, 0), (1, 1, 2), (2, 1, 1), (1, 3, 4), (3, 2, 5), (4, 4, 8), (5, 3, 2), (8, 8, 8)]
"""(L1, L2, lmax_out) for the torch backend: trivial, lmax_out below and at L1+L2, L1 ≠ L2, up to 8."""
TRITON_DEGREES = [(0, 0, 0), (1, 1, 2), (1, 3, 4), (3, 2, 3), (4, 4, 8)]


def _methods(backend):
    return ["grid"] if backend == "triton" else TORCH_METHODS


def _params(degrees_torch, degrees_triton):
    """(backend, method, degrees) params: every torch method on degrees_torch, Triton's grid
    on degrees_triton."""
    out = []
    for param in BACKENDS:
        backend = param.values[0]
        for method in _methods(backend):
            for degrees in (degrees_triton if backend == "triton" else degrees_torch):
                out.append(pytest.param(backend, method, degrees, marks=param.marks, id=f"{backend}-{method}-{degrees}"))
    return out


def _inputs(l1, l2, dtype, lead=(3, 4), requires_grad=False):
    x1 = random_input((*lead, num_coefficients(l1)), dtype).requires_grad_(requires_grad)
    x2 = random_input((*lead, num_coefficients(l2)), dtype).requires_grad_(requires_grad)
    return x1, x2


def _check(out, ref):
    floors = {torch.float32: FLOAT32_FLOOR, torch.bfloat16: BFLOAT16_FLOOR}
    assert_close_to_reference(out, ref, floor=floors.get(out.dtype))


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("backend,method,degrees", _params(DEGREES, [(1, 2, 3), (3, 3, 6)]))
def test_product_on_the_sphere(backend, method, degrees):
    """With lmax_out = L1+L2: Y(p)·out = (Y(p)·x1)(Y(p)·x2) at random points (float64 to 1e-10
    on torch; Triton takes float32 at most, checked to 1e-5 relative)."""
    l1, l2, _ = degrees
    dtype = torch.float32 if backend == "triton" else torch.float64
    x1, x2 = _inputs(l1, l2, dtype)
    out = fastspec.gaunt_tensor_product(x1, x2, method=method, backend=backend)
    points = random_input((40, 3), torch.float64)
    product = evaluate(x1, points) * evaluate(x2, points)
    scale = product.abs().max()
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert (evaluate(out, points) - product).abs().max() <= tol * scale


@pytest.mark.parametrize("method", TORCH_METHODS)
@pytest.mark.parametrize("degrees", DEGREES + [pytest.param(d, marks=pytest.mark.slow) for d in [(12, 12, 12), (10, 12, 16), (24, 2, 20)]],
                         ids=str)
def test_float64_matches_dense_reference(method, degrees):
    """float64 on the torch backend (the only one that takes it)."""
    backend = "torch"
    l1, l2, lmax_out = degrees
    x1, x2 = _inputs(l1, l2, torch.float64)
    out = fastspec.gaunt_tensor_product(x1, x2, lmax_out, method=method, backend=backend)
    assert out.shape == (3, 4, num_coefficients(lmax_out)) and out.dtype == torch.float64
    torch.testing.assert_close(out, gaunt_reference(x1, x2, lmax_out), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend,method,degrees", _params(DEGREES[:-1], TRITON_DEGREES))
@pytest.mark.parametrize("dtype", HALF_AND_SINGLE, ids=str)
def test_dtypes_match_dense_reference(backend, method, degrees, dtype):
    l1, l2, lmax_out = degrees
    x1, x2 = _inputs(l1, l2, dtype, lead=(5, 3))
    out = fastspec.gaunt_tensor_product(x1, x2, lmax_out, method=method, backend=backend)
    assert out.dtype == dtype and out.device == x1.device
    _check(out, gaunt_reference(x1, x2, lmax_out))


@pytest.mark.parametrize("backend", BACKENDS)
def test_broadcast_channels_and_strides(backend):
    """C or 1 channels and broadcast leading dims; non-contiguous inputs."""
    dtype = torch.float32
    x1 = random_input((2, 1, 6, 16), dtype)
    x2 = random_input((3, 9, 1), dtype).transpose(-1, -2)  # (3, 1, 9): strided, one channel
    out = fastspec.gaunt_tensor_product(x1, x2, 4, method="grid", backend=backend)
    assert out.shape == (2, 3, 6, 25)
    _check(out, gaunt_reference(x1, x2, 4).expand(2, 3, 6, 25))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    x1, x2 = random_input((0, 3, 9), torch.float32), random_input((0, 1, 4), torch.float32)
    for method in _methods(backend):
        out = fastspec.gaunt_tensor_product(x1, x2, method=method, backend=backend)
        assert out.shape == (0, 3, 16) and out.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_rotation_equivariance(backend):
    """Rotating both inputs by the package's Wigner D rotates the output: gaunt(D x1, D x2) = D gaunt(x1, x2)."""
    l1, l2, lmax_out = 3, 2, 4
    q, r = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    rot = q * torch.sign(torch.diagonal(r))
    rot = rot if torch.det(rot) > 0 else -rot
    d = wigner_D(max(l1, l2, lmax_out), rot)
    d1, d2, d3 = (d[:num_coefficients(l), :num_coefficients(l)] for l in (l1, l2, lmax_out))
    dtype = torch.float32 if backend == "triton" else torch.float64
    x1, x2 = _inputs(l1, l2, torch.float64)
    for method in _methods(backend):
        def run(a, b):
            return fastspec.gaunt_tensor_product(a.to(dtype), b.to(dtype), lmax_out, method=method, backend=backend).double()
        rotated = run(x1 @ d1.T.to(DEVICE), x2 @ d2.T.to(DEVICE))
        tol = 1e-5 if dtype == torch.float32 else 1e-11
        torch.testing.assert_close(rotated, run(x1, x2) @ d3.T.to(DEVICE), rtol=tol, atol=tol)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("backend,method,degrees", _params([(2, 3, 4), (3, 1, 2), (4, 1, 1)], [(2, 3, 4), (4, 1, 1)]))
def test_gradients_match_reference(backend, method, degrees):
    """Both gradients against autograd of the float64 reference, with a random output gradient
    and through .sum() (an expanded, stride-0 gradient). (4, 1, 1): L1 > L2 + lmax_out, so the
    backward asks the op for degrees above what it can produce (zero)."""
    l1, l2, lmax_out = degrees
    dtype = torch.float32 if backend == "triton" else torch.float64
    x1, x2 = _inputs(l1, l2, dtype, requires_grad=True)
    r1, r2 = (x.detach().double().requires_grad_() for x in (x1, x2))
    out = fastspec.gaunt_tensor_product(x1, x2, lmax_out, method=method, backend=backend)
    ref = gaunt_reference(r1, r2, lmax_out)
    for grad in (random_input(out.shape, dtype), None):
        if grad is None:
            got = torch.autograd.grad(out.sum(), (x1, x2), retain_graph=True)
            want = torch.autograd.grad(ref.sum(), (r1, r2), retain_graph=True)
        else:
            got = torch.autograd.grad(out, (x1, x2), grad, retain_graph=True)
            want = torch.autograd.grad(ref, (r1, r2), grad.double(), retain_graph=True)
        for g, w in zip(got, want):
            if dtype == torch.float64:
                torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-11)
            else:
                _check(g, w)


def test_gradient_of_broadcast_input_is_reduced():
    x1 = random_input((4, 5, 9), torch.float64).requires_grad_()
    x2 = random_input((1, 9), torch.float64).requires_grad_()
    fastspec.gaunt_tensor_product(x1, x2, 2, method="grid").square().sum().backward()
    r1, r2 = x1.detach().requires_grad_(), x2.detach().requires_grad_()
    gaunt_reference(r1, r2, 2).square().sum().backward()
    assert x2.grad.shape == (1, 9)
    torch.testing.assert_close(x2.grad, r2.grad, rtol=1e-10, atol=1e-11)
    torch.testing.assert_close(x1.grad, r1.grad, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("method", TORCH_METHODS)
def test_gradcheck_and_gradgradcheck(method):
    x1, x2 = _inputs(2, 1, torch.float64, lead=(1, 2), requires_grad=True)

    def fn(a, b):
        return fastspec.gaunt_tensor_product(a, b, 2, method=method, backend="torch")
    assert torch.autograd.gradcheck(fn, (x1, x2))
    if method != "fourier":  # the same autograd plumbing (the backward is the op); fourier's FFTs make it slow
        assert torch.autograd.gradgradcheck(fn, (x1, x2))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_opcheck(backend, dtype):
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the triton backend takes float16, bfloat16 and float32")
    x1, x2 = _inputs(2, 1, dtype, lead=(2, 3), requires_grad=dtype != torch.bfloat16)
    for method in _methods(backend):
        torch.library.opcheck(gaunt_op, (x1, x2, 3, method, backend))
    torch.library.opcheck(gaunt_op, (x1, x2, 4, "grid", backend))  # above L1+L2: zero-padded (the backward's case)


def test_torch_compile_fullgraph():
    x1, x2 = _inputs(2, 2, torch.float32, requires_grad=True)

    def fn(a, b):
        return fastspec.gaunt_tensor_product(a, b, 3).square().sum()

    compiled = torch.compile(fn, fullgraph=True)
    loss = compiled(x1, x2)
    grads = torch.autograd.grad(loss, (x1, x2))
    want = torch.autograd.grad(fn(x1, x2), (x1, x2))
    torch.testing.assert_close(loss, fn(x1, x2))
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w)


def test_auto_method():
    assert choose_method("auto", "torch", 2, 2, 2) == "grid"
    assert choose_method("auto", "triton", 1, 1, 1) == "grid"
    assert choose_method("fourier", "torch", 6, 6, 6) == "fourier"


# --------------------------------------------------------------------------- bad inputs


def test_bad_inputs():
    f = fastspec.gaunt_tensor_product
    x = random_input((2, 3, 9), torch.float32)
    with pytest.raises(ValueError, match=r"last dim of x1 must be \(L\+1\)²"):
        f(random_input((2, 3, 8), torch.float32), x)
    with pytest.raises(ValueError, match=r"last dim of x2 must be \(L\+1\)²"):
        f(x, random_input((2, 3, 5), torch.float32))
    with pytest.raises(ValueError, match="same number of channels or one of them 1, got 3 and 2"):
        f(x, random_input((2, 2, 9), torch.float32))
    with pytest.raises(ValueError, match="do not broadcast"):
        f(x, random_input((4, 3, 9), torch.float32))
    with pytest.raises(ValueError, match=r"lmax_out must be an int in 0..L1\+L2 = 0..4"):
        f(x, x, 5)
    with pytest.raises(ValueError, match="lmax_out"):
        f(x, x, -1)
    with pytest.raises(ValueError, match="channel dim"):
        f(x[0, 0], x[0, 0])
    with pytest.raises(TypeError, match="one dtype"):
        f(x, x.double())
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        f(x.int(), x.int())
    with pytest.raises(TypeError, match="torch.Tensor"):
        f([1.0], x)
    with pytest.raises(ValueError, match="method must be one of"):
        f(x, x, method="cg")
    with pytest.raises(ValueError, match="backend must be one of"):
        f(x, x, backend="cuda13")
    with pytest.raises(ValueError, match=f"degrees up to {MAX_INPUT_DEGREE}"):
        f(random_input((1, 1, (MAX_INPUT_DEGREE + 2) ** 2), torch.float32), x)
    with pytest.raises(ValueError, match="method='dense' takes Gaunt tables"):
        f(random_input((1, 1, 18 ** 2), torch.float32), random_input((1, 1, 18 ** 2), torch.float32), method="dense")


def test_backends_without_the_op(monkeypatch):
    x = random_input((2, 3, 9), torch.float32)
    with pytest.raises(NotImplementedError, match="'cpu' backend has no implementation of this op"):
        gaunt_op(x, x, 4, "grid", "cpu")
    with pytest.raises((NotImplementedError, RuntimeError), match="cpu"):  # RuntimeError: built without it, or CUDA data
        fastspec.gaunt_tensor_product(x, x, backend="cpu")
    monkeypatch.setenv("FASTSPEC_BACKEND", "cuda")
    with pytest.raises((NotImplementedError, RuntimeError), match="cuda"):
        fastspec.gaunt_tensor_product(x, x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_triton_rejects_what_it_does_not_run(backend):
    if backend != "triton":
        pytest.skip("triton's limits")
    x = random_input((2, 3, 9), torch.float32)
    with pytest.raises(ValueError, match="runs method='grid' only"):
        fastspec.gaunt_tensor_product(x, x, method="fourier", backend="triton")
    with pytest.raises(ValueError, match="float64"):
        fastspec.gaunt_tensor_product(x.double(), x.double(), backend="triton")


# --------------------------------------------------------------------------- gaunt_power


@pytest.mark.parametrize("nu", [1, 2, 3, 4])
def test_gaunt_power_is_the_power_on_the_sphere(nu):
    x = random_input((2, 3, 9), torch.float64)
    out = fastspec.gaunt_power(x, nu)
    assert out.shape == (2, 3, num_coefficients(2 * nu))
    points = random_input((40, 3), torch.float64)
    power = evaluate(x, points) ** nu
    assert (evaluate(out, points) - power).abs().max() <= 1e-10 * power.abs().max()


def test_gaunt_power_truncated_matches_chained_products():
    """lmax_out below ν·L: the truncation of the full product (not of each factor)."""
    x = random_input((4, 2, 16), torch.float64)
    full = fastspec.gaunt_tensor_product(fastspec.gaunt_tensor_product(x, x), x, method="dense")
    torch.testing.assert_close(fastspec.gaunt_power(x, 3, 4), full[..., :25], rtol=1e-10, atol=1e-12)
    for dtype in HALF_AND_SINGLE:
        xd = x.to(dtype)
        _check(fastspec.gaunt_power(xd, 3, 4), gaunt_reference(gaunt_reference(xd, xd), xd, 4))


@pytest.mark.parametrize("nu", [1, 3])
def test_gaunt_power_gradcheck_opcheck(nu):
    x = random_input((2, 4), torch.float64).requires_grad_()
    lmax_out = min(2, nu)  # ν = 3: truncated
    assert torch.autograd.gradcheck(lambda a: fastspec.gaunt_power(a, nu, lmax_out), (x,))
    assert torch.autograd.gradgradcheck(lambda a: fastspec.gaunt_power(a, nu, lmax_out), (x,))
    torch.library.opcheck(torch.ops.fastspec.gaunt_power.default, (x, nu, lmax_out))


def test_gaunt_power_errors():
    x = random_input((2, 4), torch.float64)
    with pytest.raises(ValueError, match="nu must be an int in 1..8"):
        fastspec.gaunt_power(x, 0)
    with pytest.raises(ValueError, match=r"lmax_out must be an int in 0..nu·L = 0..3"):
        fastspec.gaunt_power(x, 3, 4)
    with pytest.raises(ValueError, match=r"\(L\+1\)²"):
        fastspec.gaunt_power(x[..., :3], 2)


# --------------------------------------------------------------------------- modules


def test_gaunt_tensor_product_module():
    layer = fastspec.nn.GauntTensorProduct(2, 1, 3, channels=4, dtype=torch.float64, device=DEVICE)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    x1, x2 = random_input((5, 4, 9), torch.float64), random_input((5, 1, 4), torch.float64)
    out = layer(x1, x2)
    deg = [torch.cat([torch.full((2 * l + 1,), l) for l in range(lmax + 1)]).to(DEVICE) for lmax in (2, 1, 3)]
    want = gaunt_reference(x1 * layer.weight1[:, deg[0]], x2 * layer.weight2[:, deg[1]], 3) * layer.weight_out[:, deg[2]]
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    with pytest.raises(ValueError, match="lmax_out must be at most"):
        fastspec.nn.GauntTensorProduct(1, 1, 3, channels=2)
    with pytest.raises(ValueError, match="channels must be a positive int"):
        fastspec.nn.GauntTensorProduct(1, 1, 2, channels=0)


def test_gaunt_self_interaction_module():
    layer = fastspec.nn.GauntSelfInteraction(2, 3, 2, channels=3, dtype=torch.float64, device=DEVICE)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    x = random_input((4, 3, 9), torch.float64)
    deg = torch.cat([torch.full((2 * l + 1,), l) for l in range(3)]).to(DEVICE)
    a = x * layer.weight_in[:, deg]
    powers = [a, gaunt_reference(a, a, 2), gaunt_reference(gaunt_reference(a, a), a, 2)]
    want = sum(layer.weight_out[i][:, deg] * powers[i] for i in range(3))
    torch.testing.assert_close(layer(x), want, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"x must be \(\.\.\., 3, 9\)"):
        layer(x[..., :4])
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), want, rtol=1e-10, atol=1e-12)
