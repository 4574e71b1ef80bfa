"""HiPPO matrices and the initialisations of diagonal state-space models (S4D).

HiPPO (Gu et al. 2020, "HiPPO: Recurrent Memory with Optimal Polynomial Projections")
keeps a running projection c(t) ∈ R^N of a signal's history onto an orthogonal basis
through a linear ODE ``c'(t) = A c(t) + B f(t)`` (for LegS ``c'(t) = (A c(t) + B f(t)) / t``).
:func:`transition` returns (A, B) for each measure, with state-spaces/s4's scaling (its
``transition``); n, k = 0 … N−1 index rows and columns:

``legs`` (scaled Legendre, HiPPO eq. (3), uniform measure on [0, t])::

    A[n, k] = −√(2n+1)·√(2k+1)  if n > k,   −(n+1)  if n = k,   0  if n < k
    B[n]    = √(2n+1)

``legt`` (translated Legendre on a sliding window, "How to Train Your HiPPO" (Gu et al.
2022) §3 with θ = 2, i.e. the θ = 1 matrices halved, as s4 does)::

    A[n, k] = −½·√(2n+1)·√(2k+1) · (1 if n ≥ k else (−1)^(n−k)),   B[n] = ½·√(2n+1)

``lagt`` (translated Laguerre, HiPPO Appendix D.2 with β = 1)::

    A[n, k] = −1 if n > k,   −½ if n = k,   0 if n < k;   B[n] = 1

``fout`` (translated Fourier, "How to Train Your HiPPO" §4; N even): the state holds pairs
(cos, sin) of frequency j at indices (2j, 2j+1), j = 0 … N/2−1 (cos 0 = 1, sin 0 = 0)::

    A = π·J − B Bᵀ,  J[2j+1, 2j] = j,  J[2j, 2j+1] = −j  (else 0)
    B[0] = 1,  B[2j] = √2 (j ≥ 1),  B[2j+1] = 0

``foud`` (Fourier with a diagonal damping instead of the rank-one term; N even)::

    A = 2π·J − ½·I,  B as for fout

:func:`rank_correction` gives P (N, r) with ``A + P Pᵀ`` normal (a multiple of I plus a
skew-symmetric matrix): legs ``P[n] = √(n+½)`` (r = 1); legt the odd and the even rows of
``√((2n+1)/2)`` (r = 2); lagt ``√½`` (r = 1); fout ``B`` (r = 1); foud none (r = 0).
:func:`nplr` diagonalises that normal part unitarily: ``A = V (diag(W) − P̃ P̃ᴴ) Vᴴ`` with
``P̃ = Vᴴ P``, the normal-plus-low-rank (NPLR) form of S4 (Gu et al. 2022, "Efficiently
Modeling Long Sequences with Structured State Spaces", Theorem 1).

S4D (Gu et al. 2022, "On the Parameterization and Initialization of Diagonal State Space
Models") keeps only a diagonal A of N complex modes; with conjugate pairs implied (the
kernel takes 2·Re), that is a real SSM of state size 2N. :func:`s4d_init` builds A and B
(H, N); :func:`init_log_dt` the log step sizes.
"""
from __future__ import annotations

import math

import torch

MEASURES = ("legs", "legt", "lagt", "fout", "foud")
S4D_INITS = ("legs", "lin", "inv", "real")


def _check(measure: str, N: int) -> None:
    if measure not in MEASURES:
        raise ValueError(f"hippo: measure must be one of {', '.join(map(repr, MEASURES))}; got {measure!r}")
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise ValueError(f"hippo: N must be a positive int, got {N!r}")
    if measure in ("fout", "foud") and N % 2:
        raise ValueError(f"hippo: measure {measure!r} holds (cos, sin) pairs: N must be even, got {N}")


