"""fastspec.fft_conv and fft_conv2d against their float64 direct references, on every backend
that implements them (a backend registered in fastspec.ops.fftconv._IMPLS is covered here
without further changes); the FFTConv and Conv1dFFT modules; the errors."""
import dataclasses
import gc
import math

import pytest
import scipy.signal
import torch
import torch.nn.functional as F

import fastspec
from fastspec._backend import triton_interpreted
from fastspec.ops import fftconv as ops
from fastspec.reference.fftconv import fft_conv2d_reference, fft_conv_pytorch, fft_conv_reference

from conftest import DEVICE, assert_close_to_reference, backend_params, random_input


def _implemented(params):
    """Backend params; a backend without an fft_conv implementation (yet) is skipped."""
    out = []
    for param in params:
        name = param.values[0]
        marks = list(param.marks)
        if name not in ops._IMPLS:
            marks.append(pytest.mark.skip(reason=f"{name}: no fft_conv implementation yet"))
        out.append(pytest.param(name, marks=marks, id=name))
    return out


ALL_BACKENDS = _implemented(backend_params())
LENGTHS = [1, 2, 7, 100, 777, 1000, 1024, 4096]
INTERPRETER_LENGTHS = [1, 2, 7, 100, 777, 1024]
"""Lengths for Triton on its CPU interpreter (the GPU runs LENGTHS)."""
LONG = 16384
MODES = ops.MODES
HALF_AND_SINGLE = [torch.float32, torch.float16, torch.bfloat16]
FLOAT32_FLOOR = 1e-6
"""The family's float32 floor: an FFT of size n rounds about log2(n) times (the torch
backend: 1.5e-7 at L = 7, 2.6e-7 at L = 4096 against 1.5e-7 for twice one rounding)."""

VARIANTS = {  # name: (a filter shorter than L, the optional inputs given)
    "gates+D": (False, ("pregate", "postgate", "D")),
    "plain-short": (True, ()),
    "D": (False, ("D",)),  # folded into the filter's spectrum by the torch backend
    "postgate+D-short": (True, ("postgate", "D")),
}


def _by_backend(lengths, interpreted_lengths):
    """(backend, L) params: `interpreted_lengths` for Triton on the interpreter, else `lengths`."""
    params = []
    for param in ALL_BACKENDS:
        backend = param.values[0]
        chosen = interpreted_lengths if backend == "triton" and triton_interpreted() else lengths
        params += [pytest.param(backend, n, marks=param.marks, id=f"{backend}-{n}") for n in chosen]
    return params


def _taps(mode, L, short):
    """The filter length: the longest the mode takes, or a shorter one."""
    if mode == "bidirectional":
        return 2 * (L // 3) + 1 if short else 2 * L - 1
    return max(1, L // 3) if short else L


def _case(B, H, L, mode, dtype, inputs=("pregate", "postgate", "D"), *, short=False, param_dtype=None):
    """u, k and the optional inputs named (random, never zero); k and D in ``param_dtype``."""
    u = random_input((B, H, L), dtype)
    k = random_input((H, _taps(mode, L, short)), param_dtype or dtype)
    shapes = {"pregate": ((B, H, L), dtype), "postgate": ((B, H, L), dtype), "D": ((H,), param_dtype or dtype)}
    return u, k, {name: random_input(*shapes[name]) for name in inputs}


def _reference(u, k, mode, kwargs):
    return fft_conv_reference(u.cpu(), k.cpu(), mode=mode, **{n: t.cpu() for n, t in kwargs.items()})


def _assert_close(out, ref):
    assert_close_to_reference(out, ref, floor=FLOAT32_FLOOR if out.dtype == torch.float32 else None)


SUMMED_FLOAT32_FLOOR = 2e-5
"""The gradients of k and D sum B·L products (per tap and channel). On random data such a sum
cancels to about 1/√(B·L) of its terms' size, so the terms' float32 rounding (1e-7 relative)
reaches ~1e-5 of the sum at B·L = 12K (L = 4097, B = 3: a 1-tap dk failed 1e-6 for two
seeds in ten; a keep_frequencies dk reached 2.1e-6)."""


def _assert_grad_close(name, grad, ref):
    """A gradient against its reference; those of k and D over the whole tensor, with the floor
    of a sum over batch and time."""
    if name in ("k", "D") and grad.dtype == torch.float32:
        assert_close_to_reference(grad.flatten(), ref.flatten(), floor=SUMMED_FLOAT32_FLOOR)
    else:
        _assert_close(grad, ref)


def _check_every_grad(leaves, weight, mode, backend, **options):
    """fft_conv of ``leaves`` (u, k and any of pregate, postgate, D) on ``backend`` and the
    float64 reference, with every gradient through (y · weight).sum() checked against the
    reference's; returns (y, reference y)."""
    ours = {n: t.clone().requires_grad_() for n, t in leaves.items()}
    theirs = {n: t.double().requires_grad_() for n, t in leaves.items()}
    rest = [n for n in leaves if n not in ("u", "k")]
    out = fastspec.fft_conv(ours["u"], ours["k"], mode=mode, backend=backend, **options, **{n: ours[n] for n in rest})
    ref = fft_conv_reference(theirs["u"], theirs["k"], mode=mode, **options, **{n: theirs[n] for n in rest})
    (out * weight).sum().backward()
    (ref * weight.double()).sum().backward()
    for name in leaves:
        _assert_grad_close(name, ours[name].grad, theirs[name].grad)
    return out, ref.detach()


def _skip_unsupported(backend, dtype, mode, shape, kshape):
    reason = ops._IMPLS[backend].unsupported(dtype, mode, tuple(shape), tuple(kshape))
    if reason:
        pytest.skip(reason)




@pytest.fixture(autouse=True)
def _one_thread():
    """The tests' tensors are small: one thread each (with pytest -n, one per process).
    Threaded FFTs of small batches on a busy 2-core machine wait for time slices (~8 ms a call)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("backend,L", _by_backend(LENGTHS, INTERPRETER_LENGTHS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_float64_matches_reference(backend, L, mode, variant):
    short, inputs = VARIANTS[variant]
    u, k, kwargs = _case(2, 3, L, mode, torch.float64, inputs, short=short)
    _skip_unsupported(backend, torch.float64, mode, (L,), k.shape[1:])
    out = fastspec.fft_conv(u, k, mode=mode, backend=backend, **kwargs)
    assert out.dtype == torch.float64 and out.shape == u.shape and out.is_contiguous()
    assert_close_to_reference(out, _reference(u, k, mode, kwargs))


@pytest.mark.parametrize("backend,L", _by_backend([2, 100, 777, 4096], [2, 100, 777]))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype,param_dtype", [(torch.float32, torch.float32), (torch.float16, torch.float16),
                                               (torch.float16, torch.float32), (torch.bfloat16, torch.bfloat16),
                                               (torch.bfloat16, torch.float32)], ids=str)
def test_dtypes_match_reference(backend, L, mode, dtype, param_dtype):
    u, k, kwargs = _case(2, 3, L, mode, dtype, param_dtype=param_dtype, short=L == 777)
    _skip_unsupported(backend, dtype, mode, (L,), k.shape[1:])
    out = fastspec.fft_conv(u, k, mode=mode, backend=backend, **kwargs)
    assert out.dtype == dtype and out.shape == u.shape and out.device == u.device
    _assert_close(out, _reference(u, k, mode, kwargs))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("mode,short", [("causal", False), ("circular", True), ("bidirectional", True)])
def test_long_sequence(backend, mode, short):
    """L = 16384 on two channels (the reference loops over every tap)."""
    if backend == "triton" and triton_interpreted():
        pytest.skip("long sequences are for the GPU, not the Triton interpreter")
    u, k, kwargs = _case(1, 2, LONG, mode, torch.float32, short=short)
    _skip_unsupported(backend, torch.float32, mode, (LONG,), k.shape[1:])
    _assert_close(fastspec.fft_conv(u, k, mode=mode, backend=backend, **kwargs), _reference(u, k, mode, kwargs))


def test_pytorch_baseline_is_the_causal_convolution():
    """The benchmarks' baseline computes the same thing."""
    u, k, kwargs = _case(2, 3, 300, "causal", torch.float32)
    _assert_close(fft_conv_pytorch(u, k, **kwargs), _reference(u, k, "causal", kwargs))


# --------------------------------------------------------------------------- autograd

GRAD_NAMES = ("u", "k", "pregate", "postgate", "D")


def _compare_grads(backend, mode, dtype, L, short, wanted, param_dtype=None):
    u, k, kwargs = _case(2, 3, L, mode, dtype, short=short, param_dtype=param_dtype)
    _skip_unsupported(backend, dtype, mode, (L,), k.shape[1:])
    weight = random_input(u.shape, dtype)
    inputs = {"u": u, "k": k, **kwargs}
    ours = {n: t.detach().clone().requires_grad_(n in wanted) for n, t in inputs.items()}
    theirs = {n: t.detach().cpu().double().requires_grad_(n in wanted) for n, t in inputs.items()}
    y = fastspec.fft_conv(ours["u"], ours["k"], mode=mode, backend=backend,
                          **{n: ours[n] for n in kwargs})
    (y * weight).sum().backward()
    ref = fft_conv_reference(theirs["u"], theirs["k"], mode=mode, **{n: theirs[n] for n in kwargs})
    (ref * weight.cpu().double()).sum().backward()
    for name in GRAD_NAMES:
        if name in wanted:
            assert ours[name].grad is not None and ours[name].grad.dtype == inputs[name].dtype, name
            _assert_grad_close(name, ours[name].grad, theirs[name].grad)
        else:
            assert ours[name].grad is None, name


@pytest.mark.parametrize("backend,L", _by_backend([7, 777], [7, 100]))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype,param_dtype", [(torch.float32, None), (torch.bfloat16, None),
                                               (torch.float16, torch.float32)], ids=str)
