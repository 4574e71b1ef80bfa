"""Reference FWHT: the dense matrix product, in float64."""
import torch

from fastspec.hadamard import hadamard_matrix


def fwht_reference(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """(x @ H_n) * scale along the last dim, computed in float64 (returns float64).

    x: (..., n) real tensor, n a supported size up to 16384 (the dense matrix is built).
    """
    h = hadamard_matrix(x.shape[-1], dtype=torch.float64, device=x.device)
    return (x.to(torch.float64) @ h) * scale


def fwht_reference_in_dtype(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """The same product computed in x's own dtype (what 'the reference in that dtype' means
    in the per-dtype tolerance rule of DESIGN.md)."""
    h = hadamard_matrix(x.shape[-1], dtype=x.dtype, device=x.device)
    return (x @ h) * scale
