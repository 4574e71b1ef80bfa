"""Hadamard rotation layer."""
from __future__ import annotations

import math

import torch

from fastspec.hadamard import check_size
from fastspec.ops.fwht import fwht


class HadamardTransform(torch.nn.Module):
    """y = fwht(x * signs, scale) along the last dim (size n, any of
    ``fastspec.supported_sizes()``: model widths such as 11008 = 172·64 included).

    scale defaults to 1/sqrt(n), which makes the transform orthonormal. With
    ``random_signs=True`` a fixed random ±1 vector D (a buffer, drawn from ``seed``)
    multiplies x first: y = x D H scale, the randomized Hadamard rotation used to
    spread outliers before quantization (QuaRot, SpinQuant). ``inverse(y)`` undoes it
    for any scale: x = (y Hᵀ / (n scale)) D (H Hᵀ = n I; H itself is not symmetric for
    every n).
    """

    def __init__(self, n: int, scale: float | None = None, random_signs: bool = False,
                 seed: int | None = None, backend: str = "auto"):
        super().__init__()
        check_size(n)
        self.n = n
        self.scale = 1.0 / math.sqrt(n) if scale is None else float(scale)
        self.backend = backend
        if random_signs:
            gen = torch.Generator().manual_seed(seed) if seed is not None else None
            signs = torch.randint(0, 2, (n,), generator=gen).mul_(2).sub_(1).to(torch.float32)
            self.register_buffer("signs", signs)
        else:
            self.signs = None

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1:] != (self.n,):
            raise ValueError(f"HadamardTransform(n={self.n}): last dim of x must be {self.n}, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., n) float tensor -> (..., n) of the same dtype."""
        self._check(x)
        if self.signs is not None:
            x = x * self.signs.to(x.dtype)
        return fwht(x, self.scale, backend=self.backend)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The inverse map: forward(inverse(y)) == y up to rounding."""
        self._check(y)
        x = fwht(y, 1.0 / (self.n * self.scale), transpose=True, backend=self.backend)
        if self.signs is not None:
            x = x * self.signs.to(x.dtype)
        return x

    def extra_repr(self) -> str:
        return f"n={self.n}, scale={self.scale:g}, random_signs={self.signs is not None}"