def test_grads_match_reference(backend, L, mode, dtype, param_dtype):
    _compare_grads(backend, mode, dtype, L, L == 777, GRAD_NAMES, param_dtype)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("wanted", [("u",), ("k",), ("pregate", "D"), ("postgate",), ("u", "k", "D")])
def test_grads_of_some_inputs(backend, wanted):
    """Only the gradients asked for are computed (the backward op's ``needs``)."""
    _compare_grads(backend, "causal", torch.float32, 50, True, wanted)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_backward_through_sum(backend, mode):
    """y.sum().backward() sends an expanded (stride-0) gradient into the backward."""
    _, k, kwargs = _case(2, 3, 64, mode, torch.float32)
    u = random_input((2, 3, 64), torch.float32)
    leaves = [t.clone().requires_grad_() for t in (u, k, *kwargs.values())]
    fastspec.fft_conv(leaves[0], leaves[1], mode=mode, backend=backend, **dict(zip(kwargs, leaves[2:]))).sum().backward()
    refs = [t.detach().cpu().double().requires_grad_() for t in leaves]
    fft_conv_reference(refs[0], refs[1], mode=mode, **dict(zip(kwargs, refs[2:]))).sum().backward()
    for ours, theirs in zip(leaves, refs):
        _assert_close(ours.grad, theirs.grad)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("short", [False, True])
def test_gradcheck_and_gradgradcheck(mode, short):
    u, k, kwargs = _case(2, 2, 6, mode, torch.float64, short=short)
    inputs = tuple(t.requires_grad_() for t in (u, k, *kwargs.values()))

    def fn(u, k, pregate, postgate, D):
        return fastspec.fft_conv(u, k, mode=mode, pregate=pregate, postgate=postgate, D=D, backend="torch")

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


# --------------------------------------------------------------------------- layouts, sizes


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_non_contiguous_and_expanded_inputs(backend):
    B, H, L = 3, 4, 96
    u_base = random_input((B, L, H), torch.float32).requires_grad_()
    k_base = random_input((H, 2 * L), torch.float32).requires_grad_()
    u = u_base.transpose(1, 2)  # strides (L·H, 1, H)
    k = k_base[:, ::2]  # every other tap
    pregate = random_input((1, H, L), torch.float32).expand(B, H, L)  # stride 0 over the batch
    postgate = random_input((B, H, 2 * L), torch.float32)[..., L:]  # a storage offset
    D = torch.tensor(0.5, device=DEVICE).expand(H)  # stride 0
    out = fastspec.fft_conv(u, k, pregate=pregate, postgate=postgate, D=D, backend=backend)
    gates = {"pregate": pregate.cpu(), "postgate": postgate.cpu(), "D": D.cpu()}
    _assert_close(out, fft_conv_reference(u.detach().cpu(), k.detach().cpu(), **gates))
    out.sum().backward()
    refs = [t.detach().cpu().double().requires_grad_() for t in (u, k)]
    fft_conv_reference(*refs, **gates).sum().backward()
    _assert_close(u_base.grad.transpose(1, 2), refs[0].grad)
    _assert_close(k_base.grad[:, ::2], refs[1].grad)
    assert torch.equal(k_base.grad[:, 1::2], torch.zeros_like(k))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_empty_batch(backend, mode):
    u, k, kwargs = _case(0, 3, 50, mode, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (u, k, *kwargs.values())]
    out = fastspec.fft_conv(leaves[0], leaves[1], mode=mode, backend=backend, **dict(zip(kwargs, leaves[2:])))
    assert out.shape == (0, 3, 50)
    out.sum().backward()
    assert leaves[0].grad.shape == (0, 3, 50)
    assert torch.equal(leaves[1].grad, torch.zeros_like(k)) and torch.equal(leaves[-1].grad, torch.zeros(3))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("tracked", [False, True])
def test_eager_calls_skip_the_op_dispatch_with_the_same_result(monkeypatch, backend, tracked):
    """Without autograd to record, an eager fft_conv runs the op's body directly; with it
    (or under torch.compile, or with tensor subclasses) it goes through fastspec::fft_conv,
    except on the torch backend (an autograd.Function that keeps the forward's spectra: see
    the next test). All give the registered op's result bit for bit."""
    u, k, kwargs = _case(2, 3, 100, "causal", torch.float32, ("pregate", "postgate", "D"))
    through_op = torch.ops.fastspec.fft_conv(u, k, kwargs["pregate"], kwargs["postgate"], kwargs["D"], None,
                                             "causal", backend)
    calls = []
    monkeypatch.setattr(ops, "fft_conv_op", lambda *args: calls.append(args) or through_op)
    if tracked:
        k = k.clone().requires_grad_()
    out = fastspec.fft_conv(u, k, backend=backend, **kwargs)
    through = int(tracked and backend != "torch")
    assert len(calls) == through
    assert torch.equal(out, through_op)
    with torch.no_grad():
        assert len(calls) == through and torch.equal(fastspec.fft_conv(u, k, backend=backend, **kwargs), through_op)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("names", [(), ("D",), ("pregate", "postgate", "D")], ids=lambda n: "-".join(n) or "plain")
