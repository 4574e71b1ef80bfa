"""Reference Gaunt tensor product in float64, by definition: the dense contraction with the
Gaunt table, ``out_k = Σ_ij G[i, j, k] x1_i x2_j`` (fastspec.spherical.gaunt_coefficients),
and the product of the two functions evaluated on the sphere."""
import torch

from fastspec.spherical import degree_of, gaunt_coefficients, spherical_harmonics


def gaunt_reference(x1: torch.Tensor, x2: torch.Tensor, lmax_out: int | None = None) -> torch.Tensor:
    """x1 (..., (L1+1)²), x2 (..., (L2+1)²), leading dims broadcast -> (..., (lmax_out+1)²)
    float64 (default lmax_out = L1 + L2)."""
    l1, l2 = degree_of(x1.shape[-1]), degree_of(x2.shape[-1])
    lmax_out = l1 + l2 if lmax_out is None else lmax_out
    table = gaunt_coefficients(l1, l2, lmax_out).to(x1.device)
    return torch.einsum("...i,...j,ijk->...k", x1.double(), x2.double(), table)


def evaluate(x: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """f(p) = Σ_i x_i Y_i(p) in float64: x (..., (L+1)²), points (P, 3) -> (..., P)."""
    y = spherical_harmonics(degree_of(x.shape[-1]), points.double().to(x.device))
    return x.double() @ y.T
