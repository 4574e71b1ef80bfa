"""FFT long convolution: public functions, validation, custom ops, autograd, torch backend.

``fft_conv(u, k, mode, pregate, postgate, D)`` is ``y = postgate · conv(u · pregate, k) + D · u``
per channel, u and the gates (B, H, L), k (H, Lk), D (H,); with v = u · pregate:

- ``causal``:        y[t] = Σ_{0≤s≤t} k[s]·v[t−s]           (1 ≤ Lk ≤ L; k is zero beyond Lk)
- ``circular``:      y[t] = Σ_{0≤s<Lk} k[s]·v[(t−s) mod L]  (1 ≤ Lk ≤ L)
- ``bidirectional``: y[t] = Σ_s k[s+c]·v[t−s] over 0 ≤ t−s < L, c = (Lk−1)/2 (Lk odd, ≤ 2L−1;
  Lk = 2L−1 is M2-BERT's and Hyena's two-sided filter with lag 0 at index L−1)

``keep_frequencies=n`` (circular only, FlashFFTConv's frequency-sparse convolution): the
filter's L-point DFT keeps the bins f with min(f, L − f) < n and is zero at the others, so
k is replaced by the real L-tap filter k_n = IDFT_L(mask_n · DFT_L(k)) (``truncated_filter``
in fastspec/reference, ``project_filter`` here); n ≥ 1, and n > L/2 keeps every bin.

``fft_conv2d(u, k, mode)`` is the depthwise 2D convolution, u (B, C, H, W), k (C, kh, kw):
``circular`` y[i,j] = Σ k[a,b]·u[(i−a) mod H, (j−b) mod W] (kh ≤ H, kw ≤ W); ``same`` the
zero-padded linear convolution cropped to u's size, y[i,j] = Σ k[a,b]·u[i−a+ch, j−b+cw] with
ch = (kh−1)//2, cw = (kw−1)//2 (kh ≤ 2H−1, kw ≤ 2W−1): torch's ``padding="same"`` for odd
kernels (with k flipped: torch correlates), scipy.signal.convolve2d's ``"same"`` for all.

Every call is a circular convolution of some size (``plan``): the filter is "wrapped" so
that its lag-0 tap sits at index 0 and negative lags at the end; ``circular`` uses the
input's size, the others the smallest 5-smooth size with room for every lag, L + Lk − 1
for ``causal`` and L + (Lk−1)/2 for ``bidirectional`` (so a short filter costs a shorter
FFT: L + Lk − 1 instead of the 2L of a padded one).

Both public functions call one registered op, ``fastspec::fft_conv`` (1 or 2 convolved
dims), whose autograd calls ``fastspec::fft_conv_backward``: the gradients of every input
from the FFTs of v and of grad_y·postgate (v's FFT is recomputed, not saved: the memory of
the inputs only). One exception, for speed where memory is plentiful: eager autograd on
the torch backend runs ``_TorchKeepingSpectrum``, which keeps V, z and K from the forward
(the baseline's memory, two FFTs a row fewer). Double backward differentiates a plain
PyTorch version of the forward (``_differentiable_forward``).

Backend contract: ``_IMPLS`` maps a backend name to an :class:`Implementation`. A backend
gets tensors that passed ``_validate`` (any strides, stride 0 included: it makes contiguous
what it needs) and returns new tensors:

- ``forward(u, k, k_spectrum, pregate, postgate, D, mode) -> y``: y contiguous, u's shape
  and dtype; ``k_spectrum`` is None or what this backend's ``spectrum`` returned for k
  (from ``prepare_filter`` or the op's cache: read it, never modify it).
- ``backward(grad_y, u, k, pregate, postgate, D, mode, needs) -> (du, dk, dpregate,
  dpostgate, dD)``: ``needs`` five bools; None where False; each gradient contiguous, in
  its input's shape and dtype.
- ``spectrum(k, mode, shape) -> Tensor``: k prepared for inputs of spatial ``shape``, in
  whatever layout ``forward`` takes.
- ``keeps(mode, shape, kshape) -> bool`` (default False): whether the backend truncates the
  spectrum itself for ``keep_frequencies``; then each of the three above takes a trailing
  ``keep`` ≥ 1 in such calls. ``fft_conv`` hands the other backends the projected filter.
- ``unsupported(dtype, mode, shape, kshape) -> str | None``: why the backend cannot take
  this call (u's dtype and spatial shape, k's taps), or None.

u is (B, H, L) from ``fft_conv`` (gates and D optional) or (B, C, H, W) from
``fft_conv2d`` (gates and D None); float16/bfloat16 are accumulated in float32.

The op computes the spectrum of a filter that does not require grad once while it is
unchanged (``cached_spectrum``: the same tensor object, alive, with the same version
counter, for the same backend, mode, shapes, dtype and keep_frequencies) and hands it to
``forward``; backends may use it in ``backward`` too.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import math
import weakref
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from fastspec import _backend

MODES = ("causal", "circular", "bidirectional")
MODES_2D = ("circular", "same")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# backend="auto" on a CUDA tensor: the first backend of the list that takes the call and
# lists u's dtype. Triton passed its tests on the interpreter (no GPU timing yet: the measured
# crossovers go here); float64 stays on torch (cuFFT), where Triton's float64 dots are untimed.
# CPU tensors use torch.
AUTO_CUDA = (("triton", (torch.float16, torch.bfloat16, torch.float32)), ("torch", FLOAT_DTYPES))
"""(backend, dtypes it is chosen for), in order of preference, for CUDA tensors."""

CPU_BLOCK_BYTES = 16 << 20
"""The torch backend works through the rows in blocks of about this many bytes of FFT input
on the CPU: every buffer stays under glibc's 32 MiB mmap threshold, so it is reused rather
than mapped fresh from the OS (those page faults cost more than the FFTs at L ≥ 16K), and
a block's FFTs, product and gates run in the last-level cache. Larger blocks (one per
call) are 1.5–2x slower from L = 16K; smaller ones add parallel regions, each of which
waits for a time slice when other jobs share the cores (measured on 2 shared cores)."""
CUDA_BLOCK_BYTES = 1 << 30
"""The same on CUDA, only to bound the workspace (a few launches per GiB)."""


# ---------------------------------------------------------------------------- FFT plan


def fast_size(n: int) -> int:
    """The smallest 2^a·3^b·5^c ≥ n (FFT libraries are fastest on such sizes)."""
    best = 1 << max(n - 1, 0).bit_length()
    odd5 = 1
    while odd5 < best:
        odd = odd5
        while odd < best:
            m = odd
            while m < n:
                m *= 2
            best = min(best, m)
            odd *= 3
        odd5 *= 5
    return best


@dataclasses.dataclass(frozen=True)
class Plan:
    """A call as a circular convolution over the last len(sizes) dims: FFT sizes, and per
    dim the index of k's lag-0 tap (taps before it are negative lags)."""

    sizes: tuple[int, ...]
    centres: tuple[int, ...]

    @functools.cached_property
    def dims(self) -> tuple[int, ...]:
        return tuple(range(-len(self.sizes), 0))

    def rfft(self, x: torch.Tensor) -> torch.Tensor:
        """rfft of x over the plan's dims, zero-padded to its sizes (1D through ``rfft``, whose
        call costs less than ``rfftn``'s)."""
        if len(self.sizes) == 1:
            return torch.fft.rfft(x, n=self.sizes[0])
        return torch.fft.rfftn(x, s=self.sizes, dim=self.dims)

    def irfft(self, spectrum: torch.Tensor, crop: Sequence[int] | None = None) -> torch.Tensor:
        """The inverse of ``rfft``: real, the plan's sizes, or the leading ``crop`` of them (a view)."""
        if len(self.sizes) == 1:
            y = torch.fft.irfft(spectrum, n=self.sizes[0])
            return y if crop is None else y[..., :crop[0]]
        y = torch.fft.irfftn(spectrum, s=self.sizes, dim=self.dims)
        return y if crop is None else y[(..., *(slice(0, n) for n in crop))]


