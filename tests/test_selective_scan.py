"""fastspec.selective_scan and selective_state_update against mamba's definition written as a
float64 loop (fastspec/reference/ssm.py), on every backend available here; the compat module."""
import pytest
import torch
import torch.nn.functional as F

import fastspec
from fastspec.compat import mamba_ssm as compat
from fastspec.ops.ssm import selective_scan_op
from fastspec.reference.ssm import selective_scan_reference, selective_state_update_reference

from conftest import DEVICE, backend_params
from test_linear_scan import assert_close as _assert_close

FLOAT32_FLOOR = 4e-6
"""The family's float32 floor: with Δ down to 1e-3 and |A| about 1 a state keeps ~1000 steps,
each rounded (the decay exp(ΔA) once per step). Measured at L = 300, N = 5 over 200 seeds on
the torch and cpu backends: outputs, last states and per-element gradients up to 2.1e-6."""

SUMMED_FLOAT32_FLOOR = 1e-5
"""Gradients that sum over batch and time (A, D, delta_bias, fixed B and C): where a channel's
sum nearly cancels, the summands' rounding grows relative to the sum. Up to 5.1e-6 measured
(delta_bias, in the same 200 seeds)."""

SUMMED = {"A", "D", "delta_bias"}
"""Checked over the whole tensor, not channel by channel: one channel's sum can cancel."""


def assert_close(out, ref):
    _assert_close(out, ref, FLOAT32_FLOOR)


def assert_grad_close(name, grad, ref, kwargs):
    if name in SUMMED or (name in ("B", "C") and kwargs[name].dim() == 2):
        _assert_close(grad.flatten(), ref.flatten(), SUMMED_FLOAT32_FLOOR)
    else:
        assert_close(grad, ref)

BACKENDS = backend_params("torch", "triton", "cpu")
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
FORMS = [("fixed", "fixed"), ("var", "var"), ("group", "group"), ("fixed", "var"), ("var", "group")]
OPTIONS = {  # which optional inputs a call has
    "plain": set(),
    "D": {"D"},
    "z": {"z"},
    "softplus": {"delta_bias", "softplus"},
    "initial": {"initial_state"},
    "all": {"D", "z", "delta_bias", "softplus", "initial_state"},
}


def make_inputs(batch, channels, L, N, dtype=torch.float32, forms=("var", "var"), options="all", groups=2,
                device=DEVICE):
    """Keyword arguments of selective_scan with realistic magnitudes: Δ about 1e-3 … 0.1 after
    softplus (Mamba's dt init), A = −exp(N(0, 0.5²)), the rest standard normal."""
    state = torch.float64 if dtype == torch.float64 else torch.float32
    have = OPTIONS[options]
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))

    def rand(*shape, dt=state, scale=1.0):
        return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dt)

    def form(kind):
        return {"fixed": lambda: rand(channels, N), "var": lambda: rand(batch, N, L, dt=dtype),
                "group": lambda: rand(batch, groups, N, L, dt=dtype)}[kind]()

    if "softplus" in have:
        delta = rand(batch, channels, L, dt=dtype, scale=0.5)
    else:
        delta = (torch.rand((batch, channels, L), generator=g, dtype=torch.float64) * 0.1).to(device=device,
                                                                                               dtype=dtype)
    kwargs = dict(u=rand(batch, channels, L, dt=dtype), delta=delta,
                  A=-torch.exp(rand(channels, N, scale=0.5)), B=form(forms[0]), C=form(forms[1]))
    if "D" in have:
        kwargs["D"] = rand(channels)
    if "z" in have:
        kwargs["z"] = rand(batch, channels, L, dt=dtype)
    if "delta_bias" in have:  # softplus(bias) log-uniform in [1e-3, 0.1]
        dt0 = torch.exp(torch.rand(channels, generator=g, dtype=torch.float64) * 4.6 - 6.9)
        kwargs["delta_bias"] = (dt0 + torch.log(-torch.expm1(-dt0))).to(device=device, dtype=state)
    if "initial_state" in have:
        kwargs["initial_state"] = rand(batch, channels, N)
    kwargs["delta_softplus"] = "softplus" in have
    return kwargs


