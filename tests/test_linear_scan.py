"""fastspec.linear_scan against the sequential float64 loop, on every backend available here."""
import pytest
import torch

import fastspec
from fastspec.ops.ssm import linear_scan_op
from fastspec.reference.ssm import linear_scan_reference

from conftest import DEVICE, assert_close_to_reference, backend_params, random_input

BACKENDS = backend_params("torch", "triton")
TORCH_LENGTHS = [1, 7, 64, 1000, 4096]
TRITON_LENGTHS = [1, 7, 64, 100]  # the interpreter is slow: short rows (test_chunks_and_padding: many chunks)
COMPLEX = (torch.complex64, torch.complex128)


def _lengths(backend):
    return TRITON_LENGTHS if backend == "triton" else TORCH_LENGTHS


def _by_backend_and_length():
    return [pytest.param(p.values[0], T, marks=p.marks, id=f"{p.values[0]}-{T}")
            for p in BACKENDS for T in _lengths(p.values[0])]


def make_inputs(shape, dtype, initial=True, device=DEVICE):
    """(gates, tokens, initial): real gates uniform in (0, 1) (decays, as in gated linear
    RNNs), complex gates of modulus in (0, 1) and any phase; tokens standard normal."""
    if dtype.is_complex:
        real = torch.float64
        gates = torch.polar(torch.rand(shape, dtype=real), 2 * torch.pi * torch.rand(shape, dtype=real))
    else:
        gates = torch.rand(shape, dtype=torch.float64)
    gates = gates.to(device=device, dtype=dtype)
    tokens = random_input(shape, dtype, device) if not dtype.is_complex else torch.randn(shape, dtype=dtype,
                                                                                         device=device)
    x0 = torch.randn(shape[:2], dtype=dtype, device=device) if initial else None
    return gates, tokens, x0


FLOAT32_FLOOR = 5e-7
"""The family's float32 floor (conftest's is 1.5e-7): a float32 state is rounded at every
step, so a result that sums a long memory (the gradient of the initial state sums all T
steps) carries a few roundings more than one (measured: up to 2.8e-7 over 30 seeds at
T = 300 with gates uniform in (0, 1))."""


def assert_close(out, ref, float32_floor=FLOAT32_FLOOR):
    """The tolerance rule (``float32_floor`` for float32), on the real and imaginary parts of
    complex results."""
    if out.is_complex():
        out, ref = torch.view_as_real(out), torch.view_as_real(ref)
    assert_close_to_reference(out, ref, float32_floor if out.dtype == torch.float32 else None)


@pytest.mark.parametrize("backend,T", _by_backend_and_length())
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=str)
@pytest.mark.parametrize("reverse", [False, True])
def test_wide_matches_reference(backend, T, dtype, reverse):
    gates, tokens, x0 = make_inputs((2, 3, T), dtype)
    out = fastspec.linear_scan(gates, tokens, x0, reverse=reverse, backend=backend)
    assert out.dtype == dtype and out.shape == tokens.shape and out.is_contiguous()
    ref = linear_scan_reference(gates.cpu(), tokens.cpu(), x0.cpu(), reverse=reverse)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend,T", _by_backend_and_length())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.complex64], ids=str)