def _fourier_coupling(N: int) -> torch.Tensor:
    """J (N, N): J[2j+1, 2j] = j, J[2j, 2j+1] = −j."""
    J = torch.zeros(N, N, dtype=torch.float64)
    j = torch.arange(N // 2)
    J[2 * j + 1, 2 * j] = j.double()
    J[2 * j, 2 * j + 1] = -j.double()
    return J


def _fourier_b(N: int) -> torch.Tensor:
    B = torch.zeros(N, dtype=torch.float64)
    B[0::2] = math.sqrt(2)
    B[0] = 1
    return B


def transition(measure: str, N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (N, N), B (N,)) float64 of the HiPPO ``measure`` (formulas in the module docstring)."""
    _check(measure, N)
    n = torch.arange(N, dtype=torch.float64)
    row, col = n[:, None], n[None, :]
    r = torch.sqrt(2 * n + 1)
    if measure == "legs":
        A = torch.where(row > col, -r[:, None] * r[None, :], torch.zeros(()).double()) - torch.diag(n + 1)
        return A, r.clone()
    if measure == "legt":
        sign = torch.where(row >= col, 1.0, (-1.0) ** (row - col))
        return -0.5 * r[:, None] * r[None, :] * sign, 0.5 * r
    if measure == "lagt":
        return torch.where(row > col, -1.0, 0.0) - 0.5 * torch.eye(N, dtype=torch.float64), torch.ones(N).double()
    B = _fourier_b(N)
    if measure == "fout":
        return math.pi * _fourier_coupling(N) - B[:, None] * B[None, :], B
    return 2 * math.pi * _fourier_coupling(N) - 0.5 * torch.eye(N, dtype=torch.float64), B


def rank_correction(measure: str, N: int) -> torch.Tensor:
    """P (N, r) float64 such that ``A + P Pᵀ`` is normal (module docstring); r = 0 for foud."""
    _check(measure, N)
    n = torch.arange(N, dtype=torch.float64)
    if measure == "legs":
        return torch.sqrt(n + 0.5)[:, None]
    if measure == "legt":
        p = torch.sqrt((2 * n + 1) / 2)
        odd = (n % 2 == 1).double()
        return torch.stack([p * odd, p * (1 - odd)], dim=1)
    if measure == "lagt":
        return torch.full((N, 1), math.sqrt(0.5), dtype=torch.float64)
    if measure == "fout":
        return _fourier_b(N)[:, None]
    return torch.zeros(N, 0, dtype=torch.float64)


def nplr(measure: str, N: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The normal-plus-low-rank form of the HiPPO matrix: (W (N,), P (N, r), B (N,), V (N, N)),
    complex128, with V unitary and ``A = V (diag(W) − P Pᴴ) Vᴴ``, ``B_hippo = V B``.

    ``A + P₀P₀ᵀ`` (P₀ = :func:`rank_correction`) is c·I plus a skew-symmetric K; W = c + i·ω
    with ω the eigenvalues of the Hermitian −iK (``eigh``, so V is unitary to rounding even
    where eigenvalues repeat), sorted by ω descending: conjugate pairs are ω and −ω.
    """
    A, B = transition(measure, N)
    P0 = rank_correction(measure, N)
    S = A + P0 @ P0.T
    c = torch.diagonal(S).mean()
    K = S - c * torch.eye(N, dtype=torch.float64)
    omega, V = torch.linalg.eigh(-1j * K.to(torch.complex128))
    order = torch.argsort(omega, descending=True)
    omega, V = omega[order], V[:, order]
    # eigh fixes each eigenvector up to a phase: make its first clearly nonzero entry real
    # and positive, so that P and B do not depend on the LAPACK build
    first = (V.abs() > 1e-8 * V.abs().amax(0)).int().argmax(0)
    lead = V[first, torch.arange(N)]
    V = V * (lead.abs() / lead)[None, :]
    W = torch.complex(torch.full_like(omega, float(c)), omega)
    Vh = V.conj().T
    return W, Vh @ P0.to(torch.complex128), Vh @ B.to(torch.complex128), V


def s4d_init(kind: str, H: int, N: int, *, dtype: torch.dtype = torch.complex64) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B), each (H, N) of complex ``dtype``: the S4D initialisations of N complex modes
    (a real SSM of state size 2N), the same for every channel; n = 0 … N−1:

    - ``legs``: the N eigenvalues W of ``nplr('legs', 2N)`` with positive imaginary part
      (real part −½), in ascending order of it, and B = the matching entries of Vᴴ·B_legs
      (S4D-LegS: the diagonal part of HiPPO-LegS, whose kernel tends to LegS's as N grows);
    - ``lin``:  A_n = −½ + iπn, B_n = 1 (S4D-Lin);
    - ``inv``:  A_n = −½ + i·(2N/π)·(2N/(2n+1) − 1), B_n = 1 (S4D-Inv);
    - ``real``: A_n = −(n+1), B_n = 1 (S4D-Real).
    """
    if kind not in S4D_INITS:
        raise ValueError(f"s4d_init: kind must be one of {', '.join(map(repr, S4D_INITS))}; got {kind!r}")
    if dtype not in (torch.complex64, torch.complex128):
        raise TypeError(f"s4d_init: dtype must be complex64 or complex128, got {dtype}")
    for name, value in (("H", H), ("N", N)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"s4d_init: {name} must be a positive int, got {value!r}")
    n = torch.arange(N, dtype=torch.float64)
    B = torch.ones(N, dtype=torch.complex128)
    if kind == "legs":
        W, _, B_legs, _ = nplr("legs", 2 * N)
        A, B = W[:N].flip(0), B_legs[:N].flip(0)
    elif kind == "lin":
        A = torch.complex(torch.full_like(n, -0.5), math.pi * n)
    elif kind == "inv":
        A = torch.complex(torch.full_like(n, -0.5), (2 * N / math.pi) * (2 * N / (2 * n + 1) - 1))
    else:
        A = torch.complex(-(n + 1), torch.zeros_like(n))
    return A.expand(H, N).to(dtype).clone(), B.expand(H, N).to(dtype).clone()


def init_log_dt(H: int, dt_min: float = 1e-3, dt_max: float = 1e-1, *, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """log Δ (H,): uniform in [log dt_min, log dt_max] ("How to Train Your HiPPO" §3.3: the
    timescales 1/Δ spread over the range of dependencies the model should cover)."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"init_log_dt: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    if isinstance(H, bool) or not isinstance(H, int) or H < 1:
        raise ValueError(f"init_log_dt: H must be a positive int, got {H!r}")
    u = torch.rand(H, dtype=torch.float64, generator=generator)
    return (u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).to(dtype)
