"""Reference long convolutions in float64, by the sums that define them (no FFT).

``fft_conv_reference`` is ``y = postgate · conv(u · pregate, k) + D · u`` per channel for
the three modes of :func:`fastspec.fft_conv`; ``fft_conv2d_reference`` is the depthwise 2D
convolution of :func:`fastspec.fft_conv2d`. Both add up the filter's taps one at a time
(O(L·Lk) work, O(L) memory) and are differentiable, so the tests take their gradients by
autograd. ``flashfftconv_reference`` is FlashFFTConv's definition
(:mod:`fastspec.compat.flashfftconv`). ``fft_conv_pytorch`` is the benchmarks' baseline.
"""
import torch
import torch.nn.functional as F


def _add_shifted(y: torch.Tensor, tap: torch.Tensor, v: torch.Tensor, lags: tuple[int, ...], circular: bool) -> None:
    """y[..., t] += tap · v[..., t − lag] over the last len(lags) dims, in place: cyclically,
    or only where t − lag is inside v (zero outside)."""
    dims = tuple(range(-len(lags), 0))
    if circular:
        y += tap * torch.roll(v, lags, dims)
        return
    dst, src = [], []
    for lag, n in zip(lags, v.shape[-len(lags):]):
        if abs(lag) >= n:
            return
        dst.append(slice(max(lag, 0), n + min(lag, 0)))
        src.append(slice(max(-lag, 0), n - max(lag, 0)))
    y[(..., *dst)] += tap * v[(..., *src)]


def truncated_filter(k: torch.Tensor, length: int, keep: int) -> torch.Tensor:
    """k (H, Lk ≤ length) as the float64 filter of ``length`` taps whose ``length``-point DFT
    is k's at the bins f with min(f, length − f) < keep and zero at the others: the DFT by its
    sum at the kept bins, then the inverse DFT's sum over them (no FFT). Differentiable."""
    f = torch.arange(length)
    kept = f[torch.minimum(f, length - f) < keep]
    j = torch.arange(k.shape[-1])
    forward = torch.polar(torch.ones((), dtype=torch.float64), -2 * torch.pi * (torch.outer(j, kept) % length).double() / length)
    t = torch.arange(length)
    inverse = torch.polar(torch.ones((), dtype=torch.float64), 2 * torch.pi * (torch.outer(kept, t) % length).double() / length)
    return (k.to(torch.complex128) @ forward @ inverse).real / length


def fft_conv_reference(u: torch.Tensor, k: torch.Tensor, *, mode: str = "causal",
                       pregate: torch.Tensor | None = None, postgate: torch.Tensor | None = None,
                       D: torch.Tensor | None = None, keep_frequencies: int | None = None) -> torch.Tensor:
    """float64 ``y = postgate · conv(u · pregate, k) + D · u``; u, gates (B, H, L), k (H, Lk), D (H,).

    causal:        y[t] = Σ_{0≤s≤t} k[s]·v[t−s]              (k zero beyond Lk ≤ L)
    circular:      y[t] = Σ_{0≤s<Lk} k[s]·v[(t−s) mod L]     (Lk ≤ L)
    bidirectional: y[t] = Σ_s k[s+c]·v[t−s] over 0 ≤ t−s < L, c = (Lk−1)/2 (Lk odd ≤ 2L−1;
                   Lk = 2L−1 puts lag 0 at index L−1)
    with v = u · pregate; ``keep_frequencies`` n (circular): k replaced by
    ``truncated_filter(k, L, n)``. Returns float64.
    """
    u64 = u.to(torch.float64)
    v = u64 * pregate.to(torch.float64) if pregate is not None else u64
    k64 = k.to(torch.float64) if not keep_frequencies else truncated_filter(k, u.shape[-1], keep_frequencies)
    centre = (k.shape[-1] - 1) // 2 if mode == "bidirectional" else 0
    y = torch.zeros_like(v)
    for j in range(k64.shape[-1]):
        _add_shifted(y, k64[:, j, None], v, (j - centre,), mode == "circular")
    if postgate is not None:
        y = y * postgate.to(torch.float64)
    if D is not None:
        y = y + D.to(torch.float64)[:, None] * u64
    return y


def flashfftconv_reference(u: torch.Tensor, k: torch.Tensor, seqlen: int, *, pregate: torch.Tensor | None = None,
                           postgate: torch.Tensor | None = None) -> torch.Tensor:
    """float64 ``FlashFFTConv(seqlen)(u, k, pregate, postgate)`` by its definition: u·pregate
    (B, H, L) and k (H, Lk) zero-padded to seqlen (L, Lk ≤ seqlen), their circular convolution
    of size seqlen, y[t] = Σ_{0≤s<Lk} k[s]·v[(t−s) mod seqlen], the first L entries, times
    postgate. Returns float64 (B, H, L).
    """
    L = u.shape[-1]
    v = u.to(torch.float64) * (pregate.to(torch.float64) if pregate is not None else 1.0)
    y = fft_conv_reference(F.pad(v, (0, seqlen - L)), k, mode="circular")[..., :L]
    return y * postgate.to(torch.float64) if postgate is not None else y


def fft_conv2d_reference(u: torch.Tensor, k: torch.Tensor, *, mode: str = "circular") -> torch.Tensor:
    """float64 depthwise 2D convolution; u (B, C, H, W), k (C, kh, kw).

    circular: y[i,j] = Σ_{a,b} k[a,b]·u[(i−a) mod H, (j−b) mod W]
    same:     y[i,j] = Σ_{a,b} k[a,b]·u[i−a+ch, j−b+cw], zero outside u, ch = (kh−1)//2,
              cw = (kw−1)//2 (the centred part of the full linear convolution).
    Returns float64.
    """
    u64, k64 = u.to(torch.float64), k.to(torch.float64)
    kh, kw = k.shape[-2:]
    ch, cw = ((kh - 1) // 2, (kw - 1) // 2) if mode == "same" else (0, 0)
    y = torch.zeros_like(u64)
    for a in range(kh):
        for b in range(kw):
            _add_shifted(y, k64[:, a, b, None, None], u64, (a - ch, b - cw), mode == "circular")
    return y


def fft_conv_pytorch(u: torch.Tensor, k: torch.Tensor, *, pregate: torch.Tensor | None = None,
                     postgate: torch.Tensor | None = None, D: torch.Tensor | None = None) -> torch.Tensor:
    """The causal FFT convolution as it is usually written in PyTorch (FlashFFTConv's and
    Hyena's reference code): rfft of u and k at 2L, product, irfft, gates and D as
    separate ops; float32 FFTs (float64 for float64 u), result in u's dtype. The benchmarks'
    baseline, and in float64 their check."""
    n = 2 * u.shape[-1]
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    v = u * pregate if pregate is not None else u
    y = torch.fft.irfft(torch.fft.rfft(v.to(acc), n=n) * torch.fft.rfft(k.to(acc), n=n), n=n)[..., : u.shape[-1]]
    if postgate is not None:
        y = y * postgate
    if D is not None:
        y = y + u * D[:, None]
    return y.to(u.dtype)