def reference(kwargs, grads=None):
    """(out, last) of the float64 loop, and with grads = (grad_out, grad_last) the gradients
    of every tensor input (in NAMES order, None for absent ones)."""
    wide = {k: (v.detach().cpu().double().requires_grad_() if isinstance(v, torch.Tensor) else v)
            for k, v in kwargs.items()}
    out, last = selective_scan_reference(**wide, return_last_state=True)
    if grads is None:
        return out, last
    tensors = [wide.get(n) for n in NAMES]
    found = torch.autograd.grad([out, last], [t for t in tensors if t is not None],
                                [g.cpu().double() for g in grads])
    found = iter(found)
    return out, last, [next(found) if t is not None else None for t in tensors]


def _params(lengths_torch, lengths_triton):
    """(backend, L) for each backend: Triton (the interpreter is slow) at its own lengths."""
    return [pytest.param(p.values[0], L, marks=p.marks, id=f"{p.values[0]}-{L}")
            for p in BACKENDS for L in (lengths_triton if p.values[0] == "triton" else lengths_torch)]


# --------------------------------------------------------------------------- forward


def _float64_cases():
    """Every B/C form × option set at L = 1, 7, 64, 1000 on torch, and with every option at
    4096 (the reference loop is slow); at L = 1, 7, 65 (one past a chunk) on cpu, and with every
    option at 1000; plain and all options at L = 1, 20 on Triton."""
    lengths_of = {"torch": lambda options: [1, 7, 64, 1000] + [4096] * (options == "all"),
                  "cpu": lambda options: [1, 7, 65] + [1000] * (options == "all"), "triton": lambda options: [1, 20]}
    cases = []
    for p in BACKENDS:
        backend = p.values[0]
        for options in OPTIONS:
            lengths = lengths_of[backend](options)
            if backend == "triton" and options not in ("plain", "all"):
                continue
            cases += [pytest.param(backend, L, forms, options, marks=p.marks,
                                   id=f"{backend}-{L}-{'-'.join(forms)}-{options}") for L in lengths for forms in FORMS]
    return cases


