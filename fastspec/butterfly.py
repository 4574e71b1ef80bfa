"""Exact fast transforms as butterfly products (Dao et al. 2019, section 3 and appendix).

Each constructor returns a :class:`ButterflyTransform`: twiddles in torch_butterfly's
layout (one stack), the stride direction, and where one is needed a fixed permutation
applied to the input first (bit reversal for the FFT). ``t(x)`` applies the transform along
x's last dim; ``t.matrix()`` is its dense (n, n) matrix, equal to the textbook matrix to
rounding (tests/test_butterfly.py checks every one against it). n is a power of two.

- ``fft(n)``: F[k, j] = exp(−2πi·jk/n) (decimation in time: bit reversal, then the
  radix-2 stages of size 2, 4, ..., n); ``ifft(n)`` = conj(F)/n; ``normalized`` divides
  every factor by √2 (the unitary DFT).
- ``hadamard(n)``: the Sylvester Hadamard matrix H_n (= ``fastspec.hadamard_matrix(n)``).
- ``dct(n)``: DCT-II as scipy.fft.dct defines it, y_k = 2 Σ_j x_j cos(πk(2j+1)/2n)
  (``normalized``: scipy's norm="ortho"), by Makhoul's reduction to an n-point FFT:
  v = (x_0, x_2, ..., x_(n−2), x_(n−1), ..., x_3, x_1), y_k = Re(2 e^(−iπk/2n) (Fv)_k); the
  diagonal is folded into the last factor.
- ``circulant(c)``: C[i, j] = c[(i − j) mod n] = F⁻¹ diag(Fc) F as two blocks: F by
  decimation in frequency (bit-reversed output), the diagonal in bit-reversed order folded
  into its last factor, then F⁻¹ by decimation in time (bit-reversed input): the two bit
  reversals cancel, so no permutation is left.
- ``identity(n)``: every twiddle the 2×2 identity.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from fastspec.ops.butterfly import butterfly_multiply, transposed_twiddle


@dataclasses.dataclass(frozen=True)
class ButterflyTransform:
    """A transform y = M x with M = (butterfly product) · P.

    twiddle: (1, nblocks, log2 n, n/2, 2, 2), float64 or complex128 (cast it to the data's
    dtype to apply it); increasing_stride: the first block's stride direction; permutation:
    (n,) int64 or None, the input is read as x[..., permutation] first; real_output: the
    result is the real part of the (complex) product."""

    twiddle: torch.Tensor
    increasing_stride: bool
    permutation: torch.Tensor | None = None
    real_output: bool = False

    @property
    def n(self) -> int:
        return 2 * self.twiddle.shape[3]

    def __call__(self, x: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
        """The transform along the last dim of x (..., n). Real x meets complex twiddles as
        complex; the result is complex unless the transform is real."""
        if self.permutation is not None:
            x = x[..., self.permutation.to(x.device)]
        dtype = x.dtype
        if self.twiddle.is_complex() and not x.is_complex():
            dtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
        rows = x.reshape(-1, 1, self.n).to(dtype)
        y = butterfly_multiply(self.twiddle.to(device=x.device, dtype=dtype), rows,
                               increasing_stride=self.increasing_stride, backend=backend)
        y = y.reshape(*x.shape[:-1], self.n)
        return y.real.contiguous() if self.real_output else y

    def matrix(self) -> torch.Tensor:
        """The dense (n, n) matrix M, float64 or complex128."""
        eye = torch.eye(self.n, dtype=torch.float64)
        return self(eye, backend="torch").T


def _log2(n: int, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2 or n & (n - 1):
        raise ValueError(f"fastspec.butterfly.{name}: n must be a power of two >= 2, got {n!r}")
    return n.bit_length() - 1


def random_orthogonal_twiddle(nstacks: int, nblocks: int, n: int, dtype: torch.dtype = torch.float32,
                              device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random (nstacks, nblocks, log2 n, n/2, 2, 2) twiddles, each 2×2 block a rotation or a
    reflection (uniform angle), for complex dtypes times a random diagonal of unit phases (a
    random unitary): every product of them is orthogonal (unitary), so it stays well scaled."""
    shape = (nstacks, nblocks, _log2(n, "random_orthogonal_twiddle"), n // 2)
    theta = torch.rand(shape, dtype=torch.float64, generator=generator) * 2 * math.pi
    c, s = torch.cos(theta), torch.sin(theta)
    det = torch.randint(0, 2, shape, generator=generator).double() * 2 - 1  # rotation (+1) or reflection (-1)
    tw = torch.stack((torch.stack((det * c, -det * s), -1), torch.stack((s, c), -1)), -2)
    if dtype.is_complex:
        tw = tw * torch.exp(2j * math.pi * torch.rand(*shape, 2, 1, dtype=torch.float64, generator=generator))
    return tw.to(device=device, dtype=dtype)


def bit_reversal(n: int) -> torch.Tensor:
    """The bit-reversal permutation of range(n), n a power of two: perm[i] = i with its log2 n bits reversed."""
    log_n = _log2(n, "bit_reversal")
    i = torch.arange(n)
    out = torch.zeros_like(i)
    for bit in range(log_n):
        out |= ((i >> bit) & 1) << (log_n - 1 - bit)
    return out


def _dit_twiddle(n: int, sign: float) -> torch.Tensor:
    """Decimation-in-time radix-2 stages (increasing stride), (1, 1, log2 n, n/2, 2, 2):
    stage idx (size m = 2^(idx+1)) maps (u, v) at pair p, k = p mod m/2, to
    (u + w^k v, u − w^k v), w = exp(sign·2πi/m)."""
    log_n = _log2(n, "fft")
    stages = []
    for idx in range(log_n):
        half = 1 << idx
        w = torch.exp(sign * 2j * math.pi * (torch.arange(n // 2) % half).double() / (2 * half))
        one = torch.ones_like(w)
        stages.append(torch.stack((torch.stack((one, w), -1), torch.stack((one, -w), -1)), -2))
    return torch.stack(stages)[None, None]


def _scale_outputs(factor: torch.Tensor, d: torch.Tensor, stride: int) -> torch.Tensor:
    """factor (n/2, 2, 2) followed by diag(d): row 0 of pair p scaled by d[a], row 1 by d[b]."""
    p = torch.arange(factor.shape[0])
    a = (p // stride) * 2 * stride + p % stride
    return factor * torch.stack((d[a], d[a + stride]), -1)[..., None]


def fft(n: int, normalized: bool = False) -> ButterflyTransform:
    """The DFT F[k, j] = exp(−2πi·jk/n) (``normalized``: F/√n) as bit reversal then a butterfly."""
    twiddle = _dit_twiddle(n, -1.0) / (math.sqrt(2) if normalized else 1.0)
    return ButterflyTransform(twiddle, True, bit_reversal(n))


def ifft(n: int, normalized: bool = False) -> ButterflyTransform:
    """The inverse DFT conj(F)/n (``normalized``: conj(F)/√n) as bit reversal then a butterfly."""
    twiddle = _dit_twiddle(n, 1.0) / (math.sqrt(2) if normalized else 2.0)
    return ButterflyTransform(twiddle, True, bit_reversal(n))


def hadamard(n: int, normalized: bool = False) -> ButterflyTransform:
    """The Sylvester Hadamard matrix H_n (``normalized``: H_n/√n), real."""
    log_n = _log2(n, "hadamard")
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64) / (math.sqrt(2) if normalized else 1.0)
    return ButterflyTransform(h2.expand(1, 1, log_n, n // 2, 2, 2).contiguous(), True)


def identity(n: int) -> ButterflyTransform:
    """The identity, real."""
    log_n = _log2(n, "identity")
    return ButterflyTransform(torch.eye(2, dtype=torch.float64).expand(1, 1, log_n, n // 2, 2, 2).contiguous(), True)


def dct(n: int, normalized: bool = False) -> ButterflyTransform:
    """DCT-II, y_k = 2 Σ_j x_j cos(πk(2j+1)/2n) (scipy's; ``normalized``: norm='ortho'), for real x."""
    log_n = _log2(n, "dct")
    j = torch.arange(n)
    makhoul = torch.cat((j[::2], j[1::2].flip(0)))  # v = x[makhoul]
    d = 2 * torch.exp(-1j * math.pi * j.double() / (2 * n))
    if normalized:
        d = d * torch.full((n,), math.sqrt(1 / (2 * n)), dtype=torch.float64).index_fill(0, j[:1], math.sqrt(1 / (4 * n)))
    twiddle = _dit_twiddle(n, -1.0)
    twiddle[0, 0, -1] = _scale_outputs(twiddle[0, 0, -1], d, n // 2)
    return ButterflyTransform(twiddle, True, makhoul[bit_reversal(n)], real_output=True)


def circulant(c: torch.Tensor) -> ButterflyTransform:
    """The circulant matrix C[i, j] = c[(i − j) mod n] with first column c (n,), real or
    complex, n a power of two: two blocks, no permutation (real c: a real transform)."""
    if not isinstance(c, torch.Tensor) or c.dim() != 1:
        raise ValueError(f"fastspec.butterfly.circulant: c must be a 1-D tensor (the first column), got "
                         f"{type(c).__name__ if not isinstance(c, torch.Tensor) else tuple(c.shape)}")
    n = int(c.shape[0])
    _log2(n, "circulant")
    eigenvalues = torch.fft.fft(c.detach().cpu().to(torch.complex128))
    forward, increasing = transposed_twiddle(_dit_twiddle(n, -1.0), True)  # F = P_br · (DIF butterfly)
    forward = forward.clone()
    forward[0, 0, -1] = _scale_outputs(forward[0, 0, -1], eigenvalues[bit_reversal(n)], 1)
    inverse = _dit_twiddle(n, 1.0) / 2  # F⁻¹ = (DIT butterfly) · P_br
    return ButterflyTransform(torch.cat((forward, inverse), dim=1), increasing, real_output=not c.is_complex())
