"""fastspec.ssm_kernel (the S4D Vandermonde kernel) against the materialised Vandermonde
product in complex128, on every backend available here."""
import pytest
import torch

import fastspec
from fastspec.hippo import init_log_dt, s4d_init
from fastspec.ops.ssm import discretize, vandermonde_blocks, vandermonde_op
from fastspec.reference.ssm import ssm_kernel_reference

from conftest import DEVICE, backend_params
from test_linear_scan import assert_close as _assert_close

BACKENDS = backend_params("torch", "triton")
FLOAT32_FLOOR = 2e-6
"""The family's float32 floor: K sums N modes in float32, each term a few float32 roundings
(cos, sin, exp, products; the torch backend rounds two factors); where modes cancel the
relative error grows: up to 1.4e-6 measured on Triton for K (N = 64), 5e-7 on torch. The
gradients are summed in float64 on both backends."""


def assert_close(out, ref):
    _assert_close(out, ref, FLOAT32_FLOOR)


def make_inputs(H, N, dtype=torch.complex64, init="lin", dt_min=1e-3, dt_max=1e-1, device=DEVICE):
    """(A, B, C, log_dt): an S4D init (or 'random': Re A = −exp(N(0,1)), Im A uniform in
    ±π·N), C standard complex normal."""
    if init == "random":
        A = torch.complex(-torch.exp(torch.randn(H, N, dtype=torch.float64)),
                          (torch.rand(H, N, dtype=torch.float64) * 2 - 1) * torch.pi * N).to(dtype)
        B = torch.randn(H, N, dtype=dtype)
    else:
        A, B = s4d_init(init, H, N, dtype=dtype)
    C = torch.randn(H, N, dtype=dtype)
    log_dt = init_log_dt(H, dt_min, dt_max, dtype=dtype.to_real())
    return tuple(t.to(device) for t in (A, B, C, log_dt))


def _cases(lengths_torch, lengths_triton):
    return [pytest.param(p.values[0], L, marks=p.marks, id=f"{p.values[0]}-{L}")
            for p in BACKENDS for L in (lengths_triton if p.values[0] == "triton" else lengths_torch)]


@pytest.mark.parametrize("backend,L", _cases([1, 7, 100, 4096], [1, 7, 100, 1000]))
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("init", ["lin", "inv", "legs", "real", "random"])
def test_wide_matches_the_vandermonde_product(backend, L, discretization, init):
    inputs = make_inputs(3, 8, torch.complex128, init)
    K = fastspec.ssm_kernel(*inputs, L, discretization=discretization, backend=backend)
    assert K.dtype == torch.float64 and K.shape == (3, L) and K.is_contiguous()
    expect = ssm_kernel_reference(*(t.cpu() for t in inputs), L, discretization)
    torch.testing.assert_close(K.cpu(), expect, rtol=1e-10, atol=1e-12 * expect.abs().max().item())


@pytest.mark.parametrize("backend,L", _cases([7, 4096], [7, 300]))
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("N", [1, 16, 64])
def test_float32_matches_the_vandermonde_product(backend, L, discretization, N):
    inputs = make_inputs(4, N, torch.complex64, "inv" if N > 1 else "lin")
    K = fastspec.ssm_kernel(*inputs, L, discretization=discretization, backend=backend)
    assert K.dtype == torch.float32
    assert_close(K, ssm_kernel_reference(*(t.cpu() for t in inputs), L, discretization))


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_kernels_stay_accurate(backend):
    """At L = 16K with slow decay (Δ = 1e-3) and fast rotation (S4D-Inv, Im A up to 5000) the
    float32 kernel keeps the tolerance rule: each power exp(l·ζ) is computed directly with its
    phase in float64. The same product with the powers taken in complex64 (S4D's naive
    Vandermonde) is about 150 times less accurate there (2e-5 against 1.5e-7 relative)."""
    L = 16384 if backend == "torch" else 4096
    inputs = make_inputs(2, 64, torch.complex64, "inv", dt_min=1e-3, dt_max=1e-3)
    expect = ssm_kernel_reference(*(t.cpu() for t in inputs), L)
    K = fastspec.ssm_kernel(*inputs, L, backend=backend)
    assert_close(K, expect)
    naive = ssm_kernel_reference(*(t.cpu() for t in inputs), L, dtype=torch.complex64)
    assert (naive.double() - expect).norm() > 30 * (K.cpu().double() - expect).norm()