def test_torch_backend_keeps_the_forward_spectra_for_the_backward(mode, names):
    """Eager autograd on the torch backend keeps V = rfft(v), z and K from the forward: the
    gradients equal those of the registered op, whose backward recomputes them, bit for bit,
    with two FFTs a row fewer."""
    u, k, kwargs = _case(2, 3, 100, mode, torch.float32, names)
    leaves = [t.clone().requires_grad_() for t in (u, k, *kwargs.values())]
    twins = [t.clone().requires_grad_() for t in (u, k, *kwargs.values())]
    out = fastspec.fft_conv(leaves[0], leaves[1], mode=mode, backend="torch", **dict(zip(kwargs, leaves[2:])))
    assert type(out.grad_fn).__name__ == "_TorchKeepingSpectrumBackward"
    given = dict(zip(kwargs, twins[2:]))
    expect = torch.ops.fastspec.fft_conv(twins[0], twins[1], given.get("pregate"), given.get("postgate"),
                                         given.get("D"), None, mode, "torch")
    assert torch.equal(out, expect)
    weight = random_input(u.shape, torch.float32)
    for got, want in zip(torch.autograd.grad(out, leaves, weight), torch.autograd.grad(expect, twins, weight)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("mode", MODES)
def test_blocks_split_channels_and_batches(monkeypatch, mode):
    """The torch backend works through the rows in blocks: a block of a few channels of one
    batch element, or of several whole batch elements, gives the result of one block."""
    u, k, kwargs = _case(5, 7, 300, mode, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (u, k, *kwargs.values())]
    ref = _reference(u, k, mode, kwargs)
    weight = random_input(u.shape, torch.float32)
    for block_bytes in (3 * 1024 * 4, 20 * 1024 * 4):  # rows of 1024 floats: 3 channels, or 2 batch elements
        monkeypatch.setattr(ops, "CPU_BLOCK_BYTES", block_bytes)
        monkeypatch.setattr(ops, "CUDA_BLOCK_BYTES", block_bytes)
        assert len(ops._blocks(5, 7, 1024 * 4, DEVICE)) == (15 if block_bytes < 7 * 4096 else 3)
        out = fastspec.fft_conv(leaves[0], leaves[1], mode=mode, backend="torch", **dict(zip(kwargs, leaves[2:])))
        _assert_close(out, ref)
        grads = torch.autograd.grad((out * weight).sum(), leaves)
        if block_bytes == 3 * 1024 * 4:
            first = grads
        else:
            for a, b in zip(first, grads):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_fast_size_is_the_smallest_5_smooth():
    def smooth(m):
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        return m == 1

    for n in range(1, 3000):
        assert ops.fast_size(n) == next(m for m in range(n, 2 * n + 2) if smooth(m)), n


def test_plan_sizes():
    """causal: L + Lk − 1 rounded up to a fast size; bidirectional: L + (Lk−1)/2; circular: L."""
    assert ops.plan("causal", (4096,), (4096,)) == ops.Plan((8192,), (0,))
    assert ops.plan("causal", (4096,), (64,)) == ops.Plan((4320,), (0,))  # 4159 -> 2^5·3^3·5
    assert ops.plan("circular", (777,), (5,)) == ops.Plan((777,), (0,))
    assert ops.plan("bidirectional", (1000,), (1999,)) == ops.Plan((2000,), (999,))
    assert ops.plan("same", (10, 12), (4, 5)) == ops.Plan((12, 15), (1, 2))


# --------------------------------------------------------------------------- spectrum reuse


@pytest.mark.parametrize("mode", MODES)
def test_prepared_filter_gives_the_same_result(mode):
    u, k, kwargs = _case(2, 3, 100, mode, torch.float32, short=True)
    spectrum = ops.prepare_filter(k, 100, mode=mode, dtype=torch.float32)
    assert spectrum.backend == ops.choose_backend("auto", u.device, u.dtype, mode, (100,), tuple(k.shape[1:]))
    for given in ({}, kwargs, {"D": kwargs["D"]}):
        torch.testing.assert_close(fastspec.fft_conv(u, k, mode=mode, spectrum=spectrum, **given),
                                   fastspec.fft_conv(u, k, mode=mode, **given))


def test_prepared_filter_must_match_the_call():
    u, k, _ = _case(2, 3, 100, "causal", torch.float32)
    spectrum = ops.prepare_filter(k, 100, dtype=torch.float32, backend="torch")
    with pytest.raises(ValueError, match="spectrum was prepared for .*'torch', 'causal', 100, torch.float32"):
        fastspec.fft_conv(u[..., :50], k[:, :50], spectrum=spectrum)
    with pytest.raises(ValueError, match="spectrum was prepared for"):
        fastspec.fft_conv(u.half(), k, spectrum=spectrum)
    with pytest.raises(ValueError, match="spectrum was prepared for"):
        fastspec.fft_conv(u, k, mode="circular", spectrum=spectrum)
    with pytest.raises(ValueError, match="prepare_filter: mode='causal' needs 1 <= Lk <= L = 50"):
        ops.prepare_filter(k, 50)
    with pytest.raises(ValueError, match="prepare_filter: mode must be one of"):
        ops.prepare_filter(k, 100, mode="full")
    with pytest.raises(TypeError, match="prepare_filter: dtype must be"):
        ops.prepare_filter(k, 100, dtype=torch.int32)


def _counting_spectrum(monkeypatch, backend):
    """Make ``backend``'s spectrum count its calls; returns the list of calls."""
    impl, calls = ops._IMPLS[backend], []

    def spectrum(k, mode, shape, keep=0):
        calls.append((mode, tuple(shape)))
        return impl.spectrum(k, mode, shape, keep)

    monkeypatch.setitem(ops._IMPLS, backend, dataclasses.replace(impl, spectrum=spectrum))
    return calls


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_spectrum_is_cached_while_the_filter_is_unchanged(monkeypatch, backend):
    u, k, kwargs = _case(2, 3, 100, "causal", torch.float32, ("D",), short=True)
    calls = _counting_spectrum(monkeypatch, backend)
    monkeypatch.setattr(ops, "_spectra", ops.collections.OrderedDict())
    first = fastspec.fft_conv(u, k, backend=backend, **kwargs)
    assert torch.equal(fastspec.fft_conv(u, k, backend=backend, **kwargs), first) and len(calls) == 1
    k.mul_(-2.0)  # in place: the version counter moves, the spectrum is computed again
    _assert_close(fastspec.fft_conv(u, k, backend=backend, **kwargs), _reference(u, k, "causal", kwargs))
    assert len(calls) == 2
    twin = k.clone()  # equal values, another tensor: not trusted
    _assert_close(fastspec.fft_conv(u, twin, backend=backend, **kwargs), _reference(u, twin, "causal", kwargs))
    assert len(calls) == 3
    fastspec.fft_conv(u[..., :50], k[:, :20], backend=backend)  # another view, length and filter
    fastspec.fft_conv(u, k, mode="circular", backend=backend)
    assert calls[3:] == [("causal", (50,)), ("circular", (100,))]
    assert len(ops._spectra) == 3  # k (causal, its latest version; circular) and twin: the view died
    del twin
    gc.collect()
    assert len(ops._spectra) == 2  # an entry goes with its filter
    k.requires_grad_()  # may be edited through .data (optimizers, gradcheck): never cached
    fastspec.fft_conv(u, k, backend=backend, **kwargs).sum().backward()
    with torch.no_grad():
        fastspec.fft_conv(u, k, backend=backend, **kwargs)
    assert len(calls) == (7 if backend == "torch" else 8)  # forward and backward (the torch backend
    # keeps the forward's spectrum for its backward), forward


def test_spectrum_cache_and_edits_through_data():
    """An edit through ``.data`` keeps the version counter: what gradcheck does, so a filter
    that requires grad is never cached; one that does not, edited that way, needs
    clear_spectrum_cache (documented)."""
    u, k, _ = _case(1, 2, 40, "causal", torch.float64, ())
    k.requires_grad_()
    fn = lambda k: fastspec.fft_conv(u, k, backend="torch")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (k,))
    frozen = k.detach().clone()
    before = fastspec.fft_conv(u, frozen, backend="torch")
    frozen.data.mul_(2.0)
    ops.clear_spectrum_cache()
    torch.testing.assert_close(fastspec.fft_conv(u, frozen, backend="torch"), 2 * before)


def test_spectrum_cache_under_compile_sees_in_place_edits():
    torch._dynamo.reset()
    u, k, _ = _case(2, 3, 64, "causal", torch.float32, ())
    compiled = torch.compile(lambda u, k: fastspec.fft_conv(u, k, backend="torch"), fullgraph=True)
    _assert_close(compiled(u, k), _reference(u, k, "causal", {}))
    k.mul_(3.0)
    _assert_close(compiled(u, k), _reference(u, k, "causal", {}))


