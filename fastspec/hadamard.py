"""Hadamard matrices and the transform sizes fastspec supports.

The FWHT of length n multiplies by ``H_n = H_m ⊗ H_(2^k)`` with ``n = m·2^k``:
``H_(2^k)`` is Sylvester's matrix in natural order (``scipy.linalg.hadamard``) and
``m`` is 1 or one of the base orders 12, 20, 28 (and 40, see below). Every matrix here
is symmetric as well as Hadamard (``H Hᵀ = n I``), so ``H_n² = n I``: the transform is
its own inverse up to ``1/n`` and its gradient is the transform of the gradient.

The base blocks come from Paley's second construction (Paley 1933), which gives
symmetric matrices of order ``2(q+1)`` for a prime power ``q ≡ 1 (mod 4)``:
12 from q = 5, 20 from q = 9 (the field GF(9)), 28 from q = 13. The order 40 block is
``H_20 ⊗ H_2``; so for ``n = 40·2^k`` the matrix is the same as ``H_20 ⊗ H_(2^(k+1))``
and the two readings of such an n agree.
"""
from __future__ import annotations

import functools
import itertools

import torch

BASE_ORDERS = (12, 20, 28, 40)
MAX_N = 2**20
"""Largest supported transform length (every supported n is at most this)."""


def _gf9_quadratic_character():
    """Elements of GF(9) = F_3[i]/(i² + 1) as pairs (a, b) = a + b·i, and χ on them."""
    elements = [(a, b) for a in range(3) for b in range(3)]

    def mul(u, v):
        return ((u[0] * v[0] - u[1] * v[1]) % 3, (u[0] * v[1] + u[1] * v[0]) % 3)

    squares = {mul(u, u) for u in elements if u != (0, 0)}

    def sub(u, v):
        return ((u[0] - v[0]) % 3, (u[1] - v[1]) % 3)

    def chi(u):
        return 0 if u == (0, 0) else (1 if u in squares else -1)

    return elements, sub, chi


def _jacobsthal(q: int) -> list[list[int]]:
    """Jacobsthal matrix Q[i][j] = χ(x_j - x_i) over GF(q) for q in {5, 9, 13}."""
    if q == 9:
        elements, sub, chi = _gf9_quadratic_character()
    else:  # prime field
        elements = list(range(q))
        squares = {(a * a) % q for a in range(1, q)}

        def sub(u, v):
            return (u - v) % q

        def chi(u):
            return 0 if u == 0 else (1 if u in squares else -1)

    return [[chi(sub(xj, xi)) for xj in elements] for xi in elements]


def _paley2(q: int) -> torch.Tensor:
    """Symmetric Hadamard matrix of order 2(q+1), q ≡ 1 (mod 4) (Paley's construction II)."""
    qmat = torch.tensor(_jacobsthal(q), dtype=torch.float64)
    conference = torch.zeros(q + 1, q + 1, dtype=torch.float64)  # symmetric, C Cᵀ = q I
    conference[0, 1:] = 1
    conference[1:, 0] = 1
    conference[1:, 1:] = qmat
    a = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    return torch.kron(conference, a) + torch.kron(torch.eye(q + 1, dtype=torch.float64), b)


def sylvester(n: int) -> torch.Tensor:
    """Sylvester Hadamard matrix of order n = 2^k (float64), H[i, j] = (-1)^popcount(i & j)."""
    idx = torch.arange(n)
    bits = torch.bitwise_and(idx[:, None], idx[None, :])
    parity = torch.zeros_like(bits)
    while bool(bits.any()):
        parity ^= bits & 1
        bits = bits >> 1
    return (1 - 2 * parity).to(torch.float64)


@functools.lru_cache(maxsize=None)
def _base_block(m: int) -> torch.Tensor:
    if m == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    if m == 40:
        return torch.kron(_base_block(20), sylvester(2))
    return _paley2({12: 5, 20: 9, 28: 13}[m])


def decompose(n: int) -> tuple[int, int] | None:
    """Return (m, p) with n = m·p, m in {1, 12, 20, 28}, p a power of two; None if unsupported.

    Sizes 40·2^k are returned as (20, 2^(k+1)): the same matrix (see the module docstring).
    """
    if not isinstance(n, int) or n < 1 or n > MAX_N:
        return None
    p = n & -n  # largest power of two dividing n
    m = n // p
    if m == 1:
        return 1, p
    base = {3: 12, 5: 20, 7: 28}.get(m)
    if base is None or n % base:
        return None
    return base, n // base


@functools.lru_cache(maxsize=None)
def supported_sizes() -> tuple[int, ...]:
    """All supported transform lengths, ascending."""
    sizes = {2**k for k in range(MAX_N.bit_length())}
    for m, k in itertools.product(BASE_ORDERS, range(MAX_N.bit_length())):
        if m * 2**k <= MAX_N:
            sizes.add(m * 2**k)
    return tuple(sorted(sizes))


def check_size(n: int) -> tuple[int, int]:
    """(m, p) for a supported n; otherwise ValueError naming the nearest supported sizes."""
    mp = decompose(n)
    if mp is None:
        sizes = supported_sizes()
        below = [s for s in sizes if s < n]
        above = [s for s in sizes if s > n]
        near = ", ".join(str(s) for s in (below[-1:] + above[:1]))
        raise ValueError(
            f"fwht: unsupported length n={n}; supported are n = 2^k and n = m·2^k for "
            f"m in {BASE_ORDERS}, up to {MAX_N}; nearest supported: {near}"
        )
    return mp


@functools.lru_cache(maxsize=64)
def _hadamard_cpu64(n: int) -> torch.Tensor:
    m, p = check_size(n)
    return torch.kron(_base_block(m), sylvester(p)) if m > 1 else sylvester(p)


def hadamard_block(m: int) -> torch.Tensor:
    """The base block of order m in {1, 12, 20, 28, 40} (float64, CPU, symmetric)."""
    if m not in (1,) + BASE_ORDERS:
        raise ValueError(f"hadamard_block: m must be one of (1,) + {BASE_ORDERS}, got {m}")
    return _base_block(m)


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Dense (n, n) matrix H_n that ``fwht`` multiplies by (without scale).

    Entries are ±1; H_n is symmetric and H_n @ H_n = n·I. n must be a supported size.
    """
    if n > 2**14:
        raise ValueError(f"hadamard_matrix: n={n} would be a dense {n}x{n} matrix; at most 16384")
    return _hadamard_cpu64(n).to(dtype=dtype, device=device)