@pytest.mark.parametrize("reverse", [False, True])
def test_dtypes_match_reference(backend, T, dtype, reverse):
    gates, tokens, x0 = make_inputs((3, 4, T) if backend == "torch" else (2, 3, T), dtype, initial=T % 2 == 1)
    out = fastspec.linear_scan(gates, tokens, x0, reverse=reverse, backend=backend)
    assert out.dtype == dtype
    assert_close(out, linear_scan_reference(gates.cpu(), tokens.cpu(), None if x0 is None else x0.cpu(),
                                            reverse=reverse))


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_tokens_with_a_float32_initial_state(backend):
    gates, tokens, _ = make_inputs((2, 3, 20), torch.bfloat16)
    x0 = torch.randn(2, 3, device=DEVICE)
    out = fastspec.linear_scan(gates, tokens, x0, backend=backend)
    assert_close(out, linear_scan_reference(gates.cpu(), tokens.cpu(), x0.cpu()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_and_negative_gates(backend):
    """A zero gate restarts the recurrence; negative and large gates are taken as they are."""
    gates = torch.tensor([[[0.5, 0.0, -2.0, 1.0, 0.0, -1.0, 3.0]]], dtype=torch.float64, device=DEVICE)
    tokens = torch.tensor([[[1.0, 2.0, 3.0, -1.0, 0.5, 0.25, 2.0]]], dtype=torch.float64, device=DEVICE)
    out = fastspec.linear_scan(gates, tokens, torch.full((1, 1), 4.0, dtype=torch.float64, device=DEVICE),
                               backend=backend)
    expect = [3.0, 2.0, -1.0, -2.0, 0.5, -0.25, 1.25]
    assert out.flatten().tolist() == expect


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_and_expanded_inputs(backend):
    gates, tokens, x0 = make_inputs((4, 6, 40), torch.float32)
    views = {
        "transposed": (gates.transpose(0, 1), tokens.transpose(0, 1), x0.T),
        "strided time": (make_inputs((2, 3, 80), torch.float32)[0][..., ::2], tokens[:2, :3], None),
        "expanded gates": (gates[:1, :1].expand(4, 6, 40), tokens, x0),
        "constant gate": (torch.full((1, 1, 1), 0.9, device=DEVICE).expand(4, 6, 40), tokens, None),
    }
    for name, (a, b, x) in views.items():
        out = fastspec.linear_scan(a, b, x, backend=backend)
        ref = linear_scan_reference(a.cpu(), b.cpu(), None if x is None else x.cpu())
        assert out.is_contiguous(), name
        assert_close(out, ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 3, 10), (2, 0, 10)])