def test_spectrum_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(ops, "SPECTRUM_CACHE_BYTES", 3 * 65 * 8 * 2)  # two spectra of (3, 65) complex64
    monkeypatch.setattr(ops, "_spectra", ops.collections.OrderedDict())
    u = random_input((1, 3, 100), torch.float32)
    filters = [random_input((3, 28), torch.float32) for _ in range(3)]  # FFT size 128: 65 bins
    for k in filters:
        fastspec.fft_conv(u, k, backend="torch")
    assert [entry[0]() for entry in ops._spectra.values()] == filters[1:]


TWO_LEVEL = [("causal", 4096, 4096, torch.float32, None, 1), ("circular", 3000, 1500, torch.bfloat16, torch.float32, 2),
             ("bidirectional", 2500, 4001, torch.float32, None, 1),
             pytest.param("causal", 4096, 4096, torch.float32, None, 3, marks=pytest.mark.slow)]
"""FFT sizes above one tile (8192 = 64·128): Triton's two levels in one launch on the interpreter
(test_triton_two_level_chunks: in three); an odd batch of three is slow here (100 s)."""


@pytest.mark.skipif("triton" not in ops._IMPLS or not fastspec.backends()["triton"].available, reason="no triton")
@pytest.mark.parametrize("mode,L,taps,dtype,param_dtype,B", TWO_LEVEL, ids=str)
def test_triton_two_levels(monkeypatch, mode, L, taps, dtype, param_dtype, B):
    """Forward and backward in one launch each (two for wrapped circular's backward), with
    scratch for one program (L2_SCRATCH_BYTES): it walks every signal of the forward and
    every batch group of the backward in turn."""
    from fastspec.triton_kernels import fftconv as kernels

    monkeypatch.setattr(kernels, "L2_SCRATCH_BYTES", 8192 * 2 * 4)
    p = kernels.plan(mode, L, taps)
    assert p.outer is not None and p.n <= kernels.MAX_ONE_LAUNCH
    meta = torch.empty(B, 1, L, device="meta")
    spec = torch.empty(1, p.n, 2, device="meta")
    assert [(c[0], c[1]) for c in kernels.forward_calls(meta, spec, None, None, None, p, meta)] == \
        [(kernels.fftconv_fwd_l2_kernel, (1,))]
    outs = (meta, meta, torch.empty(kernels._groups(B, 1, p), 1, taps, device="meta"))
    calls = kernels.backward_calls(meta, meta, spec, None, None, None, p, taps, [True] * 5, outs, 1)
    assert {(c[0], c[1]) for c in calls} == {(kernels.fftconv_bwd_l2_kernel, (1,))}
    u = random_input((B, 1, L), dtype)
    k = random_input((1, taps), param_dtype or dtype) / taps**0.5
    kwargs = {"pregate": random_input(u.shape, dtype), "postgate": random_input(u.shape, dtype),
              "D": random_input((1,), param_dtype or dtype)}
    _assert_close(*_check_every_grad({"u": u, "k": k, **kwargs}, random_input(u.shape, dtype), mode, "triton"))


ONE_LAUNCH = [("circular", 5001, 3000, torch.float16, None, 3), ("circular", 32768, 100, torch.float32, None, 1),
              pytest.param("causal", 4097, 2000, torch.float32, None, 3, marks=pytest.mark.slow),
              pytest.param("bidirectional", 6000, 2001, torch.bfloat16, torch.float32, 3, marks=pytest.mark.slow),
              pytest.param("causal", 20000, 12000, torch.bfloat16, None, 2, marks=pytest.mark.slow),
              pytest.param("bidirectional", 30000, 5001, torch.float32, None, 2, marks=pytest.mark.slow)]
"""FFT sizes 8192 (odd lengths; circular wrapped; an odd batch: one signal with a zero imaginary
part; every mode in TWO_LEVEL) and 32768 (the largest one-launch size: circular of a power of
two; causal and bidirectional are slow here, 20–60 s)."""


@pytest.mark.skipif("triton" not in ops._IMPLS or not fastspec.backends()["triton"].available, reason="no triton")
@pytest.mark.parametrize("mode,L,taps,dtype,param_dtype,B", ONE_LAUNCH, ids=str)
def test_triton_one_launch_forward(mode, L, taps, dtype, param_dtype, B):
    """4096 < N ≤ 32768: the forward is one launch (fftconv_fwd_l2_kernel), gates and D fused,
    u and the gates non-contiguous."""
    from fastspec.triton_kernels import fftconv as kernels

    p = kernels.plan(mode, L, taps)
    assert kernels.MAX_TILE < p.n <= kernels.MAX_ONE_LAUNCH
    u, pre, post = (random_input((B, L, 2), dtype)[..., 1:].transpose(1, 2) for _ in range(3))  # t stride 2
    k = random_input((1, taps), param_dtype or dtype) / taps**0.5
    D = random_input((1,), param_dtype or dtype)
    spec = torch.empty(1, p.n, 2, device="meta")
    calls = kernels.forward_calls(u.to("meta"), spec, pre.to("meta"), post.to("meta"), D.to("meta"), p, u.to("meta"))
    assert [call[0] for call in calls] == [kernels.fftconv_fwd_l2_kernel]
    out = fastspec.fft_conv(u, k, mode=mode, pregate=pre, postgate=post, D=D, backend="triton")
    _assert_close(out, fft_conv_reference(u.double(), k.double(), mode=mode, pregate=pre.double(),
                                          postgate=post.double(), D=D.double()))


@pytest.mark.slow
@pytest.mark.skipif("triton" not in ops._IMPLS or not fastspec.backends()["triton"].available, reason="no triton")
@pytest.mark.parametrize("mode,L,taps,dtype", [("circular", 32768, 100, torch.float32),
                                               ("bidirectional", 20000, 9001, torch.bfloat16)], ids=str)
def test_triton_one_launch_backward_32768(mode, L, taps, dtype):
    """Every gradient at N = 32768 (one inner row a tile), the backward in one launch."""
    u, k, kwargs = _case(2, 1, L, mode, dtype)
    k = k[:, :taps] / taps**0.5
    _check_every_grad({"u": u, "k": k, **kwargs}, random_input(u.shape, dtype), mode, "triton")


@pytest.mark.skipif("triton" not in ops._IMPLS or not fastspec.backends()["triton"].available, reason="no triton")
def test_triton_two_level_chunks(monkeypatch):
    """Rows in chunks whose scratch fits SCRATCH_BYTES (here: the forward a channel at a time,
    the backward a batch pair of a channel at a time) give the one-chunk result; dk sums the
    chunks in order. The forward takes its three launches (N = 8192 is one launch otherwise)."""
    from fastspec.triton_kernels import fftconv as kernels

    monkeypatch.setattr(kernels, "MAX_ONE_LAUNCH", kernels.MAX_TILE)
    u, k, kwargs = _case(3, 2, 4097, "causal", torch.float32, ("pregate", "D"), short=True)
    k = k[:, :1].contiguous().requires_grad_()  # FFT size 8192 for L = 4097
    u.requires_grad_()
    grad = random_input(u.shape, torch.float32)
    whole = [fastspec.fft_conv(u, k, backend="triton", **kwargs)]
    whole += torch.autograd.grad(whole[0], (u, k), grad)
    monkeypatch.setattr(kernels, "SCRATCH_BYTES", 140_000)
    signal = 8192 * 2 * 4  # one complex float32 row; 2 pairs × 2 channels
    assert len(kernels._chunks(2, 2, signal)) == 2  # forward: one row a signal
    assert len(kernels._chunks(2, 2, 2 * signal, signal)) == 4  # backward: v and gz a signal, dk a channel
    parts = [fastspec.fft_conv(u, k, backend="triton", **kwargs)]
    parts += torch.autograd.grad(parts[0], (u, k), grad)
    leaves = [t.detach().double().requires_grad_() for t in (u, k)]
    ref = fft_conv_reference(*leaves, **kwargs)
    refs = [ref.detach(), *torch.autograd.grad(ref, leaves, grad.double())]
    for name, a, b, c in zip(("y", "u", "k"), whole, parts, refs):
        _assert_grad_close(name, a, c)
        _assert_grad_close(name, b, c)


