"""Drop-in for FlashFFTConv (HazyResearch/flash-fft-conv) on fastspec's kernels.

Switch by import::

    from flashfftconv import FlashFFTConv                       # before
    from fastspec.compat.flashfftconv import FlashFFTConv

``FlashFFTConv(seqlen, dtype=torch.float16, use_32_butterfly=True)`` is an ``nn.Module``
whose ``forward(u, k, pregate=None, postgate=None)`` is a convolution by FFT of size
``seqlen``: u (B, H, L) and k (H, Lk), L and Lk ≤ seqlen, are zero-padded to seqlen, and

    y = postgate · irfft(rfft(u · pregate) · rfft(k))[..., :L]

that is y[t] = postgate[t] · Σ_{0≤s<Lk} k[s]·v[(t−s) mod seqlen] with v = u · pregate zero
beyond L, for t < L (``fastspec.reference.fftconv.flashfftconv_reference``). With
seqlen ≥ L + Lk − 1 nothing wraps around and this is the causal convolution (the usual
``FlashFFTConv(2 * L)``); with a smaller seqlen the taps that reach past the start wrap
around to the padded end. Output (B, H, L) in u's dtype, as the peer's.

Computed as :func:`fastspec.fft_conv`: mode ``causal`` when seqlen ≥ L + Lk − 1 (taps past
L − 1 cannot reach the first L outputs and are left out; the FFT size is fastspec's own,
at most seqlen), else ``circular`` over u and the gates zero-padded to seqlen (no padding
when L = seqlen). Autograd for u, k and both gates through fastspec's op.

Where this module does more than the peer (each of these raises or is unsupported there):
any seqlen ≥ 1 (the peer: powers of two from 256 to 4M, its FFT decomposition fixed per
size), any L ≤ seqlen (the peer: L even, a multiple of 4 for seqlen 512 and 2048), any H
(the peer: H a multiple of 16 above seqlen 32K), non-contiguous inputs, every device and
fastspec backend (``backend=``, keyword-only), u in float32 and float64 as well as
float16/bfloat16, k of any float dtype, one gate without the other (the peer asserts both
or neither), gradients in eval mode too (the peer saves nothing for backward unless the
module is in training mode), ``torch.compile``.

Where it differs:

- Precision: the peer computes in ``dtype`` (float16/bfloat16 DFT matrices and twiddle
  factors, k's spectrum rounded to ``dtype``); here the FFTs accumulate in float32
  (float64 for float64 u) and the result is rounded once to u's dtype. ``dtype`` is kept
  as an attribute and checked, but does not change the numerics; as in the peer, u is not
  cast to it.
- ``use_32_butterfly`` picks the peer's decomposition of seqlen ≥ 128K; it is kept as an
  attribute and has no effect here (with False the peer has no gated path at those sizes).
- The peer's DFT-matrix and twiddle buffers are not created; a state dict saved with
  them (a model holding the peer's module) still loads: keys directly under this module
  are ignored.
- Lk > seqlen raises ValueError here; the peer's forward truncates k to seqlen
  (``torch.fft.fft(k, n=seqlen)``) and its backward then fails on the gradient's shape.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastspec.ops.fftconv import FLOAT_DTYPES, fft_conv

__all__ = ["FlashFFTConv"]


def _filter_dtype(k: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """k as fft_conv takes it next to u: its own dtype when allowed (float32 or u's), else
    float32 (float64 for float64 u); a half-precision k converts exactly."""
    wide = u.dtype if u.dtype in (torch.float32, torch.float64) else torch.float32
    return k if k.dtype in (wide, u.dtype) else k.to(wide)


class FlashFFTConv(torch.nn.Module):
    """``FlashFFTConv(seqlen)(u, k, pregate=None, postgate=None)``: the convolution of u
    (B, H, L) with k (H, Lk) by an FFT of size seqlen (L, Lk ≤ seqlen), gated, first L
    entries: y = postgate · irfft(rfft(u·pregate) · rfft(k))[..., :L]. See the module
    docstring for the rules and for what differs from the peer.

    seqlen: any int ≥ 1. dtype: a float dtype (the peer's precision; not applied here).
    u: any float dtype; gates (B, H, L) in u's dtype, each optional; k any float dtype.
    Returns (B, H, L) in u's dtype. backend: as for :func:`fastspec.fft_conv`.
    """

    def __init__(self, seqlen: int, dtype: torch.dtype = torch.float16, use_32_butterfly: bool = True, *,
                 backend: str = "auto"):
        super().__init__()
        if isinstance(seqlen, bool) or not isinstance(seqlen, int):
            raise TypeError(f"FlashFFTConv: seqlen must be an int, got {type(seqlen).__name__}")
        if seqlen < 1:
            raise ValueError(f"FlashFFTConv: seqlen (the FFT size) must be at least 1, got {seqlen}")
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"FlashFFTConv: dtype must be float16, bfloat16, float32 or float64, got {dtype}")
        self.seqlen, self.dtype, self.use_32_butterfly, self.backend = seqlen, dtype, use_32_butterfly, backend

    def forward(self, u: torch.Tensor, k: torch.Tensor, pregate: torch.Tensor | None = None,
                postgate: torch.Tensor | None = None) -> torch.Tensor:
        """u (B, H, L), k (H, Lk), gates (B, H, L) or None; L, Lk ≤ seqlen -> (B, H, L) in u's dtype."""
        name, n = f"FlashFFTConv(seqlen={self.seqlen})", self.seqlen
        for arg, t in (("u", u), ("k", k), ("pregate", pregate), ("postgate", postgate)):
            if t is not None and not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
            if t is not None and t.dtype not in FLOAT_DTYPES:
                raise TypeError(f"{name}: {arg} must be float16, bfloat16, float32 or float64, got {t.dtype}")
        if u.dim() != 3 or not 1 <= u.shape[-1] <= n:
            raise ValueError(f"{name}: u must be (B, H, L) with 1 <= L <= {n}, got shape {tuple(u.shape)}")
        if k.dim() != 2 or k.shape[0] != u.shape[1] or not 1 <= k.shape[-1] <= n:
            raise ValueError(f"{name}: k must be (H, Lk) with H = {u.shape[1]} as in u and 1 <= Lk <= {n}, "
                             f"got shape {tuple(k.shape)}")
        for arg, gate in (("pregate", pregate), ("postgate", postgate)):
            if gate is not None and gate.shape != u.shape:
                raise ValueError(f"{name}: {arg} must have u's shape {tuple(u.shape)}, got {tuple(gate.shape)}")
            if gate is not None and gate.dtype != u.dtype:
                raise TypeError(f"{name}: {arg} must have u's dtype {u.dtype}, got {gate.dtype}")
        L, taps = u.shape[-1], k.shape[-1]
        k = _filter_dtype(k, u)
        if n >= L + taps - 1:  # no wrap-around: the causal convolution of the first L taps
            return fft_conv(u, k[:, :L], mode="causal", pregate=pregate, postgate=postgate, backend=self.backend)
        if L < n:  # the taps wrap around onto the zero padding and back: circular over seqlen
            u, pregate, postgate = (None if t is None else F.pad(t, (0, n - L)) for t in (u, pregate, postgate))
        y = fft_conv(u, k, mode="circular", pregate=pregate, postgate=postgate, backend=self.backend)
        return y[..., :L] if L < n else y

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Ignore the peer's DFT-matrix and twiddle buffers: this module has no state, so no
        key under its prefix is loaded, missing or unexpected."""

    def extra_repr(self) -> str:
        return f"seqlen={self.seqlen}, dtype={self.dtype}, use_32_butterfly={self.use_32_butterfly}"
