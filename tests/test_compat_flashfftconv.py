"""fastspec.compat.flashfftconv against FlashFFTConv's definition
(fastspec.reference.fftconv.flashfftconv_reference), on every backend in
fastspec.ops.fftconv._IMPLS, and against the peer itself where it imports (it needs CUDA)."""
import inspect

import pytest
import torch
import torch.nn.functional as F

import fastspec
from fastspec.compat import flashfftconv as compat
from fastspec.compat.flashfftconv import FlashFFTConv
from fastspec.ops import fftconv as ops
from fastspec.reference.fftconv import flashfftconv_reference

from conftest import DEVICE, assert_close_to_reference, backend_params, random_input


def _implemented(params):
    """Backend params; a backend without an fft_conv implementation (yet) is skipped."""
    out = []
    for param in params:
        marks = list(param.marks)
        if param.values[0] not in ops._IMPLS:
            marks.append(pytest.mark.skip(reason=f"{param.values[0]}: no fft_conv implementation yet"))
        out.append(pytest.param(param.values[0], marks=marks, id=param.values[0]))
    return out


ALL_BACKENDS = _implemented(backend_params())
FLOAT32_FLOOR = 1e-6
"""fft_conv's float32 floor (tests/test_fftconv.py): an FFT of size n rounds about log2(n) times."""

CASES = {  # name: (seqlen, L, Lk)
    "2L": (16, 8, 8),  # the usual FlashFFTConv(2 * L): causal
    "no-wrap-exact": (21, 7, 15),  # seqlen = L + Lk - 1, Lk > L: causal, taps past L unused
    "short-filter": (40, 33, 5),
    "wrap": (12, 8, 8),  # seqlen < L + Lk - 1: taps wrap around onto the padding and back
    "wrap-long-filter": (15, 9, 15),
    "L=seqlen": (16, 16, 16),  # circular, nothing padded
    "odd-seqlen": (13, 13, 5),
    "odd-wrap": (27, 20, 11),
    "one": (1, 1, 1),
}
DTYPES = [(torch.float64, torch.float64), (torch.float32, torch.float32), (torch.float16, torch.float32),
          (torch.float16, torch.float16), (torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16)]


def _inputs(seqlen, L, Lk, dtype, k_dtype, gated, B=2, H=3):
    u = random_input((B, H, L), dtype)
    k = random_input((H, Lk), k_dtype)
    gates = [random_input((B, H, L), dtype) for _ in range(2)] if gated else [None, None]
    return u, k, gates


def _unsupported(backend, seqlen, L, Lk, dtype):
    """Why ``backend`` does not take the fft_conv call the module makes for these sizes, or None."""
    if seqlen >= L + Lk - 1:
        return ops._IMPLS[backend].unsupported(dtype, "causal", (L,), (min(Lk, L),))
    return ops._IMPLS[backend].unsupported(dtype, "circular", (seqlen,), (Lk,))


def _reference(u, k, seqlen, pregate=None, postgate=None):
    cpu = [None if t is None else t.detach().cpu() for t in (pregate, postgate)]
    return flashfftconv_reference(u.detach().cpu(), k.detach().cpu(), seqlen, pregate=cpu[0], postgate=cpu[1])


def _assert_close(out, ref):
    assert_close_to_reference(out, ref, floor=FLOAT32_FLOOR if out.dtype == torch.float32 else None)


# --------------------------------------------------------------------------- the definition


def test_the_peers_signatures():
    """FlashFFTConv(seqlen, dtype=torch.float16, use_32_butterfly=True); forward(u, k, pregate, postgate)."""
    params = inspect.signature(FlashFFTConv).parameters
    assert [(p.name, p.default) for p in params.values()] == [
        ("seqlen", inspect.Parameter.empty), ("dtype", torch.float16), ("use_32_butterfly", True), ("backend", "auto")]
    assert params["backend"].kind == inspect.Parameter.KEYWORD_ONLY  # ours
    forward = inspect.signature(FlashFFTConv.forward).parameters
    assert [(p.name, p.default) for p in forward.values()][1:] == [
        ("u", inspect.Parameter.empty), ("k", inspect.Parameter.empty), ("pregate", None), ("postgate", None)]
    assert isinstance(FlashFFTConv(256), torch.nn.Module) and compat.__all__ == ["FlashFFTConv"]