# --------------------------------------------------------------------------- keep_frequencies


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("L,taps,keep", [(512, 300, 5), (100, 40, 3), (64, 64, 40)], ids=str)
def test_keep_frequencies_matches_the_truncated_reference(backend, L, taps, keep):
    """Circular convolution with the filter's L-point DFT kept at min(f, L − f) < keep, all
    gradients: L = 512 is a power of two (the Triton kernels truncate their own FFT), 100 is
    not (the filter is projected first); keep > L/2 keeps everything."""
    u, k, kwargs = _case(3, 2, L, "circular", torch.float32)
    k = k[:, :taps]
    out, ref = _check_every_grad({"u": u, "k": k, **kwargs}, random_input(u.shape, torch.float32), "circular",
                                 backend, keep_frequencies=keep)
    _assert_close(out, ref)
    if keep > L // 2:
        _assert_close(out, fft_conv_reference(u, k, mode="circular", **kwargs))


def test_keep_frequencies_gradcheck_and_gradgradcheck():
    u, k, kwargs = _case(2, 2, 8, "circular", torch.float64, short=True)
    inputs = tuple(t.requires_grad_() for t in (u, k, *kwargs.values()))

    def fn(u, k, pregate, postgate, D):
        return fastspec.fft_conv(u, k, mode="circular", pregate=pregate, postgate=postgate, D=D, keep_frequencies=2,
                                 backend="torch")

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_keep_frequencies_is_the_truncated_dft():
    from fastspec.reference.fftconv import truncated_filter

    k = random_input((2, 5), torch.float64, "cpu")
    spectrum = torch.fft.fft(truncated_filter(k, 16, 3))
    torch.testing.assert_close(spectrum[:, [0, 1, 2, 14, 15]], torch.fft.fft(k, n=16)[:, [0, 1, 2, 14, 15]])
    assert spectrum[:, 3:14].abs().max() < 1e-13


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_keep_frequencies_opcheck_and_prepared_filter(backend):
    u, k, kwargs = _case(2, 3, 64, "circular", torch.float32, ("D",))
    if backend == "torch":  # the registered ops with the keyword (Triton: the same op code, slow here)
        torch.library.opcheck(torch.ops.fastspec.fft_conv.default,
                              (u.requires_grad_(), k.requires_grad_(), None, None, kwargs["D"], None, "circular",
                               backend, 3))
    spectrum = ops.prepare_filter(k, 64, mode="circular", keep_frequencies=3, backend=backend)
    torch.testing.assert_close(fastspec.fft_conv(u, k, mode="circular", keep_frequencies=3, spectrum=spectrum),
                               fastspec.fft_conv(u, k, mode="circular", keep_frequencies=3, backend=backend))
    with pytest.raises(ValueError, match="spectrum was prepared for .*'circular', 64, torch.float32, .*, 3"):
        fastspec.fft_conv(u, k, mode="circular", spectrum=spectrum)


@pytest.mark.skipif("triton" not in ops._IMPLS or not fastspec.backends()["triton"].available, reason="no triton")
def test_triton_keep_frequencies_two_levels():
    """L = 8192: the two-level path truncates its own spectrum (checked against the torch
    backend in float64, itself checked against the direct sums above)."""
    u, k, _ = _case(3, 1, 8192, "circular", torch.float32, (), short=True)
    k = k[:, :100]
    leaves = [t.clone().requires_grad_() for t in (u, k)]
    weight = random_input(u.shape, torch.float32)
    out = fastspec.fft_conv(*leaves, mode="circular", keep_frequencies=9, backend="triton")
    refs = [t.double().requires_grad_() for t in (u, k)]
    ref = fastspec.fft_conv(*refs, mode="circular", keep_frequencies=9, backend="torch")
    # y and du keep 17 of the 8192 bins: their norm is about √(17/8192) of the FFT operands',
    # so the operands' float32 rounding is that much larger relative to them (2 seeds in 20
    # reached 1.4e-6 and 3.5e-6 against the 1e-6 floor)
    floor = FLOAT32_FLOOR * math.sqrt(8192 / 17)
    assert_close_to_reference(out, ref.detach(), floor=floor)
    grads = zip(("u", "k"), torch.autograd.grad((out * weight).sum(), leaves), torch.autograd.grad((ref * weight).sum(), refs))
    (_, du, du_ref), (_, dk, dk_ref) = grads
    assert_close_to_reference(du, du_ref, floor=floor)
    _assert_grad_close("k", dk, dk_ref)


@pytest.mark.skipif("triton" not in ops._IMPLS or not fastspec.backends()["triton"].available, reason="no triton")
def test_keep_frequencies_reaches_only_backends_that_truncate():
    """L = 100 is no power of two: Triton's FFT is not the 100-point one, so fft_conv hands it
    the projected filter, and the registered op refuses keep_frequencies for it."""
    assert not ops._IMPLS["triton"].keeps("circular", (100,), (40,)) and ops._IMPLS["triton"].keeps("circular", (512,), (9,))
    u, k, _ = _case(2, 3, 100, "circular", torch.float32, ())
    with pytest.raises(ValueError, match="the 'triton' backend does not truncate the spectrum for this call"):
        torch.ops.fastspec.fft_conv(u, k[:, :40], None, None, None, None, "circular", "triton", 3)


def test_triton_keep_frequencies_skips_row_tiles():
    """At L = 2^20 (two levels, P = 256 rows of 4096) keep_frequencies = 8 leaves 15 row tiles
    for the middle launches (rows 0..7 and 249..255), not 256."""
    from fastspec.triton_kernels import fftconv as kernels

    L, meta = 2**20, torch.device("meta")
    p = kernels.plan("circular", L, L)
    u = torch.empty(2, 3, L, device=meta)
    spec = torch.empty(3, L, 2, device=meta)
    grids = {call[0].__name__: call[1] for call in kernels.forward_calls(u, spec, None, None, None, p, u, keep=8)}
    assert grids["fftconv_inner_kernel"] == (3 * 15,)
    grids = {call[0].__name__: call[1] for call in kernels.forward_calls(u, spec, None, None, None, p, u)}
    assert grids["fftconv_inner_kernel"] == (3 * 256,)


# --------------------------------------------------------------------------- registration


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("mode,dtype", [("causal", torch.float32), ("circular", torch.float32),
                                        ("bidirectional", torch.float32), ("causal", torch.bfloat16)], ids=str)
def test_opcheck(backend, mode, dtype):
    u, k, kwargs = _case(2, 3, 20, mode, dtype, short=True)
    _skip_unsupported(backend, dtype, mode, (20,), k.shape[1:])
    grad = dtype == torch.float32
    args = [t.requires_grad_(grad) for t in (u, k, kwargs["pregate"], kwargs["postgate"], kwargs["D"])]
    torch.library.opcheck(torch.ops.fastspec.fft_conv.default, (*args, None, mode, backend))
    torch.library.opcheck(torch.ops.fastspec.fft_conv.default, (u, k, None, None, None, None, mode, backend))
    spectrum = ops.prepare_filter(k, 20, mode=mode, dtype=dtype, backend=backend).tensor
    torch.library.opcheck(torch.ops.fastspec.fft_conv.default, (u, k, None, None, args[4], spectrum, mode, backend))
    plain = [t.detach() for t in args]
    grad_y = random_input(u.shape, dtype)
    for needs in ([True] * 5, [False, True, False, True, False]):
        torch.library.opcheck(torch.ops.fastspec.fft_conv_backward.default, (grad_y, *plain, mode, needs, backend))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("mode", ops.MODES_2D)