@pytest.mark.parametrize("backend,L,forms,options", _float64_cases())
def test_float64_matches_reference(backend, L, forms, options):
    kwargs = make_inputs(2, 4, L, 3, torch.float64, forms, options)
    out, last = fastspec.selective_scan(**kwargs, return_last_state=True, backend=backend)
    assert out.dtype == torch.float64 and out.shape == (2, 4, L) and last.shape == (2, 4, 3)
    ref_out, ref_last = reference(kwargs)
    torch.testing.assert_close(out.cpu(), ref_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(last.cpu(), ref_last, rtol=1e-10, atol=1e-12)
    assert torch.equal(fastspec.selective_scan(**kwargs, backend=backend), out)


@pytest.mark.parametrize("backend,L", _params([7, 1000], [20]))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_dtypes_match_reference(backend, L, dtype):
    kwargs = make_inputs(2, 4, L, 16, dtype, ("var", "group"), "all")
    out, last = fastspec.selective_scan(**kwargs, return_last_state=True, backend=backend)
    assert out.dtype == dtype and last.dtype == torch.float32
    ref_out, ref_last = reference(kwargs)
    assert_close(out, ref_out)
    assert_close(last, ref_last)


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_dependent_b_and_c_in_float32_with_half_u(backend):
    kwargs = make_inputs(2, 4, 9, 4, torch.bfloat16, ("var", "group"), "all")
    kwargs["B"], kwargs["C"] = kwargs["B"].float(), kwargs["C"].float()
    assert_close(fastspec.selective_scan(**kwargs, backend=backend), reference(kwargs)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunks_carry_the_state(backend, monkeypatch):
    """Lengths around the chunk size (8 steps on torch, 16 on Triton, for the test; the cpu
    kernel's 64): each chunk starts from the state the one before left, forward and backward."""
    from fastspec.ops import ssm
    from fastspec.triton_kernels import ssm as kernels

    monkeypatch.setattr(ssm, "TORCH_SELECTIVE_ELEMENTS", 8 * 4 * 3)
    monkeypatch.setattr(ssm, "TORCH_SELECTIVE_MIN_CHUNK", 8)
    monkeypatch.setattr(kernels, "SELECTIVE_TILE", 1)  # the smallest chunk, 16
    for L in {"torch": (7, 8, 9, 40), "triton": (17, 40), "cpu": (63, 64, 65, 130)}[backend]:
        kwargs = make_inputs(1, 4, L, 3, torch.float64, ("fixed", "var"), "all")
        tensors = {k: v.requires_grad_() for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
        out, last = fastspec.selective_scan(**kwargs, return_last_state=True, backend=backend)
        grads = (torch.randn_like(out), torch.randn_like(last))
        got = torch.autograd.grad([out, last], list(tensors.values()), grads)
        ref_out, ref_last, ref_grads = reference(kwargs, grads)
        torch.testing.assert_close(out.detach().cpu(), ref_out, rtol=1e-10, atol=1e-12)
        for name, g in zip(tensors, got):
            torch.testing.assert_close(g.cpu(), ref_grads[NAMES.index(name)], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    base = make_inputs(4, 6, 10, 3, torch.float32, ("fixed", "group"), "all")
    kwargs = {k: (v.transpose(0, 1).contiguous().transpose(0, 1) if isinstance(v, torch.Tensor) and v.dim() == 3
                  else v) for k, v in base.items()}
    kwargs["u"] = torch.randn(4, 12, 10, device=DEVICE)[:, ::2]
    kwargs["A"] = -torch.rand(3, 6, device=DEVICE).T - 0.5
    kwargs["C"] = torch.randn(4, 2, 3, 1, device=DEVICE).expand(4, 2, 3, 10)
    out = fastspec.selective_scan(**kwargs, backend=backend)
    assert out.is_contiguous()
    assert_close(out, reference(kwargs)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    kwargs = make_inputs(0, 4, 5, 3, torch.float32, ("var", "fixed"), "all")
    out, last = fastspec.selective_scan(**kwargs, return_last_state=True, backend=backend)
    assert out.shape == (0, 4, 5) and last.shape == (0, 4, 3)


# --------------------------------------------------------------------------- autograd


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("forms", [("fixed", "fixed"), ("var", "group"), ("group", "var")], ids=lambda f: "-".join(f))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_grads_match_reference(backend, forms, dtype):
    """Every differentiable input, the last state's gradient included."""
    L = 13 if backend == "triton" else 300
    kwargs = make_inputs(2, 4, L, 5, dtype, forms, "all")
    tensors = {k: v.requires_grad_() for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
    out, last = fastspec.selective_scan(**kwargs, return_last_state=True, backend=backend)
    grads = (torch.randn_like(out), torch.randn_like(last))
    got = torch.autograd.grad([out, last], list(tensors.values()), grads)
    *_, expect = reference(kwargs, grads)
    for name, g in zip(tensors, got):
        assert g.dtype == tensors[name].dtype and g.shape == tensors[name].shape, name
        assert_grad_close(name, g, expect[NAMES.index(name)], kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_through_sum(backend):
    """out.sum().backward() sends an expanded (stride-0) gradient into the backward."""
    kwargs = make_inputs(2, 4, 11, 3, torch.float32, ("var", "var"), "all")
    tensors = {k: v.requires_grad_() for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
    fastspec.selective_scan(**kwargs, backend=backend).sum().backward()
    *_, expect = reference(kwargs, (torch.ones(2, 4, 11), torch.zeros(2, 4, 3)))
    for name, t in tensors.items():
        assert_grad_close(name, t.grad, expect[NAMES.index(name)], kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_backward(backend):
    """Under torch.use_deterministic_algorithms(True) the Triton backward sums dB and dC per
    program into slots, then in order (no atomics): two runs give the same bits."""
    kwargs = make_inputs(2, 8, 12, 4, torch.float32, ("var", "group"), "all", groups=1)
    tensors = [v.requires_grad_() for v in kwargs.values() if isinstance(v, torch.Tensor)]
    grad = torch.randn(2, 8, 12, device=DEVICE)
    runs = []
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(2):
            runs.append(torch.autograd.grad(fastspec.selective_scan(**kwargs, backend=backend), tensors, grad))
    finally:
        torch.use_deterministic_algorithms(False)
    free = torch.autograd.grad(fastspec.selective_scan(**kwargs, backend=backend), tensors, grad)
    for a, b, c in zip(*runs, free):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("forms", [("fixed", "fixed"), ("var", "group")], ids=lambda f: "-".join(f))
def test_gradcheck_and_gradgradcheck(forms):
    kwargs = make_inputs(1, 2, 5, 2, torch.float64, forms, "all", groups=2)
    names = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
    inputs = [kwargs[k].requires_grad_() for k in names]

    def fn(*tensors):
        out, last = fastspec.selective_scan(**dict(zip(names, tensors)), delta_softplus=True, return_last_state=True,
                                            backend="torch")
        return out, last

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


# --------------------------------------------------------------------------- registration


def _op_args(kwargs, backend):
    return (kwargs["u"], kwargs["delta"], kwargs["A"], kwargs["B"], kwargs["C"], kwargs.get("D"), kwargs.get("z"),
            kwargs.get("delta_bias"), kwargs.get("initial_state"), kwargs["delta_softplus"], backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_opcheck(backend, dtype):
    kwargs = make_inputs(2, 4, 6, 3, dtype, ("var", "group"), "all")
    if dtype == torch.float32:
        for v in kwargs.values():
            if isinstance(v, torch.Tensor):
                v.requires_grad_()
    torch.library.opcheck(torch.ops.fastspec.selective_scan.default, _op_args(kwargs, backend))
    plain = make_inputs(1, 2, 3, 2, dtype, ("fixed", "fixed"), "plain")
    torch.library.opcheck(torch.ops.fastspec.selective_scan.default, _op_args(plain, backend))
    detached = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    out, last, starts = selective_scan_op(*_op_args(detached, backend))
    args = (torch.randn_like(out), torch.randn_like(last), *_op_args(detached, backend)[:-2], starts,
            detached["delta_softplus"], [True] * 9, backend)
    torch.library.opcheck(torch.ops.fastspec.selective_scan_backward.default, args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    torch._dynamo.reset()

    def layer(u, delta, A, B, C, D):
        out, last = fastspec.selective_scan(u * 2.0, delta, A, B, C, D, delta_softplus=True, return_last_state=True,
                                            backend=backend)
        return torch.tanh(out), last.sum()

    kwargs = make_inputs(2, 4, 8, 3, torch.float32, ("var", "var"), "D")
    args = [kwargs[k] for k in ("u", "delta", "A", "B", "C", "D")]
    compiled = torch.compile(layer, fullgraph=True)
    for got, expect in zip(compiled(*args), layer(*args)):
        torch.testing.assert_close(got, expect)


# --------------------------------------------------------------------------- decoding step


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_state_update_continues_the_scan(backend, dtype):
    """selective_scan over L tokens, then selective_state_update with token L+1, gives the
    scan over L+1 tokens: its last output and its last state."""
    kwargs = make_inputs(2, 4, 9, 5, dtype, ("var", "var"), "all")
    full_out, full_last = fastspec.selective_scan(**kwargs, return_last_state=True, backend=backend)
    head = {k: (v[..., :-1] if isinstance(v, torch.Tensor) and k in ("u", "delta", "z", "B", "C") else v)
            for k, v in kwargs.items()}
    _, state = fastspec.selective_scan(**head, return_last_state=True, backend=backend)
    before = state.clone()
    y = fastspec.selective_state_update(state, kwargs["u"][..., -1], kwargs["delta"][..., -1], kwargs["A"],
                                        kwargs["B"][..., -1], kwargs["C"][..., -1], kwargs["D"], kwargs["z"][..., -1],
                                        kwargs["delta_bias"], True, backend=backend)
    assert y.dtype == dtype and y.shape == (2, 4) and not torch.equal(state, before)  # in place
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(y, full_out[..., -1], **tol)
    torch.testing.assert_close(state, full_last, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("heads", [None, (4, 2), (4, 1), (3, 3)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_state_update_matches_reference(backend, heads, dtype):
    """Single-head and multi-head (H heads, G groups) forms, optional inputs included."""
    batch, dim, N = 2, 5, 4
    lead = (batch, dim) if heads is None else (batch, heads[0], dim)
    per_head = lead[1:]
    state = torch.randn(*lead, N, device=DEVICE)
    x, dt, z = (torch.randn(lead, device=DEVICE).to(dtype) for _ in range(3))
    A = -torch.rand(*per_head, N, device=DEVICE) - 0.5
    bc_shape = (batch, N) if heads is None else (batch, heads[1], N)
    B, C = torch.randn(bc_shape, device=DEVICE), torch.randn(bc_shape, device=DEVICE)
    D, dt_bias = torch.randn(per_head, device=DEVICE), torch.randn(per_head, device=DEVICE)
    expect_state, expect_y = selective_state_update_reference(state, x, dt, A, B, C, D, z, dt_bias, True)
    y = compat.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, True, backend=backend)
    assert y.dtype == dtype
    assert_close(y, expect_y)
    assert_close(state, expect_state)


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_update_takes_an_expanded_a_and_half_state(backend):
    """Mamba-2 passes A (H,) expanded to (H, D, N) with stride 0, and may keep a bf16 state
    (here a strided view into a larger cache, written through in place)."""
    cache = torch.randn(2, 3, 4, 10, device=DEVICE).bfloat16()
    state = cache[..., ::2]
    x, dt = torch.randn(2, 3, 4, device=DEVICE), torch.rand(2, 3, 4, device=DEVICE)
    A = (-torch.rand(3, device=DEVICE))[:, None, None].expand(3, 4, 5)
    B, C = torch.randn(2, 1, 5, device=DEVICE), torch.randn(2, 1, 5, device=DEVICE)
    expect_state, expect_y = selective_state_update_reference(state, x, dt, A, B, C)
    y = fastspec.selective_state_update(state, x, dt, A, B, C, backend=backend)
    assert_close(y, expect_y)
    assert state.dtype == torch.bfloat16
    assert_close(cache[..., ::2], expect_state)


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_update_opcheck(backend):
    state, x, dt, z = torch.randn(2, 4, 3, device=DEVICE), torch.randn(2, 4, device=DEVICE), torch.rand(
        2, 4, device=DEVICE), torch.randn(2, 4, device=DEVICE)
    A, B, C = -torch.rand(4, 3, device=DEVICE), torch.randn(2, 3, device=DEVICE), torch.randn(2, 3, device=DEVICE)
    args = (state, x, dt, A, B, C, torch.randn(4, device=DEVICE), z, torch.randn(4, device=DEVICE), True, backend)
    torch.library.opcheck(torch.ops.fastspec.selective_state_update.default, args)


# --------------------------------------------------------------------------- compat


def test_compat_selective_scan_fn_has_mambas_argument_order():
    kwargs = make_inputs(2, 4, 10, 3, torch.float32, ("var", "var"), "all")
    args = [kwargs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    out = compat.selective_scan_fn(*args, True)
    expect = selective_scan_reference(*args, True, None)
    assert_close(out, expect)
    out, last = compat.selective_scan_fn(*args, True, True, initial_state=kwargs["initial_state"])
    ref_out, ref_last = reference(kwargs)
    assert_close(out, ref_out)
    assert_close(last, ref_last)
    mamba = pytest.importorskip("mamba_ssm.ops.selective_scan_interface")
    if DEVICE.type == "cuda":
        torch.testing.assert_close(compat.selective_scan_fn(*args, True), mamba.selective_scan_fn(*args, True),
                                   rtol=1e-4, atol=1e-4)


def test_mamba_reference_semantics_by_hand():
    """One channel, two steps, written out: Δ = softplus(delta + bias), x = e^{ΔA}x + ΔBu,
    out = (Cx + Du)·silu(z)."""
    u, delta, z = torch.tensor([[[1.0, -2.0]]]), torch.tensor([[[0.3, -0.4]]]), torch.tensor([[[0.5, 1.5]]])
    A, B, C = torch.tensor([[-0.7]]), torch.tensor([[[0.2, 1.1]]]), torch.tensor([[[0.9, -0.6]]])
    D, bias = torch.tensor([0.25]), torch.tensor([0.1])
    out = fastspec.selective_scan(u, delta, A, B, C, D, z, bias, True, backend="torch").double()
    dt = F.softplus(torch.tensor([0.4, -0.3], dtype=torch.float64))
    x0 = dt[0] * 0.2 * 1.0
    x1 = torch.exp(dt[1] * -0.7) * x0 + dt[1] * 1.1 * -2.0
    expect = torch.stack([(0.9 * x0 + 0.25) * F.silu(torch.tensor(0.5, dtype=torch.float64)),
                          (-0.6 * x1 - 0.5) * F.silu(torch.tensor(1.5, dtype=torch.float64))])
    torch.testing.assert_close(out.flatten(), expect, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- bad input

_K = make_inputs(2, 4, 6, 3, torch.float32, ("var", "var"), "plain", device="cpu")


def _with(**changes):
    return {**_K, **changes}


@pytest.mark.parametrize("kwargs,error,message", [
    (_with(u=_K["u"].long()), TypeError, "u must be float16, bfloat16, float32 or float64"),
    (_with(u=_K["u"][0]), ValueError, r"u must be \(B, D, L\) with L >= 1"),
    (_with(delta=_K["delta"].double()), TypeError, "delta must have u's dtype"),
    (_with(delta=_K["delta"][:, :2]), ValueError, "delta must have u's shape"),
    (_with(A=_K["A"].double()), TypeError, "A must be real float32 for u of torch.float32"),
    (_with(A=_K["A"].to(torch.complex64)), TypeError, "A must be real float32"),
    (_with(A=_K["A"][:2]), ValueError, r"A must be \(D, N\) with D = 4"),
    (_with(B=torch.randn(2, 3, 5)), ValueError, r"B must be \(D, N\) = \(4, 3\), \(B, N, L\) = \(2, 3, 6\)"),
    (_with(C=torch.randn(2, 3, 3, 6)), ValueError, "with G dividing D = 4"),
    (_with(B=torch.randn(4, 3).half()), TypeError, r"a fixed \(D, N\) B must be float32"),
    (_with(C=_K["C"].double()), TypeError, "an input-dependent C must be float32 for u of torch.float32"),
    (_with(D=torch.randn(5)), ValueError, r"D must be \(4,\)"),
    (_with(delta_bias=torch.randn(4).half()), TypeError, "delta_bias must be float32"),
    (_with(initial_state=torch.randn(2, 4, 4)), ValueError, r"initial_state must be \(2, 4, 3\)"),
    (_with(z=_K["u"][..., :3]), ValueError, "z must have u's shape"),
    (_with(delta_softplus=1), TypeError, "delta_softplus must be a bool"),
    (_with(return_last_state="yes"), TypeError, "return_last_state must be a bool"),
    (_with(B=_K["B"].to("meta")), ValueError, "every tensor must be on the device of u"),
    (_with(backend="cuda"), RuntimeError, "backend 'cuda' is not usable"),
])
def test_bad_input_raises_before_any_kernel(kwargs, error, message):
    if error is RuntimeError and fastspec.backends()["cuda"].available:
        pytest.skip("cuda is available")
    with pytest.raises(error, match=message):
        fastspec.selective_scan(**kwargs)


@pytest.mark.parametrize("backend", backend_params("triton"))
def test_triton_rejects_a_state_too_large(backend):
    kwargs = make_inputs(1, 2, 4, 257, torch.float32, ("fixed", "fixed"), "plain")
    with pytest.raises(ValueError, match="the triton backend takes N <= 256"):
        fastspec.selective_scan(**kwargs, backend=backend)
    assert fastspec.selective_scan(**kwargs, backend="torch").shape == (1, 2, 4)


@pytest.mark.parametrize("change,error,message", [
    (dict(state=torch.randn(2, 4)), ValueError, r"state must be \(B, D, N\) or, with heads, \(B, H, D, N\)"),
    (dict(x=torch.randn(2, 5)), ValueError, r"x must be \(2, 4\) for state of shape \(2, 4, 3\)"),
    (dict(A=torch.randn(3, 4)), ValueError, r"A must be \(4, 3\)"),
    (dict(B=torch.randn(2, 1, 3)), ValueError, r"B must be \(2, 3\)"),
    (dict(dt=torch.randn(2, 4).double()), TypeError, "dt and z must have x's dtype"),
    (dict(x=torch.ones(2, 4, dtype=torch.int32)), TypeError, "x must be float16, bfloat16, float32 or float64"),
    (dict(dt_softplus=None), TypeError, "dt_softplus must be a bool"),
])
def test_state_update_bad_input(change, error, message):
    args = dict(state=torch.randn(2, 4, 3), x=torch.randn(2, 4), dt=torch.rand(2, 4), A=-torch.rand(4, 3),
                B=torch.randn(2, 3), C=torch.randn(2, 3))
    args.update(change)
    with pytest.raises(error, match=message):
        fastspec.selective_state_update(**args)
    with pytest.raises(ValueError, match=r"B must be \(B, G, N\) with G dividing H = 4"):
        fastspec.selective_state_update(torch.randn(2, 4, 5, 3), torch.randn(2, 4, 5), torch.rand(2, 4, 5),
                                        -torch.rand(4, 5, 3), torch.randn(2, 3, 3), torch.randn(2, 3, 3))


# --------------------------------------------------------------------------- SelectiveSSM layer


def _mamba_by_hand(layer, hidden):
    """The Mamba-1 mixer written out with the float64 reference scan (mamba's slow path)."""
    L = hidden.shape[1]
    x, z = layer.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)
    x = F.silu(layer.conv1d(x)[..., :L])
    dt, B, C = torch.split(layer.x_proj(x.transpose(1, 2)), [layer.dt_rank, layer.d_state, layer.d_state], dim=-1)
    dt = (dt @ layer.dt_proj.weight.T).transpose(1, 2)
    y = selective_scan_reference(x, dt, -torch.exp(layer.A_log), B.transpose(1, 2), C.transpose(1, 2), layer.D, z,
                                 layer.dt_proj.bias, True)
    return layer.out_proj(y.transpose(1, 2).to(hidden.dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_selective_ssm_forward_is_the_mamba_mixer(backend):
    layer = fastspec.nn.SelectiveSSM(8, d_state=4, backend=backend, dtype=torch.float64).to(DEVICE)
    hidden = torch.randn(2, 9, 8, dtype=torch.float64, device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(layer(hidden), _mamba_by_hand(layer, hidden), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_selective_ssm_step_matches_forward_token_by_token(backend):
    """Decoding from empty states, and after a prompt (forward with a cache), gives the
    full forward's output at every position."""
    layer = fastspec.nn.SelectiveSSM(8, d_state=4, d_conv=3, backend=backend, dtype=torch.float64).to(DEVICE)
    hidden = torch.randn(2, 7, 8, dtype=torch.float64, device=DEVICE)
    with torch.no_grad():
        full = layer(hidden)
        conv, ssm = layer.allocate_inference_cache(2)
        steps = torch.cat([layer.step(hidden[:, t:t + 1], conv, ssm) for t in range(7)], dim=1)
        torch.testing.assert_close(steps, full, rtol=1e-10, atol=1e-10)
        for prompt in (1, 2, 5):
            conv, ssm = layer.allocate_inference_cache(2)
            head = layer(hidden[:, :prompt], cache=(conv, ssm))
            tail = [layer.step(hidden[:, t], conv, ssm) for t in range(prompt, 7)]
            torch.testing.assert_close(torch.cat([head, torch.stack(tail, 1)], 1), full, rtol=1e-10, atol=1e-10)


def test_selective_ssm_init_and_training():
    layer = fastspec.nn.SelectiveSSM(32, d_state=16, dt_min=1e-3, dt_max=0.1).to(DEVICE)
    assert layer.d_inner == 64 and layer.dt_rank == 2
    dt = F.softplus(layer.dt_proj.bias.detach())
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    torch.testing.assert_close(layer.A_log[5], torch.log(torch.arange(1.0, 17.0, device=DEVICE)))
    assert torch.all(layer.D == 1) and layer.dt_proj.weight.abs().max() <= 2**-0.5
    hidden = torch.randn(2, 20, 32, device=DEVICE).bfloat16()
    layer = layer.to(torch.bfloat16)
    layer.A_log.data, layer.D.data = layer.A_log.data.float(), layer.D.data.float()
    out = layer(hidden)
    assert out.dtype == torch.bfloat16 and out.shape == hidden.shape
    out.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
    with pytest.raises(ValueError, match="one token at a time"):
        layer.step(hidden[:, :2], *layer.allocate_inference_cache(2))


def test_auto_table_on_cuda(monkeypatch):
    """CUDA tensors take Triton where it takes the call (N <= 256 for the scans, <= 1024 for
    the S4D kernel), torch otherwise; CPU tensors take the C++ kernels for selective_scan
    (N <= 256) and its decoding step, torch for the rest (checked as if every backend were here)."""
    from fastspec.ops import ssm

    monkeypatch.setattr(ssm._backend, "device_ok", lambda name, device: None)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for op in ("linear_scan", "selective_scan", "selective_state_update", "ssm_kernel"):
        assert ssm._auto_choice(op, cuda, 16) == "triton"
        assert ssm._auto_choice(op, cpu, 16) == ("cpu" if op.startswith("selective") else "torch")
    assert ssm._auto_choice("selective_scan", cpu, 256) == "cpu"
    assert ssm._auto_choice("selective_scan", cpu, 257) == "torch"
    assert ssm._auto_choice("selective_scan", cuda, 257) == "torch"
    assert ssm._auto_choice("selective_state_update", cuda, 257) == "torch"
    assert ssm._auto_choice("ssm_kernel", cuda, 1024) == "triton"
    assert ssm._auto_choice("ssm_kernel", cuda, 1025) == "torch"
