"""The C++ selective scan and decoding step (backend "cpu", csrc/ssm/selective_scan_cpu*): what
the backend-parametrised tests of test_selective_scan.py do not reach — its exp, thread counts
and instruction sets, the chunk edges, N from 1 to its bound, large |Δ·A|, and its ops' own
checks. CPU tensors throughout, so that on a GPU machine too (where the others run on CUDA)."""
import functools

import pytest
import torch

import fastspec
from fastspec.ops import ssm as ops
from fastspec.reference.ssm import selective_state_update_reference

from test_selective_scan import NAMES, assert_close, assert_grad_close, reference
from test_selective_scan import make_inputs as _make_inputs

make_inputs = functools.partial(_make_inputs, device="cpu")

CPU = fastspec.backends()["cpu"]
pytestmark = pytest.mark.skipif(not CPU.available, reason=f"cpu: {CPU.reason}")


def _isas():
    """Every instruction set this build runs on this CPU."""
    if not CPU.available:
        return []
    import fastspec._C as ext

    found = [name for name in ("generic", "avx2", "avx512f") if _try_isa(ext, name)]
    ext.cpu_isa("")
    return found


def _try_isa(ext, name):
    try:
        ext.cpu_isa(name)
    except ValueError:
        return False
    return True


@pytest.fixture
def isa():
    """fastspec._C.cpu_isa for one test (the best one restored after)."""
    import fastspec._C as ext

    yield ext.cpu_isa
    ext.cpu_isa("")


@pytest.fixture
def threads():
    """torch.set_num_threads for one test (restored after)."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _run(kwargs, grads=None):
    """(out, last) on the cpu backend, and with grads = (grad_out, grad_last) the gradients of
    every tensor input (NAMES order, None for absent ones)."""
    tensors = {k: v.detach().requires_grad_() for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
    args = {**kwargs, **tensors}
    out, last = fastspec.selective_scan(**args, return_last_state=True, backend="cpu")
    if grads is None:
        return out.detach(), last.detach()
    found = dict(zip(tensors, torch.autograd.grad([out, last], list(tensors.values()), grads)))
    return out.detach(), last.detach(), [found.get(name) for name in NAMES]


def _check(kwargs, grads):
    """The cpu backend's output, last state and every gradient (for grads = (grad_out,
    grad_last)) against the float64 reference, with the family's tolerance rule."""
    out, last, found = _run(kwargs, grads)
    ref_out, ref_last, ref_grads = reference(kwargs, grads)
    assert_close(out, ref_out)
    assert_close(last, ref_last)
    for name, g, r in zip(NAMES, found, ref_grads):
        if r is not None:
            assert g.dtype == kwargs[name].dtype, name
            assert_grad_close(name, g, r, kwargs)


def _grads(batch, channels, L, N, dtype=torch.float32):
    return torch.randn(batch, channels, L).to(dtype), torch.randn(batch, channels, N)


# --------------------------------------------------------------------------- exp