def test_zero_mode_and_blocks():
    """A mode with A = 0 under ZOH keeps Δ·C·B at every step (no 0/0), and the torch
    backend's blocks cover any L with about √L steps each."""
    A = torch.zeros(1, 1, dtype=torch.complex128)
    B, C = torch.ones(1, 1, dtype=torch.complex128), torch.full((1, 1), 0.5 + 1j, dtype=torch.complex128)
    K = fastspec.ssm_kernel(A, B, C, torch.full((1,), -2.0, dtype=torch.float64), 5, backend="torch")
    torch.testing.assert_close(K, torch.full((1, 5), 2 * 0.5 * torch.exp(torch.tensor(-2.0)).item(),
                                             dtype=torch.float64))
    for L in (1, 2, 3, 15, 16, 17, 1000, 16384):
        steps, blocks = vandermonde_blocks(L)
        assert steps * blocks >= L > steps * (blocks - 1) and steps <= int(L**0.5) + 1


# --------------------------------------------------------------------------- autograd


def _grads(fn, inputs, weight):
    leaves = [t.requires_grad_() for t in inputs]
    return torch.autograd.grad((fn(*leaves) * weight).sum(), leaves)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=str)
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_grads_match_reference(backend, dtype, discretization):
    L = 500 if backend == "triton" else 3000
    inputs = make_inputs(3, 16, dtype, "random")
    weight = torch.randn(3, L, dtype=torch.float64, device=DEVICE)
    got = _grads(lambda *t: fastspec.ssm_kernel(*t, L, discretization=discretization, backend=backend), inputs,
                 weight.to(dtype.to_real()))
    wide = [t.detach().cpu().to(torch.complex128 if t.is_complex() else torch.float64) for t in inputs]
    expect = _grads(lambda *t: ssm_kernel_reference(*t, L, discretization), wide, weight.cpu())
    for g, e, t in zip(got, expect, inputs):
        assert g.dtype == t.dtype and g.shape == t.shape
        if dtype == torch.complex128:
            torch.testing.assert_close(g.cpu(), e, rtol=1e-9, atol=1e-9 * e.abs().max().item())
        else:
            assert_close(torch.view_as_real(g) if g.is_complex() else g,
                         torch.view_as_real(e) if e.is_complex() else e)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_through_sum(backend):
    inputs = make_inputs(2, 8, torch.complex64, "inv")
    got = _grads(lambda *t: fastspec.ssm_kernel(*t, 64, backend=backend), inputs, 1.0)
    wide = [t.detach().cpu().to(torch.complex128 if t.is_complex() else torch.float64) for t in inputs]
    expect = _grads(lambda *t: ssm_kernel_reference(*t, 64), wide, 1.0)
    for g, e in zip(got, expect):
        assert_close(torch.view_as_real(g) if g.is_complex() else g, torch.view_as_real(e) if e.is_complex() else e)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_gradcheck(backend, discretization):
    inputs = [t.requires_grad_() for t in make_inputs(2, 3, torch.complex128, "random", dt_min=0.05, dt_max=0.5)]
    fn = lambda *t: fastspec.ssm_kernel(*t, 9, discretization=discretization, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)
    if backend == "torch":
        assert torch.autograd.gradgradcheck(fn, inputs)