@pytest.mark.parametrize("case", CASES)
def test_reference_is_the_peers_own_formula(case):
    """The peer's tests check against ifft(fft(u·pregate, n) · fft(k, n)).real[..., :L] · postgate."""
    seqlen, L, Lk = CASES[case]
    u, k, (pregate, postgate) = _inputs(seqlen, L, Lk, torch.float64, torch.float64, True, H=4)
    u, k, pregate, postgate = (t.cpu() for t in (u, k, pregate, postgate))
    spectrum = torch.fft.fft(u * pregate, n=seqlen) * torch.fft.fft(k, n=seqlen)
    expect = torch.fft.ifft(spectrum, n=seqlen).real[..., :L] * postgate
    torch.testing.assert_close(flashfftconv_reference(u, k, seqlen, pregate=pregate, postgate=postgate), expect,
                               rtol=1e-12, atol=1e-12)
    plain = torch.fft.ifft(torch.fft.fft(u, n=seqlen) * torch.fft.fft(k, n=seqlen), n=seqlen).real[..., :L]
    torch.testing.assert_close(flashfftconv_reference(u, k, seqlen), plain, rtol=1e-12, atol=1e-12)


def test_no_wrap_around_is_the_causal_convolution():
    """With seqlen >= L + Lk - 1 the definition is fastspec's causal mode; below, it is not."""
    u, k, _ = _inputs(0, 10, 6, torch.float64, torch.float64, False)
    causal = fastspec.fft_conv(u, k, mode="causal")
    torch.testing.assert_close(flashfftconv_reference(u, k, 15).to(DEVICE), causal)
    assert not torch.allclose(flashfftconv_reference(u, k, 14).to(DEVICE), causal)


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
def test_forward_matches_reference(backend, case, gated):
    seqlen, L, Lk = CASES[case]
    module = FlashFFTConv(seqlen, backend=backend)
    for dtype, k_dtype in DTYPES:
        if _unsupported(backend, seqlen, L, Lk, dtype):
            continue
        u, k, gates = _inputs(seqlen, L, Lk, dtype, k_dtype, gated)
        out = module(u, k, *gates)
        assert out.shape == u.shape and out.dtype == dtype and out.device == u.device
        _assert_close(out, _reference(u, k, seqlen, *gates))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_one_gate_and_longer_sequences(backend):
    """One gate without the other (the peer asserts both or neither); lengths beyond the tiny ones."""
    for seqlen, L, Lk in [(2048, 1024, 1024), (1000, 777, 500), (999, 999, 999)]:
        if _unsupported(backend, seqlen, L, Lk, torch.float32):
            continue
        u, k, (pregate, postgate) = _inputs(seqlen, L, Lk, torch.float32, torch.float32, True, B=1)
        module = FlashFFTConv(seqlen, backend=backend)
        _assert_close(module(u, k, pregate), _reference(u, k, seqlen, pregate))
        _assert_close(module(u, k, postgate=postgate), _reference(u, k, seqlen, postgate=postgate))


def test_pads_only_when_needed(monkeypatch):
    """causal fft_conv when nothing wraps (no padding: fastspec picks the FFT size), circular
    over the zero-padded sequence otherwise, and over u itself when L = seqlen."""
    calls = []

    def spy(u, k, **kwargs):
        calls.append((tuple(u.shape), tuple(k.shape), kwargs["mode"]))
        return fastspec.fft_conv(u, k, **kwargs)

    monkeypatch.setattr(compat, "fft_conv", spy)
    u = random_input((2, 3, 10), torch.float32)
    for seqlen, taps in [(20, 11), (20, 5), (20, 20), (16, 8), (10, 4)]:
        FlashFFTConv(seqlen)(u, random_input((3, taps), torch.float32))
    assert calls == [((2, 3, 10), (3, 10), "causal"), ((2, 3, 10), (3, 5), "causal"),
                     ((2, 3, 20), (3, 20), "circular"), ((2, 3, 16), (3, 8), "circular"),
                     ((2, 3, 10), (3, 4), "circular")]


def test_dtype_argument_does_not_cast():
    """As the peer: the output has u's dtype whatever the module's dtype; k of another half
    type than u is converted to float32 (exactly)."""
    u, k, _ = _inputs(32, 16, 16, torch.float16, torch.bfloat16, False)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        out = FlashFFTConv(32, dtype=dtype)(u, k)
        assert out.dtype == torch.float16
        _assert_close(out, _reference(u, k, 32))
    u32 = random_input((2, 3, 16), torch.float32)
    assert FlashFFTConv(32)(u32, k).dtype == torch.float32
    torch.testing.assert_close(FlashFFTConv(32)(u32, k), FlashFFTConv(32)(u32, k.float()))