def _exp_of(a: torch.Tensor) -> torch.Tensor:
    """The kernel's exp(a) for a float32 vector a: one step from the state 1 with Δ = 1, B = 0,
    so the last state is exp(Δ·A) as the kernel computes it (N = 256 values per channel)."""
    n = -(-a.numel() // 256) * 256
    A = torch.nn.functional.pad(a, (0, n - a.numel())).reshape(-1, 256)
    channels = A.shape[0]
    ones = torch.ones(1, channels, 1)
    last = fastspec.selective_scan(ones, ones, A, torch.zeros(channels, 256), torch.zeros(channels, 256),
                                   initial_state=torch.ones(1, channels, 256), return_last_state=True,
                                   backend="cpu")[1]
    return last.flatten()[:a.numel()]


def _ulps(got: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """|got − exact| in units of the float32 spacing at exact (2^−149 below the normal range)."""
    e = torch.frexp(exact.clamp_min(2.0**-126))[1].double()
    ulp = torch.pow(2.0, e - 24)
    return (got.double() - exact).abs() / ulp


@pytest.mark.parametrize("name", _isas())
def test_exp_is_within_one_ulp(isa, name):
    """Over the float32 range whose exp is finite and nonzero (2^20 points, arguments of every
    exponent, subnormal results), and the edges: 0 below −104, +inf above 88.73, NaN stays NaN."""
    isa(name)
    a = torch.cat([torch.linspace(-103.9, 88.72, 2**20, dtype=torch.float64),
                   torch.logspace(-30, 1.9, 4096, dtype=torch.float64),
                   -torch.logspace(-30, 2.0, 4096, dtype=torch.float64),
                   torch.tensor([0.0, -87.0, -100.0, 88.7], dtype=torch.float64)]).float()
    assert _ulps(_exp_of(a), torch.exp(a.double())).max() <= 1.0
    got = _exp_of(torch.tensor([-104.5, -1e4, -float("inf"), 88.8, 1e4, float("inf"), float("nan")]))
    assert torch.equal(got[:6], torch.tensor([0.0] * 3 + [float("inf")] * 3)) and torch.isnan(got[6])


@pytest.mark.parametrize("name", _isas())
def test_softplus_is_within_two_ulp(isa, name):
    """The kernel's Δ = softplus(raw) (one step with A = 0, B = C = 1, u = 1 gives out = Δ), over
    raw in [−104, 25] and around the threshold 20, against softplus in float64: within 2 ulp
    (1.75 measured; torch's float32 F.softplus: 1.36)."""
    isa(name)
    raw = torch.cat([torch.linspace(-104, 25, 2**17, dtype=torch.float64),
                     torch.tensor([-1e-30, 0.0, 1e-30, 19.99, 20.0, 20.01], dtype=torch.float64)]).float()
    rows = raw.numel()
    out = fastspec.selective_scan(torch.ones(rows, 1, 1), raw.reshape(rows, 1, 1), torch.zeros(1, 1), torch.ones(1, 1),
                                  torch.ones(1, 1), delta_softplus=True, backend="cpu").flatten()
    assert _ulps(out, torch.nn.functional.softplus(raw.double())).max() <= 2.0


# --------------------------------------------------------------------------- threads and instruction sets


@pytest.mark.parametrize("forms", [("var", "group"), ("fixed", "fixed")], ids="-".join)
def test_thread_counts_give_the_same_bits(threads, forms):
    """Forward and backward: rows and slices are split the same way whatever the threads."""
    kwargs = make_inputs(3, 48, 150, 5, torch.float32, forms, "all", groups=4)
    grads = _grads(3, 48, 150, 5)
    runs = []
    for count in (1, 2, 3):
        threads(count)
        out, last, found = _run(kwargs, grads)
        runs.append([out, last, *(g for g in found if g is not None)])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", _isas())
def test_every_instruction_set_matches_the_reference(isa, name):
    """Each instruction set's kernels (N = 13: a partial vector on every one)."""
    isa(name)
    kwargs = make_inputs(2, 4, 100, 13, torch.float32, ("var", "group"), "all")
    _check(kwargs, _grads(2, 4, 100, 13))


@pytest.mark.parametrize("forms", [("fixed", "fixed"), ("var", "group")], ids="-".join)
def test_gradcheck(forms):
    """Finite differences in float64 through the cpu forward and backward (L = 70: two chunks;
    fast mode: a random projection of the Jacobian, the full one takes 30 s)."""
    kwargs = make_inputs(1, 2, 70, 2, torch.float64, forms, "all", groups=2)
    names = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
    inputs = [kwargs[k].requires_grad_() for k in names]

    def fn(*tensors):
        return fastspec.selective_scan(**dict(zip(names, tensors)), delta_softplus=True, return_last_state=True,
                                       backend="cpu")

    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


# --------------------------------------------------------------------------- edges


@pytest.mark.parametrize("L", [1, 63, 64, 65, 129])
def test_lengths_around_the_chunk(L):
    kwargs = make_inputs(2, 3, L, 4, torch.float32, ("fixed", "var"), "all")
    _check(kwargs, _grads(2, 3, L, 4))


@pytest.mark.parametrize("forms", [("var", "group"), ("fixed", "fixed")], ids="-".join)
def test_units_of_several_channels(forms):
    """D = 48 with 4 groups: units of 3 channels (16 per batch element), 4 units per group of C,
    whose dC partials are added in order."""
    kwargs = make_inputs(2, 48, 70, 5, torch.float32, forms, "all", groups=4)
    _check(kwargs, _grads(2, 48, 70, 5))


@pytest.mark.parametrize("N", [1, 7, 16, 256])
def test_state_sizes(N):
    kwargs = make_inputs(1, 2, 70, N, torch.float32, ("group", "var"), "all", groups=2)
    _check(kwargs, _grads(1, 2, 70, N))


def test_state_size_above_the_bound_is_an_error_and_auto_takes_torch():
    kwargs = make_inputs(1, 2, 4, 257, torch.float32, ("fixed", "fixed"), "plain")
    with pytest.raises(ValueError, match="the cpu backend takes N <= 256"):
        fastspec.selective_scan(**kwargs, backend="cpu")
    assert ops.choose_backend("selective_scan", "auto", torch.device("cpu"), 257) == "torch"
    assert ops.choose_backend("selective_scan", "auto", torch.device("cpu"), 256) == "cpu"


def test_large_decays_in_float64():
    """|Δ·A| up to about 1e4: exp underflows to 0 (the state restarts from the step's input),
    in the forward and in the backward's recomputation; Δ·A > 0 (growing states) too."""
    kwargs = make_inputs(2, 3, 80, 4, torch.float64, ("var", "fixed"), "D")
    kwargs["delta"] = torch.rand(2, 3, 80, dtype=torch.float64) * 30
    kwargs["A"] = -torch.logspace(-2, 2.5, 12, dtype=torch.float64).reshape(3, 4)
    kwargs["A"][0, 0] = 0.01  # exp(+0.3) at most per step
    grads = _grads(2, 3, 80, 4)
    out, last, found = _run(kwargs, tuple(g.double() for g in grads))
    ref_out, ref_last, ref_grads = reference(kwargs, grads)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(last, ref_last, rtol=1e-10, atol=1e-12)
    for name, g, r in zip(NAMES, found, ref_grads):
        if r is not None:
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9, msg=name)


def test_large_decays_in_float32():
    kwargs = make_inputs(2, 3, 80, 4, torch.float32, ("var", "var"), "all")
    kwargs["delta"] = torch.randn(2, 3, 80) * 3 + 3  # softplus(3 + bias) up to ~ 15
    kwargs["A"] = -torch.logspace(-1, 2, 12).reshape(3, 4)
    _check(kwargs, _grads(2, 3, 80, 4))


def test_softplus_threshold_matches_torch():
    """Δ = raw above 20 (F.softplus' threshold), log1p(exp(raw)) below; its gradient 1 above."""
    kwargs = make_inputs(1, 2, 6, 3, torch.float64, ("fixed", "fixed"), "softplus")
    kwargs["delta"] = torch.tensor([[[19.5, 20.0, 20.5, -30.0, 0.0, 25.0]] * 2], dtype=torch.float64)
    kwargs["delta_bias"] = torch.zeros(2, dtype=torch.float64)
    kwargs["A"] = -torch.full((2, 3), 1e-3, dtype=torch.float64)
    grads = _grads(1, 2, 6, 3)
    out, last, found = _run(kwargs, tuple(g.double() for g in grads))
    ref_out, ref_last, ref_grads = reference(kwargs, grads)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(found[NAMES.index("delta")], ref_grads[NAMES.index("delta")], rtol=1e-10, atol=1e-12)


def test_non_contiguous_and_expanded_inputs():
    """Strided u, transposed A, expanded C and initial state, and a stride-0 gradient."""
    base = make_inputs(2, 6, 70, 3, torch.float32, ("var", "group"), "all", groups=3)
    kwargs = {k: (v.transpose(0, 1).contiguous().transpose(0, 1) if isinstance(v, torch.Tensor) and v.dim() == 3
                  else v) for k, v in base.items()}
    kwargs["u"] = torch.randn(2, 12, 70)[:, ::2]
    kwargs["A"] = (-torch.rand(3, 6) - 0.5).T
    kwargs["C"] = torch.randn(2, 3, 3, 1).expand(2, 3, 3, 70)
    kwargs["initial_state"] = torch.randn(1, 6, 3).expand(2, 6, 3)
    _check(kwargs, (torch.ones(1, 1, 1).expand(2, 6, 70), torch.zeros(2, 6, 3)))


def test_half_inputs_convert_to_float32():
    """bfloat16 u, delta, z, B: scanned in float32, out and the gradients in the inputs' dtypes."""
    kwargs = make_inputs(2, 4, 70, 5, torch.bfloat16, ("var", "fixed"), "all")
    _check(kwargs, _grads(2, 4, 70, 5, torch.bfloat16))


def test_auto_picks_cpu_for_cpu_tensors():
    kwargs = make_inputs(1, 2, 5, 3, torch.float32, ("var", "var"), "all")
    assert ops.choose_backend("selective_scan", "auto", torch.device("cpu"), 3) == "cpu"
    torch.testing.assert_close(fastspec.selective_scan(**kwargs), fastspec.selective_scan(**kwargs, backend="cpu"),
                               rtol=0, atol=0)


# --------------------------------------------------------------------------- the kernel op


def _kernel_args(kwargs):
    return (*ops._cpu_args(*(kwargs.get(n) for n in NAMES)), kwargs["delta_softplus"])


def test_kernel_opcheck():
    kwargs = make_inputs(2, 4, 70, 3, torch.float32, ("var", "group"), "all")
    args = _kernel_args(kwargs)
    torch.library.opcheck(torch.ops.fastspec.selective_scan_cpu.default, args)
    out, last, starts = torch.ops.fastspec.selective_scan_cpu(*args)
    assert starts.shape == (2, 4, 3, 2)
    torch.library.opcheck(torch.ops.fastspec.selective_scan_cpu_backward.default,
                          (torch.randn_like(out), torch.randn_like(last), *args[:-1], starts, args[-1]))


@pytest.mark.parametrize("change,message", [
    (dict(u=lambda t: t.transpose(1, 2).contiguous().transpose(1, 2)), "u must be a contiguous"),
    (dict(delta=lambda t: t.double()), "delta must be a contiguous Float"),
    (dict(A=lambda t: torch.zeros(4, 257)), r"1 <= N <= 256"),
    (dict(B=lambda t: t[:, :, :2]), "B must be a contiguous"),
    (dict(C=lambda t: torch.zeros(2, 3, 3, 6)), "with G dividing D = 4"),
    (dict(D=lambda t: t[:2]), "D must be a contiguous"),
])
def test_kernel_op_checks_its_arguments(change, message):
    """The op of fastspec._C takes only what the backend wrapper prepares; anything else is an
    error that names the argument, never a kernel run."""
    kwargs = make_inputs(2, 4, 6, 3, torch.float32, ("var", "group"), "all")
    args = dict(zip(NAMES, _kernel_args(kwargs)))
    for name, fn in change.items():
        args[name] = fn(args[name])
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fastspec.selective_scan_cpu(*(args[n] for n in NAMES), True)


# --------------------------------------------------------------------------- decoding step


@pytest.mark.parametrize("N", [1, 13, 300])
@pytest.mark.parametrize("heads", [None, (4, 2)], ids=str)
def test_state_update_sizes(N, heads):
    """A last partial vector of states, and N above the scan's bound (the step has none)."""
    batch, dim = 3, 5
    lead = (batch, dim) if heads is None else (batch, heads[0], dim)
    state = torch.randn(*lead, N)
    x, dt, z = torch.randn(lead), torch.randn(lead), torch.randn(lead)
    A = -torch.rand(*lead[1:], N) - 0.5
    bc_shape = (batch, N) if heads is None else (batch, heads[1], N)
    B, C = torch.randn(bc_shape), torch.randn(bc_shape)
    D, dt_bias = torch.randn(lead[1:]), torch.randn(lead[1:])
    expect_state, expect_y = selective_state_update_reference(state, x, dt, A, B, C, D, z, dt_bias, True)
    y = fastspec.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, True, backend="cpu")
    assert_close(y, expect_y)
    assert_close(state, expect_state)


def test_state_update_kernel_opcheck():
    args = (torch.randn(2, 2, 3, 5), torch.randn(2, 2, 3), torch.rand(2, 2, 3), -torch.rand(2, 3, 5),
            torch.randn(2, 1, 5), torch.randn(2, 1, 5), torch.randn(2, 3), torch.randn(2, 2, 3), torch.randn(2, 3), True)
    torch.library.opcheck(torch.ops.fastspec.selective_state_update_cpu.default, args)
    with pytest.raises(RuntimeError, match="x must be a contiguous"):
        torch.ops.fastspec.selective_state_update_cpu(args[0], args[1].transpose(1, 2).contiguous().transpose(1, 2),
                                                      *args[2:])