def test_opcheck_2d(backend, mode):
    u, k = random_input((2, 3, 5, 6), torch.float32), random_input((3, 3, 4), torch.float32)
    _skip_unsupported(backend, torch.float32, mode, (5, 6), (3, 4))
    torch.library.opcheck(torch.ops.fastspec.fft_conv.default,
                          (u.requires_grad_(), k.requires_grad_(), None, None, None, None, mode, backend))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_compile_fullgraph(backend, mode):
    torch._dynamo.reset()
    u, k, kwargs = _case(2, 3, 40, mode, torch.float32, short=True)

    def layer(u, k, pregate, postgate, D):
        y = fastspec.fft_conv(u * 2.0, k, mode=mode, pregate=pregate, postgate=postgate, D=D, backend=backend)
        return torch.relu(y) + 1.0

    inputs = [t.requires_grad_() for t in (u, k, *kwargs.values())]
    compiled = torch.compile(layer, fullgraph=True)
    out = compiled(*inputs)
    torch.testing.assert_close(out, layer(*inputs))
    grads = torch.autograd.grad(out.sum(), inputs)
    for a, b in zip(grads, torch.autograd.grad(layer(*inputs).sum(), inputs)):
        torch.testing.assert_close(a, b)


def test_compile_fullgraph_auto_backend_and_2d():
    torch._dynamo.reset()
    u, k = random_input((2, 3, 32), torch.float32), random_input((3, 32), torch.float32)
    compiled = torch.compile(lambda u, k: fastspec.fft_conv(u, k), fullgraph=True)
    torch.testing.assert_close(compiled(u, k), fastspec.fft_conv(u, k))
    u2, k2 = random_input((2, 3, 8, 9), torch.float32), random_input((3, 3, 3), torch.float32)
    compiled = torch.compile(lambda u, k: fastspec.fft_conv2d(u, k, mode="same"), fullgraph=True)
    torch.testing.assert_close(compiled(u2, k2), fastspec.fft_conv2d(u2, k2, mode="same"))


# --------------------------------------------------------------------------- fft_conv2d

SHAPES_2D = [((5, 7), (3, 2)), ((8, 8), (8, 8)), ((6, 9), (1, 1)), ((1, 1), (1, 1)), ((16, 12), (5, 4))]
SAME_ONLY_2D = [((6, 9), (11, 4)), ((4, 5), (7, 9))]  # kernels larger than the input


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("mode", ops.MODES_2D)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,kshape", SHAPES_2D + SAME_ONLY_2D, ids=str)
def test_conv2d_matches_reference(backend, mode, dtype, shape, kshape):
    if mode == "circular" and (kshape[0] > shape[0] or kshape[1] > shape[1]):
        pytest.skip("circular takes kernels up to the input's size")
    _skip_unsupported(backend, dtype, mode, shape, kshape)
    u, k = random_input((2, 3, *shape), dtype), random_input((3, *kshape), dtype)
    out = fastspec.fft_conv2d(u, k, mode=mode, backend=backend)
    assert out.shape == u.shape and out.dtype == dtype
    _assert_close(out, fft_conv2d_reference(u.cpu(), k.cpu(), mode=mode))


@pytest.mark.parametrize("kshape", [(3, 3), (5, 1), (7, 5), (1, 9)], ids=str)
def test_conv2d_same_is_torch_conv2d_for_odd_kernels(kshape):
    u, k = random_input((2, 4, 12, 10), torch.float64), random_input((4, *kshape), torch.float64)
    expect = F.conv2d(u, k.flip(-2, -1)[:, None], padding="same", groups=4)
    torch.testing.assert_close(fastspec.fft_conv2d(u, k, mode="same"), expect)


@pytest.mark.parametrize("kshape", [(2, 2), (4, 3), (6, 8), (3, 12)], ids=str)
def test_conv2d_is_scipy_convolve2d(kshape):
    """'same' for even kernels too: the centred part of the full convolution, as
    scipy.signal.convolve2d; 'circular' is its wrapped convolution, centred at index 0."""
    u, k = random_input((1, 2, 9, 8), torch.float64, "cpu"), random_input((2, *kshape), torch.float64, "cpu")
    out = fastspec.fft_conv2d(u, k, mode="same")
    for c in range(2):
        expect = scipy.signal.convolve2d(u[0, c].numpy(), k[c].numpy(), mode="same")
        torch.testing.assert_close(out[0, c], torch.from_numpy(expect))
        circular = scipy.signal.convolve2d(u[0, c].numpy(), k[c].numpy()[:8, :8], mode="same", boundary="wrap")
        assert circular.shape == (9, 8)  # scipy wraps around the centre; ours around index 0:
        rolled = torch.roll(fastspec.fft_conv2d(u[:, c:c + 1], k[c:c + 1, :8, :8], mode="circular")[0, 0],
                            (-((min(kshape[0], 8) - 1) // 2), -((min(kshape[1], 8) - 1) // 2)), (0, 1))
        torch.testing.assert_close(rolled, torch.from_numpy(circular))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("mode", ops.MODES_2D)
def test_conv2d_grads(backend, mode):
    _skip_unsupported(backend, torch.float32, mode, (7, 6), (3, 4))
    u, k = random_input((2, 3, 7, 6), torch.float32), random_input((3, 3, 4), torch.float32)
    weight = random_input(u.shape, torch.float32)
    ours = [t.clone().requires_grad_() for t in (u, k)]
    (fastspec.fft_conv2d(*ours, mode=mode, backend=backend) * weight).sum().backward()
    theirs = [t.cpu().double().requires_grad_() for t in (u, k)]
    (fft_conv2d_reference(*theirs, mode=mode) * weight.cpu().double()).sum().backward()
    for a, b in zip(ours, theirs):
        _assert_close(a.grad, b.grad)


@pytest.mark.parametrize("mode", ops.MODES_2D)
def test_conv2d_gradcheck(mode):
    u, k = random_input((1, 2, 4, 5), torch.float64), random_input((2, 3, 2), torch.float64)
    fn = lambda u, k: fastspec.fft_conv2d(u, k, mode=mode, backend="torch")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (u.requires_grad_(), k.requires_grad_()))
    assert torch.autograd.gradgradcheck(fn, (u, k))


# --------------------------------------------------------------------------- modules

PADDINGS = ["same", "valid", 0, 2, 9, 40]


@pytest.mark.parametrize("padding", PADDINGS, ids=str)
@pytest.mark.parametrize("padding_mode", ["zeros", "circular", "reflect", "replicate"])
@pytest.mark.parametrize("kernel_size", [1, 4, 7, 33])
def test_conv1d_fft_is_nn_conv1d(padding, padding_mode, kernel_size):
    L = 40
    conv = torch.nn.Conv1d(6, 6, kernel_size, groups=6, padding=padding, padding_mode=padding_mode, device=DEVICE)
    x = random_input((2, 6, L), torch.float32)
    try:
        expect = conv(x)
    except RuntimeError as exc:  # e.g. reflect padding wider than the input
        with pytest.raises((RuntimeError, ValueError)):
            fastspec.nn.Conv1dFFT.from_conv1d(conv)(x)
        pytest.skip(f"nn.Conv1d rejects it too: {exc}")
    layer = fastspec.nn.Conv1dFFT.from_conv1d(conv)
    out = layer(x)
    assert out.shape == expect.shape and out.is_contiguous()
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x[0]), expect[0], rtol=1e-5, atol=1e-5)  # unbatched
    out.square().sum().backward()
    expect.square().sum().backward()
    torch.testing.assert_close(layer.weight.grad, conv.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer.bias.grad, conv.bias.grad, rtol=1e-4, atol=1e-4)


