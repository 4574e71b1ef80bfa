"""Reference FWHT in float64, by definition rather than by speed.

``fwht_reference`` runs the radix-2 butterfly over the power-of-two factor and a dense
product with the base block H_m (a different algorithm from every backend);
``fwht_dense`` is the literal ``x @ H_n``; the tests check the two against each other.
``fast_hadamard_transform_reference`` is fast-hadamard-transform 1.1.0's definition
(``fastspec.compat.fast_hadamard_transform``): zero-pad, transform, cut back.
"""
import functools
import math

import torch

from fastspec.hadamard import check_size, hadamard_block, hadamard_matrix


def fwht_reference(x: torch.Tensor, scale: float = 1.0, *, transpose: bool = False,
                   block: torch.Tensor | None = None) -> torch.Tensor:
    """(x @ H_n) * scale along the last dim in float64 (returns float64), H_n = B ⊗ H_p
    with B the canonical base block for n, or ``block`` (an (m, m) matrix, n = m·p) if
    given; ``transpose`` multiplies by H_nᵀ = Bᵀ ⊗ H_p instead. x: (..., n)."""
    n = x.shape[-1]
    if block is None:
        m, p = check_size(n)
        block = hadamard_block(m)
    m, p = block.shape[0], n // block.shape[0]
    y = x.to(torch.float64).reshape(-1, m, p)
    h = 1
    while h < p:  # butterfly on bit log2(h) of the power-of-two index: (a, b) -> (a+b, a-b)
        pairs = y.reshape(y.shape[0], m, p // (2 * h), 2, h)
        a, b = pairs[:, :, :, 0], pairs[:, :, :, 1]
        y = torch.stack((a + b, a - b), dim=3).reshape(y.shape)
        h *= 2
    mat = block.to(dtype=torch.float64, device=y.device)
    y = torch.einsum("rap,ac->rcp", y, mat.T if transpose else mat)  # B on the leading index
    return (y * scale).reshape(x.shape)


def fast_hadamard_transform_reference(x: torch.Tensor, scale: float = 1.0,
                                      base: torch.Tensor | None = None) -> torch.Tensor:
    """fast-hadamard-transform 1.1.0 by its definition, in float64 (returns float64).

    x: (..., dim). Each row is zero-padded to n, multiplied from the left by
    K = base ⊗ H_(n/m) (base of order m, its index the most significant; K = H_n if base
    is None), scaled and cut back to dim: ``(pad(x) @ Kᵀ)[..., :dim] * scale``.
    n: dim rounded up to a multiple of 8 (no base) or 4m, then up to the next m·2^k.
    """
    m = 1 if base is None else base.shape[0]
    dim = x.shape[-1]
    multiple = 8 if base is None else 4 * m
    n = math.ceil(dim / multiple) * multiple
    p = 1
    while m * p < n:
        p *= 2
    zeros = torch.zeros(*x.shape[:-1], m * p - dim, dtype=torch.float64, device=x.device)
    padded = torch.cat([x.to(torch.float64), zeros], dim=-1)
    return fwht_reference(padded, scale, transpose=True, block=base)[..., :dim]


@functools.lru_cache(maxsize=8)
def _scaled_matrix(n: int, scale: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return (hadamard_matrix(n, device=device) * scale).to(dtype)


def fwht_dense(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """The same product as one dense matrix multiply in x's own dtype, ``x @ (H_n·scale)``
    (n ≤ 16384; the matrix is cached, so this is also the benchmarks' matmul baseline)."""
    return x @ _scaled_matrix(x.shape[-1], float(scale), x.dtype, x.device)