# --------------------------------------------------------------------------- registration


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck(backend, dtype):
    v, zeta = discretize(*make_inputs(3, 5, torch.complex128, "inv"), "zoh")
    v, zeta = v.detach().requires_grad_(), zeta.detach().requires_grad_()
    torch.library.opcheck(torch.ops.fastspec.vandermonde.default, (v, zeta, 33, dtype, backend))
    grad = torch.randn(3, 33, dtype=dtype, device=DEVICE)
    torch.library.opcheck(torch.ops.fastspec.vandermonde_backward.default, (grad, v.detach(), zeta.detach(), backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    torch._dynamo.reset()

    def layer(A, B, C, log_dt):
        return torch.tanh(fastspec.ssm_kernel(A, B, C, log_dt * 1.0, 32, backend=backend))

    inputs = make_inputs(2, 4, torch.complex64, "lin")
    torch.testing.assert_close(torch.compile(layer, fullgraph=True)(*inputs), layer(*inputs))


# --------------------------------------------------------------------------- bad input

_A, _B, _C, _LOG_DT = make_inputs(2, 3, torch.complex64, "lin", device="cpu")


@pytest.mark.parametrize("args,kwargs,error,message", [
    ((_A.real, _B, _C, _LOG_DT, 8), {}, TypeError, "A must be complex64 or complex128, got torch.float32"),
    ((_A, _B.to(torch.complex128), _C, _LOG_DT, 8), {}, TypeError, "B must have A's dtype"),
    ((_A, _B, _C, _LOG_DT.double(), 8), {}, TypeError, "log_dt must be float32 for A of torch.complex64"),
    ((_A[0], _B, _C, _LOG_DT, 8), {}, ValueError, r"A must be \(H, N\) with N >= 1"),
    ((_A, _B, _C[:, :2], _LOG_DT, 8), {}, ValueError, r"C must have A's shape \(2, 3\)"),
    ((_A, _B, _C, _LOG_DT[:1], 8), {}, ValueError, r"log_dt must be \(H,\) = \(2,\)"),
    ((_A, _B, _C, _LOG_DT, 0), {}, ValueError, "L must be an int >= 1, got 0"),
    ((_A, _B, _C, _LOG_DT, 8.0), {}, ValueError, "L must be an int >= 1, got 8.0"),
    ((_A, _B, _C, _LOG_DT, 8), {"discretization": "euler"}, ValueError,
     "discretization must be one of 'zoh', 'bilinear'"),
    ((_A, _B, _C, _LOG_DT.to("meta"), 8), {}, ValueError, "every tensor must be on the device of A"),
    ((_A, _B, _C, _LOG_DT, 8), {"backend": "cpu"}, (RuntimeError, NotImplementedError), "'cpu'"),
])
def test_bad_input_raises_before_any_kernel(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        fastspec.ssm_kernel(*args, **kwargs)


@pytest.mark.parametrize("backend", backend_params("triton"))
def test_triton_rejects_too_many_modes(backend):
    inputs = make_inputs(1, 1025, torch.complex64, "lin")
    with pytest.raises(ValueError, match="the triton backend takes N <= 1024"):
        fastspec.ssm_kernel(*inputs, 4, backend=backend)
    with pytest.raises(ValueError, match="N <= 1024"):
        vandermonde_op(*discretize(*inputs, "zoh"), 4, torch.float32, backend)


# --------------------------------------------------------------------------- S4D layer


@pytest.mark.parametrize("init", ["legs", "lin", "inv", "real"])
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_s4d_layer_is_the_kernel_convolution(init, discretization):
    """y = act(K ∗ u + D·u) with K the materialised Vandermonde product of the layer's
    parameters and the convolution summed tap by tap (fastspec.reference.fftconv)."""
    from fastspec.reference.fftconv import fft_conv_reference

    layer = fastspec.nn.S4D(6, 16, init=init, discretization=discretization, activation="tanh", backend="torch",
                            dtype=torch.float64).to(DEVICE)
    u = torch.randn(2, 6, 50, dtype=torch.float64, device=DEVICE)
    params = [p.detach().cpu() for p in (layer.A, layer.B, layer.C, layer.log_dt)]
    K = ssm_kernel_reference(*params, 50, discretization)
    expect = torch.tanh(fft_conv_reference(u.cpu(), K, D=layer.D.detach().cpu()))
    torch.testing.assert_close(layer(u).cpu(), expect, rtol=1e-10, atol=1e-10)


def test_s4d_layer_init_and_training():
    layer = fastspec.nn.S4D(8, 64, init="lin", dt_min=1e-3, dt_max=1e-1).to(DEVICE)
    assert layer.A.shape == (8, 32) and layer.A.dtype == torch.complex64
    torch.testing.assert_close(layer.A.real, torch.full((8, 32), -0.5, device=DEVICE))
    torch.testing.assert_close(layer.A.imag[0], torch.pi * torch.arange(32.0, device=DEVICE))
    assert layer.log_dt.min() >= torch.log(torch.tensor(1e-3)) and layer.log_dt.max() <= torch.log(torch.tensor(0.1))
    u = torch.randn(3, 8, 100, device=DEVICE).bfloat16()
    y = layer(u)
    assert y.dtype == torch.bfloat16 and y.shape == u.shape
    y.float().square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(torch.view_as_real(p.grad) if p.is_complex() else p.grad).all()
        assert p.grad.abs().sum() > 0, name


def test_s4d_layer_bad_arguments():
    with pytest.raises(ValueError, match="init must be one of 'legs', 'lin', 'inv', 'real'"):
        fastspec.nn.S4D(4, init="hippo")
    with pytest.raises(ValueError, match="activation must be one of"):
        fastspec.nn.S4D(4, activation="swish")
    with pytest.raises(TypeError, match="float32 or float64"):
        fastspec.nn.S4D(4, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"u must be \(B, 4, L\)"):
        fastspec.nn.S4D(4)(torch.randn(2, 5, 10))