def test_conv1d_fft_long_kernel_and_state_dict():
    """A kernel as long as the sequence (the case FFTs are for), 'same', no bias; the state
    dict of an nn.Conv1d loads as is."""
    conv = torch.nn.Conv1d(8, 8, 1024, groups=8, padding="same", bias=False, dtype=torch.float64)
    layer = fastspec.nn.Conv1dFFT(8, 1024, padding="same", bias=False, dtype=torch.float64)
    layer.load_state_dict(conv.state_dict())
    x = random_input((2, 8, 1024), torch.float64, "cpu")
    torch.testing.assert_close(layer(x), conv(x))
    assert set(layer.state_dict()) == {"weight"} and layer.weight.shape == (8, 1, 1024)
    assert "kernel_size=1024" in repr(layer)


def test_conv1d_fft_initialisation_is_nn_conv1d():
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(5, 5, 9, groups=5)
    torch.manual_seed(0)
    layer = fastspec.nn.Conv1dFFT(5, 9)
    assert torch.equal(layer.weight, conv.weight) and torch.equal(layer.bias, conv.bias)


def test_conv1d_fft_bad_input():
    with pytest.raises(ValueError, match="padding must be 'same', 'valid' or an int >= 0, got 'full'"):
        fastspec.nn.Conv1dFFT(4, 3, padding="full")
    with pytest.raises(ValueError, match="padding_mode must be 'zeros', 'reflect', 'replicate' or 'circular'"):
        fastspec.nn.Conv1dFFT(4, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match=r"x must be \(B, 4, L\) or \(4, L\), got shape \(2, 3, 10\)"):
        fastspec.nn.Conv1dFFT(4, 3)(torch.ones(2, 3, 10))
    with pytest.raises(ValueError, match="kernel_size 12 is longer than the padded input"):
        fastspec.nn.Conv1dFFT(4, 12)(torch.ones(2, 4, 10))
    with pytest.raises(ValueError, match="needs a depthwise Conv1d"):
        fastspec.nn.Conv1dFFT.from_conv1d(torch.nn.Conv1d(4, 8, 3, groups=4))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("L", [64, 37])
def test_fftconv_module_matches_reference(mode, L):
    layer = fastspec.nn.FFTConv(4, 64, mode=mode, device=DEVICE)
    u, pregate, postgate = (random_input((2, 4, L), torch.float32) for _ in range(3))
    k = layer.taps(L)
    assert k.shape == (4, 2 * L - 1 if mode == "bidirectional" else L)
    full = layer.filter[:, :L] if mode != "bidirectional" else layer.filter[:, 64 - L: 63 + L]
    assert torch.equal(k, full)
    expect = fft_conv_reference(u, k.detach(), mode=mode, pregate=pregate, postgate=postgate, D=layer.D.detach())
    _assert_close(layer(u, pregate, postgate), expect)
    torch.testing.assert_close(layer.filter.norm(dim=1), torch.ones(4, device=DEVICE))
    layer.eval()
    _assert_close(layer(u, pregate, postgate), expect)  # from the cached spectrum


def test_fftconv_module_caches_the_spectrum_in_eval_mode():
    layer = fastspec.nn.FFTConv(3, 50, device=DEVICE)
    u = random_input((2, 3, 50), torch.float32)
    layer(u)
    assert layer._spectrum is None  # train mode: no cache
    layer.eval()
    first = layer(u)
    cached = layer._spectrum[1]
    torch.testing.assert_close(layer(u), first)
    assert layer._spectrum[1] is cached  # reused
    layer(u[..., :30])
    assert layer._spectrum[1] is not cached and layer._spectrum[1].length == 30  # another length
    layer(u.to(torch.bfloat16))
    assert layer._spectrum[1].dtype == torch.bfloat16

    opt = torch.optim.SGD(layer.parameters(), lr=0.1)  # a parameter update bumps the version
    layer(u).square().sum().backward()  # eval mode still has gradients
    opt.step()
    after = layer(u)
    assert layer._spectrum[1] is not cached and not torch.allclose(after, first)
    _assert_close(after, fft_conv_reference(u, layer.filter.detach(), D=layer.D.detach()))
    cached = layer._spectrum[1]
    with torch.no_grad():
        layer.filter.mul_(2.0)  # in place: the version counter changes
    layer(u)
    assert layer._spectrum[1] is not cached
    layer.train()
    assert layer._spectrum is None
    layer.load_state_dict(layer.state_dict())
    layer.eval()
    torch.testing.assert_close(layer(u), layer.train()(u))


def test_fftconv_module_grads_in_eval_mode():
    """The cached spectrum only speeds up the forward: the filter still gets its gradient."""
    layer = fastspec.nn.FFTConv(3, 40, device=DEVICE).eval()
    u = random_input((2, 3, 40), torch.float32)
    layer(u)
    layer(u).sum().backward()
    k = layer.filter.detach().cpu().double().requires_grad_()
    fft_conv_reference(u.cpu(), k, D=layer.D.detach().cpu()).sum().backward()
    _assert_close(layer.filter.grad, k.grad)


def test_fftconv_module_bad_input():
    with pytest.raises(ValueError, match="mode must be one of 'causal', 'circular', 'bidirectional'; got 'same'"):
        fastspec.nn.FFTConv(4, 16, mode="same")
    with pytest.raises(ValueError, match="channels and max_len must be at least 1"):
        fastspec.nn.FFTConv(4, 0)
    with pytest.raises(ValueError, match=r"u must be \(B, 4, L\) with 1 <= L <= 16, got shape \(2, 4, 17\)"):
        fastspec.nn.FFTConv(4, 16)(torch.ones(2, 4, 17))
    assert "max_len=16" in repr(fastspec.nn.FFTConv(4, 16, use_D=False))
    assert fastspec.nn.FFTConv(4, 16, use_D=False).D is None


# --------------------------------------------------------------------------- bad input

U = torch.ones(2, 3, 10)
K = torch.ones(3, 10)