@functools.lru_cache(maxsize=256)
def plan(mode: str, shape: tuple[int, ...], kshape: tuple[int, ...]) -> Plan:
    """The circular convolution that computes ``mode`` for inputs of spatial ``shape`` and
    filters of ``kshape`` taps. Lags run from −centre to taps−1−centre; a size of
    n + max(centre, taps−1−centre) keeps every product that wraps around on zeros."""
    centres = tuple((t - 1) // 2 if mode in ("bidirectional", "same") else 0 for t in kshape)
    if mode == "circular":
        return Plan(tuple(shape), centres)
    sizes = tuple(fast_size(n + max(c, t - 1 - c)) for n, t, c in zip(shape, kshape, centres, strict=True))
    return Plan(sizes, centres)


def _wrap(k: torch.Tensor, p: Plan) -> torch.Tensor:
    """k (C, *taps) as a circular filter (C, *p.sizes): the tap of lag s at index s mod size."""
    pad = [amount for size, taps in zip(reversed(p.sizes), reversed(k.shape[1:])) for amount in (0, size - taps)]
    wrapped = F.pad(k, pad)
    return wrapped.roll([-c for c in p.centres], p.dims) if any(p.centres) else wrapped


def _unwrap(wrapped: torch.Tensor, p: Plan, kshape: Sequence[int]) -> torch.Tensor:
    """The adjoint of ``_wrap``: the taps of a circular filter."""
    if any(p.centres):
        wrapped = wrapped.roll(list(p.centres), p.dims)
    return wrapped[(..., *(slice(0, t) for t in kshape))]


# ---------------------------------------------------------------------------- torch backend


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _gated(t: torch.Tensor, gate: torch.Tensor | None, acc: torch.dtype) -> torch.Tensor:
    """t·gate (t without a gate) in ``acc``: half precision widened once and multiplied in
    place (one new tensor, where ``t.to(acc) * gate`` makes two); t itself when nothing changes."""
    if gate is None:
        return t.to(acc)
    return t * gate if t.dtype == acc else t.to(acc).mul_(gate)


def _blocks(batch: int, channels: int, row_bytes: int, device: torch.device) -> list[tuple[slice, slice]]:
    """(batch, channel) slices covering every row, each of about a block's bytes of rows."""
    budget = CUDA_BLOCK_BYTES if device.type == "cuda" else CPU_BLOCK_BYTES
    rows = max(1, budget // row_bytes)
    if batch * channels == 0:
        return []
    if rows >= batch * channels:
        return [(ALL_ROWS, ALL_ROWS)]
    if rows >= channels:
        step = rows // max(channels, 1)
        return [(slice(b, b + step), slice(None)) for b in range(0, batch, step)]
    return [(slice(b, b + 1), slice(h, h + rows)) for b in range(batch) for h in range(0, channels, rows)]


ALL_ROWS = slice(None)


def _rows(t: torch.Tensor, bs: slice, hs: slice) -> torch.Tensor:
    """t[bs, hs], or t itself for the one block of every row (indexing costs microseconds)."""
    return t if bs == ALL_ROWS and hs == ALL_ROWS else t[bs, hs]


def _channel_column(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """(C,) as (C, 1, ...) against (…, C, *spatial)."""
    return t.reshape(-1, *([1] * ndim))


def _keep_bins(spectrum: torch.Tensor, keep: int) -> torch.Tensor:
    """An rfft of size L (circular) with the bins f ≥ keep zeroed (min(f, L − f) = f there)."""
    if keep:
        spectrum[..., keep:] = 0
    return spectrum


def torch_spectrum(k: torch.Tensor, mode: str, shape: Sequence[int], keep: int = 0) -> torch.Tensor:
    """rfft of the wrapped filter over the plan's sizes: complex (C, *sizes[:-1], sizes[-1]//2 + 1)."""
    p = plan(mode, shape, k.shape[1:])
    k = k.to(_acc(k.dtype))
    # lag 0 at index 0 already: the rfft zero-pads
    return _keep_bins(p.rfft(_wrap(k, p) if any(p.centres) else k), keep)


def torch_forward(u, k, k_spectrum, pregate, postgate, D, mode, keep=0, *, save=False):
    """The torch backend's forward (contract in the module docstring). Per block of rows:
    rfft of v (zero-padded to the plan's size), product with k's spectrum (D folded into it
    when there are no gates), inverse rfft, and one fused pass for the gates and D into the
    output: five passes a block, each in cache. ``save``: returns (y, V, z, K) instead, V the
    rfft of v, z = conv(v, k) before the postgate (None without one) and K k's spectrum, for
    a backward that does not recompute them."""
    shape, nd = u.shape[2:], len(u.shape[2:])
    p, acc = plan(mode, shape, k.shape[1:]), _acc(u.dtype)
    k_freq = torch_spectrum(k, mode, shape, keep) if k_spectrum is None else k_spectrum
    fold_d = D is not None and pregate is None and postgate is None
    # D·u = conv(u, D·δ): lag 0 adds D to every frequency
    spectrum = k_freq + _channel_column(D.to(acc), nd) if fold_d else k_freq
    row_bytes = math.prod(p.sizes) * acc.itemsize
    blocks = _blocks(u.shape[0], u.shape[1], row_bytes, u.device)
    # one block in the accumulation dtype: each result is a fresh tensor, no preallocated
    # output to copy into (an allocation ahead of the FFTs costs ~20 µs a call on the CPU)
    direct = blocks == [(ALL_ROWS, ALL_ROWS)] and u.dtype == acc
    out = None if direct else torch.empty(u.shape, dtype=u.dtype, device=u.device)
    v_freq_all = z_all = None
    if save and not direct:
        v_freq_all = torch.empty((*u.shape[:2], *p.sizes[:-1], p.sizes[-1] // 2 + 1), dtype=spectrum.dtype,
                                 device=u.device)
        z_all = torch.empty(u.shape, dtype=acc, device=u.device) if postgate is not None else None
    for bs, hs in blocks:
        uc, dst = _rows(u, bs, hs), None if direct else _rows(out, bs, hs)
        freq = p.rfft(_gated(uc, None if pregate is None else _rows(pregate, bs, hs), acc))
        block_spectrum = spectrum if hs == ALL_ROWS else spectrum[hs]
        if save and direct:
            v_freq_all, freq = freq, freq * block_spectrum
        else:
            if save:
                _rows(v_freq_all, bs, hs).copy_(freq)
            freq = freq.mul_(block_spectrum)
        y = p.irfft(freq, shape)
        if save and postgate is not None:
            if direct:  # a copy: y is the irfft's own output where nothing is cropped (circular)
                z_all = y.clone(memory_format=torch.contiguous_format)
            else:
                _rows(z_all, bs, hs).copy_(y)
        if D is not None and not fold_d:
            if postgate is not None:
                y = y.mul_(_rows(postgate, bs, hs))
            y = torch.addcmul(y, uc, _channel_column(D[hs], nd), out=dst)
        elif postgate is not None:
            y = torch.mul(y, _rows(postgate, bs, hs), out=dst)
        elif not direct:
            dst.copy_(y)
        if direct:
            out = y.contiguous()
    return (out, v_freq_all, z_all, k_freq) if save else out


def torch_backward(grad_y, u, k, pregate, postgate, D, mode, needs, keep=0, *, saved=None):
    """The torch backend's backward (contract in the module docstring). With v = u·pregate,
    z = conv(v, k) and gz = grad_y·postgate: dpostgate = grad_y·z, dv = corr(gz, k)
    (irfft of GZ·conj K), du = pregate·dv + D·grad_y, dpregate = u·dv, dk = Σ_batch corr(gz, v)
    (the batch summed in frequency, the bins ``keep`` drops zeroed), dD = Σ grad_y·u.
    ``saved``: (V, z, K) of ``torch_forward(..., save=True)``, used instead of recomputing them."""
    need_du, need_dk, need_dpre, need_dpost, need_dd = needs
    shape, nd = u.shape[2:], len(u.shape[2:])
    p, acc = plan(mode, shape, k.shape[1:]), _acc(u.dtype)
    spectrum = cached_spectrum("torch", k, mode, shape, keep) if saved is None else saved[2]
    # conj_physical, not the lazy conj(): a conjugate bit is lost when the op runs under
    # AOTAutograd's dispatch (opcheck's test_aot_dispatch_dynamic shows it)
    spectrum_conj = torch.conj_physical(spectrum)
    du = torch.empty(u.shape, dtype=u.dtype, device=u.device) if need_du else None
    dpre = torch.empty(u.shape, dtype=u.dtype, device=u.device) if need_dpre else None
    dpost = torch.empty(u.shape, dtype=u.dtype, device=u.device) if need_dpost else None
    dk_freq = torch.zeros_like(spectrum) if need_dk else None
    # float64: a float32 sum of B·L products cancels to ~1e-6 of its terms (flaky dD tests)
    dd = torch.zeros(u.shape[1], dtype=torch.float64, device=u.device) if need_dd else None
    need_dv = need_du or need_dpre
    row_bytes = math.prod(p.sizes) * acc.itemsize
    for bs, hs in _blocks(u.shape[0], u.shape[1], row_bytes, u.device):
        uc, gc = _rows(u, bs, hs), _rows(grad_y, bs, hs)
        if saved is not None:
            v_freq = _rows(saved[0], bs, hs)
        elif need_dpost or need_dk:
            v = _gated(uc, None if pregate is None else pregate[bs, hs], acc)
            v_freq = p.rfft(v)
        if need_dv or need_dk:
            gz = _gated(gc, None if postgate is None else postgate[bs, hs], acc)
            gz_freq = p.rfft(gz)
        if need_dpost and saved is not None:
            torch.mul(_rows(saved[1], bs, hs), gc, out=_rows(dpost, bs, hs))
        elif need_dpost:
            z = p.irfft(v_freq * spectrum[hs], shape)
            dpost[bs, hs] = z.mul_(gc)
        if need_dv:
            dv = p.irfft(gz_freq * spectrum_conj[hs], shape)
            if need_dpre:
                dpre[bs, hs] = dv * uc
            if need_du:
                if pregate is not None:
                    dv = dv.mul_(pregate[bs, hs])
                if D is not None:
                    dv = dv.addcmul_(gc, _channel_column(D[hs], nd))
                du[bs, hs] = dv
        if need_dk:
            v_conj = v_freq.conj_physical_() if saved is None else torch.conj_physical(v_freq)
            dk_freq[hs] += gz_freq.mul_(v_conj).sum(0)
        if need_dd:
            dd[hs] += (gc.double() * uc.double()).sum(0).sum(-1)
    if need_dk:
        dk_freq = _keep_bins(dk_freq, keep)
    dk = _unwrap(p.irfft(dk_freq), p, k.shape[1:]).to(k.dtype).contiguous() if need_dk else None
    return du, dk, dpre, dpost, dd.to(D.dtype) if need_dd else None


def _differentiable_forward(u, k, pregate, postgate, D, mode, keep=0):
    """The op in plain differentiable PyTorch (autograd records every step), for double
    backward: the first backward differentiates this instead of calling the backward op."""
    shape, nd = u.shape[2:], len(u.shape[2:])
    p, acc = plan(mode, shape, k.shape[1:]), _acc(u.dtype)
    v = u.to(acc) if pregate is None else u.to(acc) * pregate
    spectrum = p.rfft(_wrap(k.to(acc), p))
    if keep:
        spectrum = spectrum * (torch.arange(spectrum.shape[-1], device=u.device) < keep)
    y = p.irfft(p.rfft(v) * spectrum, shape)
    if postgate is not None:
        y = y * postgate
    if D is not None:
        y = y + _channel_column(D, nd) * u
    return y.to(u.dtype)


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One backend of the family; the contract is in the module docstring."""

    forward: Callable[..., torch.Tensor]
    backward: Callable[..., tuple]
    spectrum: Callable[..., torch.Tensor]
    unsupported: Callable[..., str | None] = lambda dtype, mode, shape, kshape: None
    keeps: Callable[..., bool] = lambda mode, shape, kshape: False


# ---------------------------------------------------------------------------- triton backend


def _triton_kernels():
    from fastspec.triton_kernels import fftconv

    return fftconv


def triton_unsupported(dtype, mode, shape, kshape) -> str | None:
    """Why the Triton kernels cannot take a call (1D only, FFT size ≤ 2^24), or None."""
    if len(shape) != 1:
        return "the triton backend has no fft_conv2d (backend='torch' has)"
    kernels = _triton_kernels()
    p = kernels.plan(mode, shape[0], kshape[0])
    if p.n > kernels.MAX_N:
        return (f"the triton backend takes FFT sizes up to 2^{kernels.MAX_N.bit_length() - 1}; mode={mode!r} with "
                f"L = {shape[0]} and Lk = {kshape[0]} needs {p.n}")
    return None


def triton_keeps(mode, shape, kshape) -> bool:
    """The Triton kernels truncate their own spectrum where their FFT is the L-point one."""
    return len(shape) == 1 and _triton_kernels().plan(mode, shape[0], kshape[0]).n == shape[0]


def triton_spectrum(k: torch.Tensor, mode: str, shape: Sequence[int], keep: int = 0) -> torch.Tensor:
    """k's spectrum by the Triton spectrum kernel: (H, n, 2) real, n the plan's power of two,
    in the kernels' digit-reversed order; float64 for float64 k, else float32."""
    kernels = _triton_kernels()
    return kernels.spectrum(k, kernels.plan(mode, shape[0], k.shape[1]), k.dtype, keep)


def triton_forward(u, k, k_spectrum, pregate, postgate, D, mode, keep=0):
    """The Triton backend's forward (contract in the module docstring)."""
    kernels = _triton_kernels()
    p = kernels.plan(mode, u.shape[2], k.shape[1])
    spectrum = triton_spectrum(k, mode, u.shape[2:], keep) if k_spectrum is None else k_spectrum
    return kernels.forward(u, spectrum, pregate, postgate, D, p, keep)


def triton_backward(grad_y, u, k, pregate, postgate, D, mode, needs, keep=0):
    """The Triton backend's backward (contract in the module docstring): one fused kernel
    (or two, see triton_kernels/fftconv.py), dpostgate by the forward kernel."""
    kernels = _triton_kernels()
    p = kernels.plan(mode, u.shape[2], k.shape[1])
    spectrum = cached_spectrum("triton", k, mode, u.shape[2:], keep)
    du, dk, dpre, dpost, dd = kernels.backward(grad_y, u, spectrum, pregate, postgate, D, p, k.shape[1], needs,
                                               k.dtype, keep)
    return du, None if dk is None else dk.to(k.dtype), dpre, dpost, None if dd is None else dd.to(D.dtype)


_IMPLS: dict[str, Implementation] = {
    "torch": Implementation(forward=torch_forward, backward=torch_backward, spectrum=torch_spectrum,
                            keeps=lambda mode, shape, kshape: len(shape) == 1),  # circular: its FFT is L's
    "triton": Implementation(forward=triton_forward, backward=triton_backward, spectrum=triton_spectrum,
                             unsupported=triton_unsupported, keeps=triton_keeps),
}


# ---------------------------------------------------------------------------- spectrum cache

SPECTRUM_CACHE_BYTES = 256 << 20
"""The spectra ``cached_spectrum`` keeps, in bytes at most (least recently used dropped first)."""
_spectra: collections.OrderedDict = collections.OrderedDict()


def clear_spectrum_cache() -> None:
    """Forget every cached spectrum (after editing a filter through ``.data``, say)."""
    _spectra.clear()


def _with_keep(keep: int) -> tuple:
    """The trailing ``keep`` argument of a backend function: only where it is not 0."""
    return (keep,) if keep else ()


def cached_spectrum(backend: str, k: torch.Tensor, mode: str, shape: Sequence[int], keep: int = 0) -> torch.Tensor:
    """``_IMPLS[backend].spectrum(k, mode, shape[, keep])``, reused while k is the same tensor
    object (held by a weak reference: an entry goes when k does) with the same version
    counter (an in-place edit or load_state_dict changes it), for the same backend, mode,
    shapes, dtype, device and ``keep``. Not cached: a k that requires grad (an edit through
    ``k.data``, as optimizers and gradcheck make, leaves the version counter as it was; and a
    trained filter changes every step anyway), while torch.compile traces, inference tensors
    (no version counter), and spectra larger than SPECTRUM_CACHE_BYTES. An untracked filter
    edited through ``.data`` needs ``clear_spectrum_cache``."""
    shape = tuple(shape)
    if (torch.compiler.is_compiling() or k.requires_grad or k.is_inference()
            or k.device.type == "meta"):
        return _IMPLS[backend].spectrum(k, mode, shape, *_with_keep(keep))
    key = (id(k), backend, mode, shape, tuple(k.shape), k.dtype, k.device, keep)
    entry = _spectra.get(key)
    if entry is not None and entry[0]() is k and entry[1] == k._version:
        _spectra.move_to_end(key)
        return entry[2]
    spectrum = _IMPLS[backend].spectrum(k, mode, shape, *_with_keep(keep))
    size = spectrum.numel() * spectrum.element_size()
    if size <= SPECTRUM_CACHE_BYTES:
        _spectra[key] = (weakref.ref(k, lambda _, key=key: _spectra.pop(key, None)), k._version, spectrum)
        while sum(e[2].numel() * e[2].element_size() for e in _spectra.values()) > SPECTRUM_CACHE_BYTES:
            _spectra.popitem(last=False)
    return spectrum


# ---------------------------------------------------------------------------- cuda backend

CUDA_LOG2N = (7, 15)
"""FFT sizes of the CUDA kernel (csrc/fftconv/fftconv.h): powers of two N = 2^7 ... 2^15."""


def cuda_fft_size(mode: str, length: int, taps: int) -> int | None:
    """The CUDA kernel's FFT size for a call, or None outside its range: ``circular`` uses L
    itself (a power of two), the other modes the plan's room for every lag rounded up to a
    power of two, at least 2^7."""
    lo, hi = CUDA_LOG2N
    if mode == "circular":
        return length if length & (length - 1) == 0 and 1 << lo <= length <= 1 << hi else None
    centre = (taps - 1) // 2 if mode == "bidirectional" else 0
    n = max(1 << (length + max(centre, taps - 1 - centre) - 1).bit_length(), 1 << lo)
    return n if n <= 1 << hi else None


def _cuda_frequency_order(log2m: int, device) -> torch.Tensor:
    """The frequency at each storage position of the kernel's FFT of 2^log2m points
    (fftconv_detail::frequency_of: s = ceil(log2m/4) stages, radix 16 first, then radix 8;
    stage j's digit is digit j of the frequency from the bottom, of the position from the top)."""
    stages = (log2m + 3) // 4
    radices = [4] * (stages - (4 * stages - log2m)) + [3] * (4 * stages - log2m)
    p = torch.arange(1 << log2m, device=device)
    k = torch.zeros_like(p)
    shift_p, shift_k = log2m, 0
    for r in radices:
        shift_p -= r
        k |= ((p >> shift_p) & ((1 << r) - 1)) << shift_k
        shift_k += r
    return k


def cuda_spectrum(k: torch.Tensor, mode: str, shape: Sequence[int], *, correlate: bool = False) -> torch.Tensor:
    """The CUDA kernel's records of k: float32 (H, M, 4), M = N/2, per storage position the
    (α, β) of its spectrum step W[k] = α Z[k] + β conj Z[-k] (csrc/fftconv/fftconv.cu, step 3):
    Z is the half-size FFT of v[2m] + i·v[2m+1]; W that of y[2m] + i·y[2m+1], 1/M included.
    Computed in float64 from the FFT of the wrapped filter K (its conjugate with ``correlate``:
    y[t] = Σ_s k[s]·v[t+s], for the backward): E = (Z + conj Z[-k])/2, O = (Z - conj Z[-k])/2i,
    Y[k] = K[k](E + ω O), Y[k+M] = K[k+M](E - ω O), ω = e^{-2πik/N},
    W = (Y[k] + Y[k+M])/2 + i·conj(ω)(Y[k] - Y[k+M])/2."""
    taps = k.shape[1]
    n = cuda_fft_size(mode, shape[0], taps)
    m = n // 2
    p = Plan((n,), ((taps - 1) // 2 if mode == "bidirectional" else 0,))
    spectrum = torch.fft.fft(_wrap(k.to(torch.float64), p), dim=-1)
    if correlate:
        spectrum = spectrum.conj_physical()
    w = torch.polar(torch.ones(m, dtype=torch.float64, device=k.device),
                    torch.arange(m, dtype=torch.float64, device=k.device) * (-2 * math.pi / n))
    low, high = spectrum[:, :m], spectrum[:, m:]

    def coefficient(z, z_conj):  # W for Z[k] = z, conj Z[-k] = z_conj
        even, odd = (z + z_conj) / 2, (z - z_conj) / 2j
        y_low, y_high = low * (even + w * odd), high * (even - w * odd)
        return ((y_low + y_high) / 2 + 1j * w.conj() * (y_low - y_high) / 2) / m

    alpha, beta = coefficient(1, 0), coefficient(0, 1)
    records = torch.stack([alpha.real, alpha.imag, beta.real, beta.imag], dim=-1)
    return records[:, _cuda_frequency_order(m.bit_length() - 1, k.device)].to(torch.float32).contiguous()


def cuda_unsupported(dtype, mode, shape, kshape) -> str | None:
    """Why the CUDA kernel cannot take a call, or None: 1D, float16/bfloat16, FFT sizes
    2^7 ... 2^15 (circular: L itself a power of two in that range)."""
    if len(shape) != 1:
        return "the cuda backend has no fft_conv2d (backend='torch' has)"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"the cuda backend takes float16 and bfloat16 u, got {dtype} (backend='torch' takes every dtype)"
    if cuda_fft_size(mode, shape[0], kshape[0]) is None:
        lo, hi = CUDA_LOG2N
        if mode == "circular":
            return f"the cuda backend's circular mode takes L = 2^k, {1 << lo} <= L <= {1 << hi}; got L = {shape[0]}"
        centre = (kshape[0] - 1) // 2 if mode == "bidirectional" else 0
        return (f"the cuda backend takes FFT sizes up to {1 << hi}: mode={mode!r} with L = {shape[0]} and "
                f"Lk = {kshape[0]} needs {shape[0] + max(centre, kshape[0] - 1 - centre)} points")
    return None


def _cuda_kernel():
    import fastspec._C  # noqa: F401  (registers the CUDA kernel of fastspec::fft_conv_cuda)

    return torch.ops.fastspec.fft_conv_cuda


def _contiguous(t):
    return None if t is None else t.contiguous()


def cuda_forward(u, k, k_spectrum, pregate, postgate, D, mode, *, kernel=None):
    """The cuda backend's forward (contract in the module docstring): one kernel for FFT,
    spectrum product, inverse, gates and D (csrc/fftconv/fftconv.cu). ``kernel`` replaces
    fastspec::fft_conv_cuda (the tests pass the CPU-emulated one)."""
    kernel = kernel or _cuda_kernel()
    n = cuda_fft_size(mode, u.shape[2], k.shape[1])
    records = cuda_spectrum(k, mode, u.shape[2:]) if k_spectrum is None else k_spectrum
    d = None if D is None else D.float().contiguous()
    return kernel(u.contiguous(), _contiguous(pregate), _contiguous(postgate), d, records, n.bit_length() - 1)


def cuda_backward(grad_y, u, k, pregate, postgate, D, mode, needs, *, kernel=None):
    """The cuda backend's backward (contract in the module docstring). With gz = grad_y·postgate
    and dv = corr(gz, k) (y[t] = Σ_s k[s]·gz[t+s]), three gradients are the forward kernel with
    other arguments: du = pregate·dv + D·grad_y (u := grad_y, pregate := postgate,
    postgate := pregate, the conjugate spectrum), dpregate = u·dv (postgate := u, no D),
    dpostgate = grad_y·conv(u·pregate, k) (postgate := grad_y, no D). dk and dD come from the
    torch backend's backward (the kernel has no batch reduction)."""
    kernel = kernel or _cuda_kernel()
    need_du, need_dk, need_dpre, need_dpost, need_dd = needs
    log2n = cuda_fft_size(mode, u.shape[2], k.shape[1]).bit_length() - 1
    grad_y, u, pregate, postgate = map(_contiguous, (grad_y, u, pregate, postgate))
    du = dpre = dpost = None
    if need_du or need_dpre:
        correlation = cuda_spectrum(k, mode, u.shape[2:], correlate=True)
        if need_du:
            d = None if D is None else D.float().contiguous()
            du = kernel(grad_y, postgate, pregate, d, correlation, log2n)
        if need_dpre:
            dpre = kernel(grad_y, postgate, u, None, correlation, log2n)
    if need_dpost:
        dpost = kernel(u, pregate, grad_y, None, cuda_spectrum(k, mode, u.shape[2:]), log2n)
    dk = dd = None
    if need_dk or need_dd:
        only = [False, need_dk, False, False, need_dd]
        _, dk, _, _, dd = torch_backward(grad_y, u, k, pregate, postgate, D, mode, only)
    return du, dk, dpre, dpost, dd


_IMPLS["cuda"] = Implementation(forward=cuda_forward, backward=cuda_backward, spectrum=cuda_spectrum,
                                unsupported=cuda_unsupported)

# u, pregate, postgate (B, H, L) float16/bfloat16 contiguous; D float32 (H,); records from cuda_spectrum.
torch.library.define("fastspec::fft_conv_cuda",
                     "(Tensor u, Tensor? pregate, Tensor? postgate, Tensor? D, Tensor records, int log2n) -> Tensor")


@torch.library.register_fake("fastspec::fft_conv_cuda")
def _(u, pregate, postgate, D, records, log2n):
    return u.new_empty(u.shape)


# ---------------------------------------------------------------------------- validation


def _op_name(u: torch.Tensor) -> str:
    return "fft_conv2d" if u.dim() == 4 else "fft_conv"


def _check_tensor(op: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def _param_dtypes(dtype: torch.dtype) -> tuple[torch.dtype, ...]:
    """The dtypes k and D may have next to u's: u's, or float32 under half-precision u."""
    return (dtype,) if dtype in (torch.float32, torch.float64) else (torch.float32, dtype)


def _check_param_dtype(op: str, name: str, t: torch.Tensor, dtype: torch.dtype) -> None:
    allowed = _param_dtypes(dtype)
    if t.dtype not in allowed:
        names = " or ".join(str(d).removeprefix("torch.") for d in allowed)
        raise TypeError(f"{op}: {name} must be {names} for u of {dtype}, got {t.dtype}")


def _check_filter(op: str, k, channels: int, shape: Sequence[int], dtype: torch.dtype, mode: str) -> None:
    """k's type, dtype, channels and taps for inputs of spatial ``shape`` in ``mode``."""
    _check_tensor(op, "k", k)
    _check_param_dtype(op, "k", k, dtype)
    two_d = len(shape) == 2
    if k.dim() != len(shape) + 1 or k.shape[0] != channels:
        layout = "(C, kh, kw) with C" if two_d else "(H, Lk) with H"
        raise ValueError(f"{op}: k must be {layout} = {channels} as in u, got shape {tuple(k.shape)}")
    taps = tuple(k.shape[1:])
    if mode in ("causal", "circular"):
        if any(t < 1 or t > n for t, n in zip(taps, shape)):
            limit = f"kh <= H = {shape[0]} and kw <= W = {shape[1]}" if two_d else f"1 <= Lk <= L = {shape[0]}"
            raise ValueError(f"{op}: mode={mode!r} needs {limit}, got k of shape {tuple(k.shape)}")
    elif mode == "bidirectional":
        if taps[0] % 2 == 0 or taps[0] > 2 * shape[0] - 1:
            raise ValueError(f"{op}: mode='bidirectional' needs k of odd length Lk <= 2L-1 = {2 * shape[0] - 1} "
                             f"(index (Lk-1)/2 is lag 0), got Lk = {taps[0]}")
    elif any(t < 1 or t > 2 * n - 1 for t, n in zip(taps, shape)):  # same
        raise ValueError(f"{op}: mode='same' needs 1 <= kh <= 2H-1 = {2 * shape[0] - 1} and 1 <= kw <= 2W-1 = "
                         f"{2 * shape[1] - 1}, got k of shape {tuple(k.shape)}")


def _check_keep(op: str, keep, mode: str, zero_ok: bool = False) -> None:
    """keep_frequencies: None (every bin; the registered ops: 0) or an int ≥ 1, with mode
    'circular' only."""
    if keep is None or (zero_ok and keep == 0):
        return
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise (ValueError if isinstance(keep, int) and not isinstance(keep, bool) else TypeError)(
            f"{op}: keep_frequencies must be None or an int >= 1, got {keep!r}")
    if mode != "circular":
        raise ValueError(f"{op}: keep_frequencies needs mode='circular' (it truncates the filter's L-point DFT), "
                         f"got mode={mode!r}")


def _validate(op: str, u, k, pregate, postgate, D, mode, keep=0) -> None:
    """Every argument of ``op`` ('fft_conv': u (B, H, L); 'fft_conv2d': u (B, C, H, W), no
    gates or D), before any kernel sees it: TypeError for a wrong type or dtype, ValueError
    for a wrong shape, mode or device, each saying what is allowed."""
    modes = MODES_2D if op == "fft_conv2d" else MODES
    if mode not in modes:
        raise ValueError(f"{op}: mode must be one of {', '.join(map(repr, modes))}; got {mode!r}")
    _check_tensor(op, "u", u)
    if u.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: u must be float16, bfloat16, float32 or float64, got {u.dtype}")
    if u.dim() != (4 if op == "fft_conv2d" else 3):
        raise ValueError(f"{op}: u must be {'(B, C, H, W)' if op == 'fft_conv2d' else '(B, H, L)'}, "
                         f"got shape {tuple(u.shape)}")
    shape = tuple(u.shape[2:])
    if min(shape) < 1:
        raise ValueError(f"{op}: the convolved {'sizes H, W' if len(shape) == 2 else 'length L'} must be at "
                         f"least 1, got u of shape {tuple(u.shape)}")
    _check_filter(op, k, u.shape[1], shape, u.dtype, mode)
    if op == "fft_conv2d" and not (pregate is None and postgate is None and D is None):
        raise ValueError("fft_conv2d: takes no gates and no D")
    if op == "fft_conv2d" and keep:
        raise ValueError("fft_conv2d: takes no keep_frequencies")
    _check_keep(op, keep, mode, zero_ok=True)
    for name, gate in (("pregate", pregate), ("postgate", postgate)):
        if gate is None:
            continue
        _check_tensor(op, name, gate)
        if gate.dtype != u.dtype:
            raise TypeError(f"{op}: {name} must have u's dtype {u.dtype}, got {gate.dtype}")
        if gate.shape != u.shape:
            raise ValueError(f"{op}: {name} must have u's shape {tuple(u.shape)}, got {tuple(gate.shape)}")
    if D is not None:
        _check_tensor(op, "D", D)
        _check_param_dtype(op, "D", D, u.dtype)
        if D.shape != (u.shape[1],):
            raise ValueError(f"{op}: D must have shape (H,) = ({u.shape[1]},), got {tuple(D.shape)}")
    for name, t in (("k", k), ("pregate", pregate), ("postgate", postgate), ("D", D)):
        if t is not None and t.device != u.device:
            raise ValueError(f"{op}: every tensor must be on u's device ({u.device}); {name} is on {t.device}")


def _check_backend(op: str, backend: str, dtype: torch.dtype, mode: str, shape, kshape) -> None:
    """A concrete backend that has no implementation, or does not take this call, raises."""
    if backend not in _IMPLS:
        raise NotImplementedError(f"{op}: the {backend!r} backend has no implementation of this op yet "
                                  f"(implemented: {', '.join(_IMPLS)})")
    reason = _IMPLS[backend].unsupported(dtype, mode, tuple(shape), tuple(kshape))
    if reason:
        raise ValueError(f"{op}: {reason}")


def _check_keeps(backend: str, keep: int, mode: str, shape, kshape) -> None:
    """The registered ops take keep_frequencies only for a backend that truncates itself."""
    if keep and not _IMPLS[backend].keeps(mode, tuple(shape), tuple(kshape)):
        raise ValueError(f"fft_conv: the {backend!r} backend does not truncate the spectrum for this call; "
                         f"fastspec.fft_conv hands it the projected filter (project_filter) instead")


def project_filter(k: torch.Tensor, length: int, keep: int) -> torch.Tensor:
    """k (H, Lk) truncated to the bins min(f, L − f) < keep of its L-point DFT: the real (H, L)
    filter of keep_frequencies, float32 (float64 for float64 k), differentiable."""
    spectrum = torch.fft.rfft(k.to(_acc(k.dtype)), n=length)
    return torch.fft.irfft(spectrum * (torch.arange(spectrum.shape[-1], device=k.device) < keep), n=length)


def _auto_choice(device: torch.device, dtype: torch.dtype, mode: str, shape, kshape) -> str:
    if device.type != "cuda":
        return "torch"
    for name, dtypes in AUTO_CUDA:
        if (dtype in dtypes and name in _IMPLS and _backend.device_ok(name, device) is None
                and _IMPLS[name].unsupported(dtype, mode, shape, kshape) is None):
            return name
    return "torch"


@torch.compiler.assume_constant_result
def choose_backend(backend: str, device: torch.device, dtype: torch.dtype, mode: str,
                   shape: tuple[int, ...], kshape: tuple[int, ...]) -> str:
    """The concrete backend for a call (``auto`` resolved through AUTO_CUDA)."""
    op = "fft_conv2d" if len(shape) == 2 else "fft_conv"
    return _backend.resolve(op, backend, device, lambda: _auto_choice(device, dtype, mode, shape, kshape))


# ---------------------------------------------------------------------------- the ops


@torch.library.custom_op("fastspec::fft_conv", mutates_args=())
def fft_conv_op(u: torch.Tensor, k: torch.Tensor, pregate: torch.Tensor | None, postgate: torch.Tensor | None,
                D: torch.Tensor | None, k_spectrum: torch.Tensor | None, mode: str, backend: str,
                keep_frequencies: int = 0) -> torch.Tensor:
    """Registered op: fft_conv (u (B, H, L)) or fft_conv2d (u (B, C, H, W), no gates or D)
    on a concrete backend; ``k_spectrum`` None or that backend's ``spectrum`` of k;
    ``keep_frequencies`` 0 or fft_conv's (mode 'circular')."""
    _validate(_op_name(u), u, k, pregate, postgate, D, mode, keep_frequencies)
    _check_backend(_op_name(u), backend, u.dtype, mode, u.shape[2:], k.shape[1:])
    _check_keeps(backend, keep_frequencies, mode, u.shape[2:], k.shape[1:])
    return _forward(u, k, pregate, postgate, D, k_spectrum, mode, backend, keep_frequencies)


def _forward(u, k, pregate, postgate, D, k_spectrum, mode, backend, keep_frequencies):
    """The body of fastspec::fft_conv after validation."""
    if k_spectrum is None:
        k_spectrum = cached_spectrum(backend, k, mode, u.shape[2:], keep_frequencies)
    return _IMPLS[backend].forward(u, k, k_spectrum, pregate, postgate, D, mode, *_with_keep(keep_frequencies))


def _call(u, k, pregate, postgate, D, k_spectrum, mode, backend, keep_frequencies=0):
    """fastspec::fft_conv for arguments the public functions have validated; its body
    directly where ``_backend.eager_untracked`` allows, and eagerly on the torch backend with
    gradients to compute, ``_TorchKeepingSpectrum``."""
    tensors = (u, k, pregate, postgate, D)
    if _backend.eager_untracked(*tensors):
        return _forward(u, k, pregate, postgate, D, k_spectrum, mode, backend, keep_frequencies)
    if backend == "torch" and k_spectrum is None and _backend.eager_plain(*tensors):
        return _TorchKeepingSpectrum.apply(u, k, pregate, postgate, D, mode, keep_frequencies)[0]
    return fft_conv_op(u, k, pregate, postgate, D, k_spectrum, mode, backend, keep_frequencies)


class _TorchKeepingSpectrum(torch.autograd.Function):
    """The torch backend under eager autograd: the forward keeps the rfft of v and, with a
    postgate, z = conv(v, k) (what autograd keeps for the PyTorch FFT convolution), so the
    backward runs two FFTs a row instead of four. The registered op (traced calls, and the GPU
    kernels, which recompute to save memory) keeps only the inputs."""

    @staticmethod
    def forward(u, k, pregate, postgate, D, mode, keep):
        spectrum = cached_spectrum("torch", k, mode, u.shape[2:], keep)
        return torch_forward(u, k, spectrum, pregate, postgate, D, mode, keep, save=True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        u, k, pregate, postgate, D, ctx.mode, ctx.keep = inputs
        _, v_freq, z, spectrum = output
        ctx.save_for_backward(u, k, pregate, postgate, D, v_freq, z, spectrum)
        ctx.mark_non_differentiable(*(t for t in output[1:] if t is not None))

    @staticmethod
    def backward(ctx, grad_y, *_):
        *inputs, v_freq, z, spectrum = ctx.saved_tensors
        needs = list(ctx.needs_input_grad[:5])
        if torch.is_grad_enabled():  # create_graph: differentiable gradients through the torch path
            grads = _differentiable_grads(inputs, needs, grad_y, ctx.mode, ctx.keep)
        else:
            grads = torch_backward(grad_y, *inputs, ctx.mode, needs, ctx.keep, saved=(v_freq, z, spectrum))
        return (*grads, None, None)


@fft_conv_op.register_fake
def _(u, k, pregate, postgate, D, k_spectrum, mode, backend, keep_frequencies=0):
    _validate(_op_name(u), u, k, pregate, postgate, D, mode, keep_frequencies)
    return u.new_empty(u.shape)


@torch.library.custom_op(
    "fastspec::fft_conv_backward", mutates_args=(),
    schema="(Tensor grad_y, Tensor u, Tensor k, Tensor? pregate, Tensor? postgate, Tensor? D, str mode, "
           "bool[] needs, str backend, int keep_frequencies=0) -> (Tensor?, Tensor?, Tensor?, Tensor?, Tensor?)")
def fft_conv_backward_op(grad_y, u, k, pregate, postgate, D, mode, needs, backend, keep_frequencies=0):
    """Registered op: the gradients (du, dk, dpregate, dpostgate, dD) of fastspec::fft_conv
    for the five ``needs``, None where not needed."""
    _validate(_op_name(u), u, k, pregate, postgate, D, mode, keep_frequencies)
    _check_keeps(backend, keep_frequencies, mode, u.shape[2:], k.shape[1:])
    return _IMPLS[backend].backward(grad_y, u, k, pregate, postgate, D, mode, list(needs),
                                    *_with_keep(keep_frequencies))


@fft_conv_backward_op.register_fake
def _(grad_y, u, k, pregate, postgate, D, mode, needs, backend, keep_frequencies=0):
    inputs = (u, k, pregate, postgate, D)
    return tuple(t.new_empty(t.shape) if need else None for t, need in zip(inputs, needs, strict=True))


def _differentiable_grads(inputs, needs, grad_y, mode, keep):
    """The gradients of the five inputs (None where not needed) through ``_differentiable_forward``,
    themselves differentiable (double backward)."""
    wanted = [t for t, need in zip(inputs, needs) if need]
    with torch.enable_grad():
        found = iter(torch.autograd.grad(_differentiable_forward(*inputs, mode, keep), wanted, grad_y,
                                         create_graph=True))
    return [next(found) if need else None for need in needs]


def _setup_context(ctx, inputs, output):
    u, k, pregate, postgate, D, _, ctx.mode, ctx.backend, *keep = inputs
    ctx.keep = keep[0] if keep else 0
    ctx.save_for_backward(u, k, pregate, postgate, D)


def _backward(ctx, grad_y):
    inputs = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:5])
    if torch.is_grad_enabled():  # create_graph: differentiable gradients through the torch path
        grads = _differentiable_grads(inputs, needs, grad_y, ctx.mode, ctx.keep)
    elif _backend.eager_untracked(grad_y, *inputs):  # the backward op's body, without its dispatch
        grads = _IMPLS[ctx.backend].backward(grad_y, *inputs, ctx.mode, needs, *_with_keep(ctx.keep))
    else:
        grads = fft_conv_backward_op(grad_y, *inputs, ctx.mode, needs, ctx.backend, ctx.keep)
    return (*grads, None, None, None, None)


fft_conv_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------- public functions


@dataclasses.dataclass(frozen=True)
class FilterSpectrum:
    """A filter prepared once by one backend (``prepare_filter``) for fft_conv calls of one
    mode, length and dtype: pass it as ``spectrum=`` while the filter is unchanged."""

    backend: str
    mode: str
    length: int
    dtype: torch.dtype
    tensor: torch.Tensor
    keep_frequencies: int = 0


def prepare_filter(k: torch.Tensor, length: int, *, mode: str = "causal", dtype: torch.dtype = torch.float32,
                   keep_frequencies: int | None = None, backend: str = "auto") -> FilterSpectrum:
    """k (H, Lk) prepared by ``backend`` for ``fft_conv`` of u (B, H, ``length``) of ``dtype``
    in ``mode`` with ``keep_frequencies`` (for the torch backend: its FFT); computed without
    autograd."""
    if mode not in MODES:
        raise ValueError(f"prepare_filter: mode must be one of {', '.join(map(repr, MODES))}; got {mode!r}")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"prepare_filter: dtype must be float16, bfloat16, float32 or float64, got {dtype}")
    _check_tensor("prepare_filter", "k", k)
    _check_filter("prepare_filter", k, k.shape[0], (length,), dtype, mode)
    _check_keep("prepare_filter", keep_frequencies, mode)
    keep = keep_frequencies or 0
    chosen = choose_backend(backend, k.device, dtype, mode, (length,), tuple(k.shape[1:]))
    _check_backend("prepare_filter", chosen, dtype, mode, (length,), k.shape[1:])
    with torch.no_grad():
        if keep and not _IMPLS[chosen].keeps(mode, (length,), tuple(k.shape[1:])):
            return FilterSpectrum(chosen, mode, length, dtype,
                                  _IMPLS[chosen].spectrum(project_filter(k, length, keep), mode, (length,)), keep)
        return FilterSpectrum(chosen, mode, length, dtype,
                              _IMPLS[chosen].spectrum(k, mode, (length,), *_with_keep(keep)), keep)


def fft_conv(u: torch.Tensor, k: torch.Tensor, *, mode: str = "causal", pregate: torch.Tensor | None = None,
             postgate: torch.Tensor | None = None, D: torch.Tensor | None = None,
             spectrum: FilterSpectrum | None = None, keep_frequencies: int | None = None,
             backend: str = "auto") -> torch.Tensor:
    """Long convolution per channel: ``y = postgate · conv(u · pregate, k) + D · u``.

    u: (B, H, L), any L ≥ 1; float16, bfloat16 or float32 (float64 on the torch backend).
    k: (H, Lk), float32 or u's dtype. mode (v = u · pregate):
      'causal'        y[t] = Σ_{0≤s≤t} k[s]·v[t−s], 1 ≤ Lk ≤ L (k zero beyond Lk)
      'circular'      y[t] = Σ_{s<Lk} k[s]·v[(t−s) mod L], 1 ≤ Lk ≤ L
      'bidirectional' y[t] = Σ_s k[s+c]·v[t−s] over 0 ≤ t−s < L, Lk odd ≤ 2L−1, c = (Lk−1)/2
                      (Lk = 2L−1: lag 0 at index L−1, as M2-BERT and Hyena's k_rev)
    pregate, postgate: (B, H, L) in u's dtype, optional. D: (H,), float32 or u's dtype, optional.
    spectrum: ``prepare_filter(k, L, ...)`` of this same, unchanged k, or None (then k's
      spectrum is cached while k is unchanged, where autograd does not track k:
      ``cached_spectrum``).
    keep_frequencies: None, or n ≥ 1 with mode 'circular' (FlashFFTConv's frequency-sparse
      convolution): only the bins f with min(f, L − f) < n of the filter's L-point DFT are
      kept, i.e. k is replaced by the real L-tap filter IDFT_L(mask · DFT_L(k)); gradients
      flow through that projection. n > L/2 keeps every bin.
    Returns y (B, H, L) in u's dtype, contiguous; accumulation in float32 (float64 for float64).
    Every argument may be non-contiguous or expanded. Autograd for u, k, the gates and D
    (double backward too); ``torch.compile(fullgraph=True)`` works.
    backend: 'auto' | 'torch' | 'triton' | 'cuda' (env FASTSPEC_BACKEND replaces 'auto').
    Raises TypeError for a wrong type or dtype, ValueError for a wrong shape, mode or
    device (saying what is allowed), RuntimeError for a backend that cannot run here.
    """
    _check_keep("fft_conv", keep_frequencies, mode)
    keep = keep_frequencies or 0
    _validate("fft_conv", u, k, pregate, postgate, D, mode, keep)
    shape, kshape = (int(u.shape[2]),), (int(k.shape[1]),)
    if spectrum is None:
        chosen = choose_backend(backend, u.device, u.dtype, mode, shape, kshape)
    else:
        chosen = spectrum.backend if backend == "auto" else backend
        made_for = (spectrum.backend, spectrum.mode, spectrum.length, spectrum.dtype, spectrum.tensor.device,
                    spectrum.keep_frequencies)
        call = (chosen, mode, shape[0], u.dtype, u.device, keep)
        if made_for != call:
            raise ValueError(f"fft_conv: spectrum was prepared for (backend, mode, L, dtype, device, "
                             f"keep_frequencies) = {made_for}, this call is {call}")
    _check_backend("fft_conv", chosen, u.dtype, mode, shape, kshape)
    if keep and not _IMPLS[chosen].keeps(mode, shape, kshape):
        k, keep = project_filter(k, shape[0], keep), 0  # autograd differentiates the projection
        _check_backend("fft_conv", chosen, u.dtype, mode, shape, (shape[0],))
    return _call(u, k, pregate, postgate, D, None if spectrum is None else spectrum.tensor, mode, chosen, keep)


def fft_conv2d(u: torch.Tensor, k: torch.Tensor, *, mode: str = "circular", backend: str = "auto") -> torch.Tensor:
    """Depthwise 2D convolution by FFT: each channel of u with its own kernel.

    u: (B, C, H, W), float16, bfloat16 or float32 (float64 on torch); k: (C, kh, kw),
    float32 or u's dtype. mode:
      'circular' y[i,j] = Σ_{a,b} k[a,b]·u[(i−a) mod H, (j−b) mod W], kh ≤ H, kw ≤ W
      'same'     y[i,j] = Σ_{a,b} k[a,b]·u[i−a+ch, j−b+cw], zero outside u, ch = (kh−1)//2,
                 cw = (kw−1)//2, kh ≤ 2H−1, kw ≤ 2W−1: the zero-padded linear convolution
                 cropped to u's size; for odd kernels torch's conv2d(u, k.flip(-2, -1),
                 padding="same", groups=C); for even kernels the extra tap falls before the
                 centre, as in scipy.signal.convolve2d(mode="same") (torch pads the other side).
    Returns (B, C, H, W) in u's dtype; float32 accumulation; autograd for u and k.
    backend: as for fft_conv. Errors as for fft_conv.
    """
    _validate("fft_conv2d", u, k, None, None, None, mode)
    shape, kshape = tuple(map(int, u.shape[2:])), tuple(map(int, k.shape[1:]))
    chosen = choose_backend(backend, u.device, u.dtype, mode, shape, kshape)
    _check_backend("fft_conv2d", chosen, u.dtype, mode, shape, kshape)
    return _call(u, k, None, None, None, None, mode, chosen)