def test_empty_batch(backend, shape):
    gates, tokens, _ = make_inputs(shape, torch.float32, initial=False)
    assert fastspec.linear_scan(gates, tokens, backend=backend).shape == shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunks_and_padding(backend, monkeypatch):
    """Lengths around the chunk size (4 on torch, 16 on Triton, for the test) and its
    powers: the carries between chunks (and on torch between chunks of chunks) are right."""
    from fastspec.ops import ssm
    from fastspec.triton_kernels import ssm as kernels

    monkeypatch.setattr(ssm, "TORCH_CHUNK", 4)
    monkeypatch.setattr(kernels, "SCAN_MAX_T", 16)
    for T in (3, 4, 5, 15, 16, 17, 64, 65, 100):
        gates, tokens, x0 = make_inputs((1, 2, T), torch.float64)
        for reverse in (False, True):
            out = fastspec.linear_scan(gates, tokens, x0, reverse=reverse, backend=backend)
            expect = linear_scan_reference(gates.cpu(), tokens.cpu(), x0.cpu(), reverse=reverse)
            torch.testing.assert_close(out.cpu(), expect, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- autograd


def _grads(fn, inputs, weight):
    leaves = [t for t in inputs if t is not None and t.requires_grad]
    out = fn(*inputs)
    if out.is_complex():
        loss = (torch.view_as_real(out) * weight).sum()
    else:
        loss = (out * weight).sum()
    return torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("reverse", [False, True])
def test_grads_match_reference(backend, dtype, reverse):
    T = 37 if backend == "triton" else 300
    gates, tokens, x0 = make_inputs((2, 3, T), dtype)
    inputs = [t.requires_grad_() for t in (gates, tokens, x0)]
    out_shape = (2, 3, T, 2) if dtype.is_complex else (2, 3, T)
    weight = random_input(out_shape, dtype.to_real())
    got = _grads(lambda a, b, x: fastspec.linear_scan(a, b, x, reverse=reverse, backend=backend), inputs, weight)
    wide = [t.detach().cpu().to(torch.complex128 if dtype.is_complex else torch.float64).requires_grad_()
            for t in inputs]
    expect = _grads(lambda a, b, x: linear_scan_reference(a, b, x, reverse=reverse), wide, weight.cpu().double())
    for g, e in zip(got, expect):
        assert g.dtype == dtype
        assert_close(g, e)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_through_sum(backend):
    """out.sum().backward() sends an expanded (stride-0) gradient into the backward."""
    gates, tokens, x0 = (t.requires_grad_() for t in make_inputs((2, 3, 50), torch.float32))
    fastspec.linear_scan(gates, tokens, x0, backend=backend).sum().backward()
    wide = [t.detach().cpu().double().requires_grad_() for t in (gates, tokens, x0)]
    linear_scan_reference(*wide).sum().backward()
    for got, expect in zip((gates, tokens, x0), wide):
        assert_close(got.grad, expect.grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=str)
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck(backend, dtype, reverse):
    inputs = [t.requires_grad_() for t in make_inputs((1, 2 if backend == "torch" else 1, 5), dtype)]
    fn = lambda a, b, x: fastspec.linear_scan(a, b, x, reverse=reverse, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)
    if backend == "torch":
        assert torch.autograd.gradgradcheck(fn, inputs)


# --------------------------------------------------------------------------- registration


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.complex64], ids=str)
def test_opcheck(backend, dtype):
    gates, tokens, x0 = make_inputs((2, 3, 9), dtype)
    grad = dtype in (torch.float32, torch.complex64)
    args = (gates.requires_grad_(grad), tokens.requires_grad_(grad), x0.requires_grad_(grad))
    torch.library.opcheck(torch.ops.fastspec.linear_scan.default, (*args, False, backend))
    torch.library.opcheck(torch.ops.fastspec.linear_scan.default, (*args[:2], None, True, backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    torch._dynamo.reset()

    def layer(a, b, x):
        return torch.tanh(fastspec.linear_scan(torch.sigmoid(a), b * 2.0, x, backend=backend)) + 1.0

    compiled = torch.compile(layer, fullgraph=True)
    inputs = make_inputs((2, 3, 16), torch.float32)
    torch.testing.assert_close(compiled(*inputs), layer(*inputs))


# --------------------------------------------------------------------------- bad input

_A = torch.rand(2, 3, 8)


@pytest.mark.parametrize("call,error,message", [
    (lambda: fastspec.linear_scan(_A.numpy(), _A), TypeError, "gates must be a torch.Tensor"),
    (lambda: fastspec.linear_scan(_A, _A.long()), TypeError, "tokens must be float16, bfloat16, float32, float64, "
                                                             "complex64 or complex128, got torch.int64"),
    (lambda: fastspec.linear_scan(_A.double(), _A), TypeError, "gates must have tokens' dtype torch.float32"),
    (lambda: fastspec.linear_scan(_A[0], _A[0]), ValueError, r"tokens must be \(B, C, T\) with T >= 1"),
    (lambda: fastspec.linear_scan(_A[..., :0], _A[..., :0]), ValueError, "T >= 1"),
    (lambda: fastspec.linear_scan(_A[:, :2], _A), ValueError, r"gates must have tokens' shape \(2, 3, 8\)"),
    (lambda: fastspec.linear_scan(_A, _A, torch.zeros(2, 4)), ValueError, r"initial must be \(B, C\) = \(2, 3\)"),
    (lambda: fastspec.linear_scan(_A, _A, torch.zeros(2, 3, dtype=torch.float64)), TypeError,
     "initial must be float32 for tokens of torch.float32"),
    (lambda: fastspec.linear_scan(_A.half(), _A.half(), torch.zeros(2, 3, dtype=torch.float64)), TypeError,
     "initial must be float16 or float32"),
    (lambda: fastspec.linear_scan(_A, _A, reverse=1), TypeError, "reverse must be a bool"),
    (lambda: fastspec.linear_scan(_A, _A, torch.zeros(2, 3, device="meta")), ValueError,
     "every tensor must be on the device of tokens"),
    (lambda: fastspec.linear_scan(_A, _A, backend="numpy"), ValueError, "backend must be one of"),
    (lambda: linear_scan_op(_A, _A, None, False, "cuda"), NotImplementedError, "'cuda' backend has no implementation"),
])
def test_bad_input_raises_before_any_kernel(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_auto_choice_and_env_override(monkeypatch):
    from fastspec.ops.ssm import choose_backend

    cpu = torch.device("cpu")
    assert choose_backend("linear_scan", "auto", cpu) == "torch"
    monkeypatch.setenv("FASTSPEC_BACKEND", "triton")
    if fastspec.backends()["triton"].available:
        assert choose_backend("linear_scan", "auto", DEVICE) == "triton"
    assert choose_backend("linear_scan", "torch", cpu) == "torch"