@pytest.mark.parametrize("call,error,message", [
    (lambda: fastspec.fft_conv(U, torch.ones(4, 10)), ValueError,
     r"k must be \(H, Lk\) with H = 3 as in u, got shape \(4, 10\)"),
    (lambda: fastspec.fft_conv(U, torch.ones(3, 11)), ValueError,
     r"mode='causal' needs 1 <= Lk <= L = 10, got k of shape \(3, 11\)"),
    (lambda: fastspec.fft_conv(U, torch.ones(3, 11), mode="circular"), ValueError, "mode='circular' needs 1 <= Lk"),
    (lambda: fastspec.fft_conv(U, torch.ones(3, 0)), ValueError, "needs 1 <= Lk <= L"),
    (lambda: fastspec.fft_conv(U, torch.ones(3, 20), mode="bidirectional"), ValueError,
     r"mode='bidirectional' needs k of odd length Lk <= 2L-1 = 19 \(index \(Lk-1\)/2 is lag 0\), got Lk = 20"),
    (lambda: fastspec.fft_conv(U, torch.ones(3, 21), mode="bidirectional"), ValueError, "got Lk = 21"),
    (lambda: fastspec.fft_conv(U, K, pregate=torch.ones(2, 3, 9)), ValueError,
     r"pregate must have u's shape \(2, 3, 10\), got \(2, 3, 9\)"),
    (lambda: fastspec.fft_conv(U, K, postgate=torch.ones(3, 10)), ValueError, "postgate must have u's shape"),
    (lambda: fastspec.fft_conv(U, K, pregate=torch.ones(2, 3, 10, dtype=torch.float16)), TypeError,
     "pregate must have u's dtype torch.float32, got torch.float16"),
    (lambda: fastspec.fft_conv(U, K, mode="full"), ValueError,
     "fft_conv: mode must be one of 'causal', 'circular', 'bidirectional'; got 'full'"),
    (lambda: fastspec.fft_conv(torch.ones(2, 3, 10, dtype=torch.int32), K), TypeError,
     "u must be float16, bfloat16, float32 or float64, got torch.int32"),
    (lambda: fastspec.fft_conv(U.to(torch.complex64), K), TypeError, "u must be float16"),
    (lambda: fastspec.fft_conv(U, K.long()), TypeError, "k must be float32 for u of torch.float32, got torch.int64"),
    (lambda: fastspec.fft_conv(U, K.double()), TypeError, "k must be float32 for u of torch.float32, got torch.float64"),
    (lambda: fastspec.fft_conv(U.half(), K.bfloat16()), TypeError,
     "k must be float32 or float16 for u of torch.float16, got torch.bfloat16"),
    (lambda: fastspec.fft_conv(U.double(), K), TypeError, "k must be float64 for u of torch.float64"),
    (lambda: fastspec.fft_conv(U, K, D=torch.ones(4)), ValueError, r"D must have shape \(H,\) = \(3,\), got \(4,\)"),
    (lambda: fastspec.fft_conv(U, K, D=torch.ones(3, 1)), ValueError, "D must have shape"),
    (lambda: fastspec.fft_conv(U, K, D=torch.ones(3, dtype=torch.int64)), TypeError, "D must be float32"),
    (lambda: fastspec.fft_conv(U, K.to("meta")), ValueError,
     r"every tensor must be on u's device \(cpu\); k is on meta"),
    (lambda: fastspec.fft_conv(U, K, D=torch.ones(3, device="meta")), ValueError, "D is on meta"),
    (lambda: fastspec.fft_conv(U, K, postgate=torch.ones(2, 3, 10, device="meta")), ValueError, "postgate is on meta"),
    (lambda: fastspec.fft_conv(U[0], K), ValueError, r"u must be \(B, H, L\), got shape \(3, 10\)"),
    (lambda: fastspec.fft_conv(torch.ones(2, 3, 0), K), ValueError, "the convolved length L must be at least 1"),
    (lambda: fastspec.fft_conv(U.numpy(), K), TypeError, "fft_conv: u must be a torch.Tensor, got ndarray"),
    (lambda: fastspec.fft_conv(U, [1.0] * 10), TypeError, "k must be a torch.Tensor, got list"),
    (lambda: fastspec.fft_conv(U, K, D=0.5), TypeError, "D must be a torch.Tensor, got float"),
    (lambda: fastspec.fft_conv(U, K, backend="numpy"), ValueError, "backend must be one of"),
    (lambda: fastspec.fft_conv(U, K, keep_frequencies=3), ValueError,
     r"keep_frequencies needs mode='circular' \(it truncates the filter's L-point DFT\), got mode='causal'"),
    (lambda: fastspec.fft_conv(U, K, mode="circular", keep_frequencies=0), ValueError,
     "keep_frequencies must be None or an int >= 1, got 0"),
    (lambda: fastspec.fft_conv(U, K, mode="circular", keep_frequencies=2.0), TypeError,
     "keep_frequencies must be None or an int >= 1, got 2.0"),
    (lambda: fastspec.fft_conv(U, K, mode="circular", keep_frequencies=True), TypeError,
     "keep_frequencies must be None or an int >= 1, got True"),
    (lambda: ops.prepare_filter(K, 10, keep_frequencies=2), ValueError, "prepare_filter: keep_frequencies needs"),
    (lambda: torch.ops.fastspec.fft_conv(torch.ones(1, 3, 4, 5), torch.ones(3, 3, 3), None, None, None, None,
                                         "circular", "torch", 2), ValueError, "fft_conv2d: takes no keep_frequencies"),
    (lambda: fastspec.fft_conv2d(U, K), ValueError, r"fft_conv2d: u must be \(B, C, H, W\), got shape \(2, 3, 10\)"),
    (lambda: fastspec.fft_conv2d(torch.ones(1, 3, 4, 5), torch.ones(3, 5, 5)), ValueError,
     r"mode='circular' needs kh <= H = 4 and kw <= W = 5, got k of shape \(3, 5, 5\)"),
    (lambda: fastspec.fft_conv2d(torch.ones(1, 3, 4, 5), torch.ones(3, 8, 5), mode="same"), ValueError,
     r"mode='same' needs 1 <= kh <= 2H-1 = 7 and 1 <= kw <= 2W-1 = 9, got k of shape \(3, 8, 5\)"),
    (lambda: fastspec.fft_conv2d(torch.ones(1, 3, 4, 5), torch.ones(3, 3)), ValueError,
     r"k must be \(C, kh, kw\) with C = 3 as in u"),
    (lambda: fastspec.fft_conv2d(torch.ones(1, 3, 4, 5), torch.ones(3, 3, 3), mode="causal"), ValueError,
     "fft_conv2d: mode must be one of 'circular', 'same'; got 'causal'"),
    (lambda: torch.ops.fastspec.fft_conv(torch.ones(1, 3, 4, 5), torch.ones(3, 3, 3), torch.ones(1, 3, 4, 5), None,
                                         None, None, "same", "torch"), ValueError, "fft_conv2d: takes no gates and no D"),
])
def test_bad_input_raises_before_any_kernel(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_the_registered_op_validates_too():
    with pytest.raises(ValueError, match="needs 1 <= Lk <= L = 10"):
        torch.ops.fastspec.fft_conv(U, torch.ones(3, 11), None, None, None, None, "causal", "torch")
    with pytest.raises(ValueError, match="pregate must have u's shape"):
        torch.ops.fastspec.fft_conv_backward(U, U, K, U[:1], None, None, "causal", [True] * 5, "torch")


def test_backend_without_an_implementation_raises():
    if fastspec.backends()["triton"].available and "triton" not in ops._IMPLS:
        with pytest.raises(NotImplementedError, match="the 'triton' backend has no implementation of this op yet"):
            fastspec.fft_conv(U, K, backend="triton")
    if not fastspec.backends()["cuda"].available:
        with pytest.raises(RuntimeError, match="backend 'cuda' is not usable"):
            fastspec.fft_conv(U, K, backend="cuda")


def test_auto_choice_and_env_override(monkeypatch):
    cpu = torch.device("cpu")
    assert ops.choose_backend("auto", cpu, torch.float32, "causal", (64,), (64,)) == "torch"
    monkeypatch.setenv("FASTSPEC_BACKEND", "torch")
    assert ops.choose_backend("auto", DEVICE, torch.float16, "causal", (64,), (64,)) == "torch"
    monkeypatch.setenv("FASTSPEC_BACKEND", "fortran")
    with pytest.raises(ValueError, match="FASTSPEC_BACKEND must be one of"):
        ops.choose_backend("auto", cpu, torch.float32, "causal", (64,), (64,))


def test_auto_table_on_cuda(monkeypatch):
    """AUTO_CUDA: its first backend that is implemented, usable, listed for the dtype and takes
    the call; torch otherwise (checked as if a GPU and every backend were here)."""
    monkeypatch.setattr(ops._backend, "device_ok", lambda name, device: None)
    dev = torch.device("cuda")
    assert ops._auto_choice(dev, torch.float16, "causal", (1024,), (1024,)) == ops.AUTO_CUDA[0][0] == "triton"
    assert ops._auto_choice(dev, torch.float64, "causal", (4096,), (4096,)) == "torch"
    assert ops._auto_choice(dev, torch.float32, "causal", (2**24,), (2,)) == "torch"  # FFT above 2^24
    no_float32 = ops.Implementation(ops.torch_forward, ops.torch_backward, ops.torch_spectrum,
                                    unsupported=lambda dtype, *_: "no float32" if dtype == torch.float32 else None)
    monkeypatch.setitem(ops._IMPLS, "triton", no_float32)
    assert ops._auto_choice(dev, torch.float16, "causal", (4096,), (4096,)) == "triton"
    assert ops._auto_choice(dev, torch.float32, "causal", (4096,), (4096,)) == "torch"
    assert ops._auto_choice(torch.device("cpu"), torch.float16, "causal", (4096,), (4096,)) == "torch"