def test_non_contiguous_inputs():
    base = random_input((2, 12, 3), torch.float32)
    u = base.transpose(1, 2)  # (2, 3, 12), strided
    k = random_input((3, 24), torch.float32)[:, ::2]
    pregate = random_input((1, 3, 12), torch.float32).expand(2, 3, 12)
    for seqlen in (24, 16):
        _assert_close(FlashFFTConv(seqlen)(u, k, pregate, None), _reference(u, k, seqlen, pregate))


# --------------------------------------------------------------------------- autograd


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("case", ["2L", "wrap", "odd-wrap", "wrap-long-filter"])
@pytest.mark.parametrize("dtype,k_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                           (torch.float16, torch.float16)], ids=str)
def test_grads_match_reference(backend, case, dtype, k_dtype):
    seqlen, L, Lk = CASES[case]
    if reason := _unsupported(backend, seqlen, L, Lk, dtype):
        pytest.skip(reason)
    u, k, gates = _inputs(seqlen, L, Lk, dtype, k_dtype, True)
    weight = random_input(u.shape, dtype)
    ours = [t.clone().requires_grad_() for t in (u, k, *gates)]
    (FlashFFTConv(seqlen, backend=backend)(*ours) * weight).sum().backward()
    theirs = [t.detach().cpu().double().requires_grad_() for t in (u, k, *gates)]
    (flashfftconv_reference(theirs[0], theirs[1], seqlen, pregate=theirs[2], postgate=theirs[3])
     * weight.cpu().double()).sum().backward()
    for name, a, b in zip(("u", "k", "pregate", "postgate"), ours, theirs):
        assert a.grad.dtype == a.dtype, name
        _assert_close(a.grad, b.grad)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("seqlen", [16, 12])
def test_backward_through_sum_in_eval_mode(backend, seqlen):
    """y.sum().backward() sends a stride-0 gradient; eval mode has gradients too (not the peer)."""
    if reason := _unsupported(backend, seqlen, 8, 8, torch.float32):
        pytest.skip(reason)
    u, k, gates = _inputs(seqlen, 8, 8, torch.float32, torch.float32, True)
    ours = [t.clone().requires_grad_() for t in (u, k, *gates)]
    FlashFFTConv(seqlen, backend=backend).eval()(*ours).sum().backward()
    theirs = [t.detach().cpu().double().requires_grad_() for t in (u, k, *gates)]
    flashfftconv_reference(theirs[0], theirs[1], seqlen, pregate=theirs[2], postgate=theirs[3]).sum().backward()
    for a, b in zip(ours, theirs):
        _assert_close(a.grad, b.grad)


@pytest.mark.parametrize("seqlen", [12, 7, 5])
def test_gradcheck(seqlen):
    """seqlen 12: causal; 7 and 5: wrapped (7: padded circular, 5: L = seqlen)."""
    u, k, gates = _inputs(seqlen, min(5, seqlen), 4, torch.float64, torch.float64, True, B=1, H=2)
    inputs = tuple(t.requires_grad_() for t in (u, k, *gates))
    module = FlashFFTConv(seqlen, backend="torch")
    assert torch.autograd.gradcheck(module, inputs)
    assert torch.autograd.gradgradcheck(module, inputs)


def test_compile_fullgraph():
    torch._dynamo.reset()
    module = FlashFFTConv(24)

    def layer(u, k, pregate, postgate):
        return torch.relu(module(u * 2.0, k, pregate, postgate)) + module(u, k[:, :5])

    u, k, gates = _inputs(24, 20, 20, torch.float32, torch.float32, True)
    torch.testing.assert_close(torch.compile(layer, fullgraph=True)(u, k, *gates), layer(u, k, *gates))


# --------------------------------------------------------------------------- the module


def test_state_dict_of_a_model_with_the_peers_buffers_loads():
    """The peer registers its DFT matrices and twiddle factors as buffers; a checkpoint of a
    model holding the peer's module loads strictly into the same model holding this one."""
    model = torch.nn.Module()
    model.flashfftconv, model.proj = FlashFFTConv(1024, dtype=torch.bfloat16), torch.nn.Linear(3, 3)
    state = model.state_dict()
    assert set(state) == {"proj.weight", "proj.bias"}
    state.update({"flashfftconv.f_sqrt_N_fft": torch.zeros(32, 32, 2), "flashfftconv.twiddle_factors_fft": torch.zeros(32, 32, 2)})
    assert not model.load_state_dict(state).unexpected_keys
    assert repr(model.flashfftconv) == "FlashFFTConv(seqlen=1024, dtype=torch.bfloat16, use_32_butterfly=True)"


def test_any_seqlen_and_attributes():
    module = FlashFFTConv(777, torch.float32, False)
    assert (module.seqlen, module.dtype, module.use_32_butterfly) == (777, torch.float32, False)
    assert list(module.parameters()) == [] and list(module.buffers()) == []
    assert module(torch.ones(0, 3, 700), torch.ones(3, 500)).shape == (0, 3, 700)  # an empty batch


def test_bad_arguments():
    u, k = torch.ones(2, 3, 8), torch.ones(3, 8)
    module = FlashFFTConv(16)
    with pytest.raises(TypeError, match="FlashFFTConv: seqlen must be an int, got float"):
        FlashFFTConv(16.0)
    with pytest.raises(ValueError, match="seqlen \\(the FFT size\\) must be at least 1, got 0"):
        FlashFFTConv(0)
    with pytest.raises(TypeError, match="dtype must be float16, bfloat16, float32 or float64, got torch.int32"):
        FlashFFTConv(16, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"FlashFFTConv\(seqlen=16\): u must be \(B, H, L\) with 1 <= L <= 16, "
                                         r"got shape \(2, 3, 17\)"):
        module(torch.ones(2, 3, 17), k)
    with pytest.raises(ValueError, match=r"u must be \(B, H, L\).*got shape \(3, 8\)"):
        module(torch.ones(3, 8), k)
    with pytest.raises(ValueError, match=r"k must be \(H, Lk\) with H = 3 as in u and 1 <= Lk <= 16, got shape \(4, 8\)"):
        module(u, torch.ones(4, 8))
    with pytest.raises(ValueError, match=r"1 <= Lk <= 16, got shape \(3, 17\)"):
        module(u, torch.ones(3, 17))
    with pytest.raises(ValueError, match=r"got shape \(3, 0\)"):
        module(u, torch.ones(3, 0))
    with pytest.raises(ValueError, match=r"pregate must have u's shape \(2, 3, 8\), got \(2, 3, 7\)"):
        module(u, k, torch.ones(2, 3, 7), None)
    with pytest.raises(TypeError, match="postgate must have u's dtype torch.float32, got torch.float16"):
        module(u, k, None, torch.ones(2, 3, 8, dtype=torch.float16))
    with pytest.raises(ValueError, match="every tensor must be on u's device \\(cpu\\); k is on meta"):
        module(u.cpu(), torch.ones(3, 8, device="meta"))
    with pytest.raises(TypeError, match="u must be float16, bfloat16, float32 or float64, got torch.int64"):
        module(torch.ones(2, 3, 8, dtype=torch.int64), k)
    with pytest.raises(TypeError, match="k must be a torch.Tensor, got list"):
        module(u, [[1.0] * 8] * 3)
    with pytest.raises(ValueError, match="backend must be one of"):
        FlashFFTConv(16, backend="numpy")(u, k)


# --------------------------------------------------------------------------- the peer itself


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the peer needs a CUDA GPU")
@pytest.mark.parametrize("seqlen", [256, 1024, 4096, 2 * 32768])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_against_the_peer(seqlen, dtype):
    """Both against the definition: ours by the tolerance rule; the peer, which computes in
    dtype, within its own tests' bound (5% relative here); and the two close to each other."""
    peer = pytest.importorskip("flashfftconv").FlashFFTConv(seqlen, dtype=dtype).cuda()
    ours = FlashFFTConv(seqlen, dtype=dtype)
    for L, gated in ((seqlen // 2, False), (seqlen // 2, True), (seqlen, True)):
        u, _, gates = _inputs(seqlen, L, L, dtype, torch.float32, gated, B=2, H=16)
        k = random_input((16, L), torch.float32) * torch.exp(-0.01 * torch.arange(L, device=u.device))
        ref = _reference(u, k, seqlen, *gates)
        ours_out, peer_out = ours(u, k, *gates), peer(u, k, *gates)
        assert peer_out.dtype == ours_out.dtype == dtype
        _assert_close(ours_out, ref)
        peer_err = (peer_out.double().cpu() - ref).norm() / ref.norm()
        assert peer_err < 5e-2, f"the peer's relative error {peer_err:.3g}"
        assert (ours_out.double() - peer_out.double()).norm().cpu() / ref.norm() < 2 * peer_err + 1e-2
