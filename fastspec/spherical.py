"""Real spherical harmonics, Gaunt coefficients, Wigner D matrices and e3nn's basis.

Conventions (README, "Gaunt tensor products"): real spherical harmonics, orthonormal on the
unit sphere (∫ Y_i Y_j dΩ = δ_ij), z the polar axis, with the Condon–Shortley phase:

    Y_lm = (-1)^m √2 N_l|m| P̄_l^|m|(cos θ) cos(mφ)    m > 0
    Y_l0 = N_l0 P̄_l^0(cos θ)
    Y_lm = (-1)^m √2 N_l|m| P̄_l^|m|(cos θ) sin(|m|φ)  m < 0

with P̄ the associated Legendre function without the phase and N_lm² = (2l+1)/(4π)·(l−m)!/(l+m)!
(this is sympy's ``Znm`` and ``real_gaunt``: √2·Re and √2·Im of the complex Y_l^|m| that carries
the phase). A degree-L coefficient vector has (L+1)² entries, Y_lm at index l² + l + m.

Everything here is computed in float64 from these definitions and cached per argument;
nothing is shipped as a table.
"""
from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
import torch

MAX_DEGREE = 64
"""Largest degree the tables are built for (the Gaunt table of degree L holds (L+1)^6 numbers)."""


def num_coefficients(lmax: int) -> int:
    """(lmax+1)²: the length of a degree-lmax coefficient vector."""
    return (lmax + 1) ** 2


def degree_of(size: int) -> int | None:
    """L with (L+1)² == size, or None if size is not a square."""
    root = math.isqrt(size)
    return root - 1 if root * root == size and root >= 1 else None


def _check_degree(name: str, lmax) -> int:
    if isinstance(lmax, bool) or not isinstance(lmax, int) or not 0 <= lmax <= MAX_DEGREE:
        raise ValueError(f"{name} must be an int in 0..{MAX_DEGREE}, got {lmax!r}")
    return lmax


# ---------------------------------------------------------------------------- spherical harmonics


def spherical_harmonics(lmax: int, xyz: torch.Tensor) -> torch.Tensor:
    """Y_lm(xyz / |xyz|) for l = 0..lmax: (..., 3) -> (..., (lmax+1)²) in xyz's dtype
    (float32 or float64; half precision is evaluated in float32 and cast back).

    Polynomial recurrences in the unit vector (no angles), so autograd works everywhere
    except at xyz = 0 (undefined direction: NaN). (x + iy)^m gives sin^mθ·e^{imφ}; the
    normalised P̄_l^m/sin^mθ follows the three-term recurrence in z = cos θ.
    """
    _check_degree("spherical_harmonics: lmax", lmax)
    if not isinstance(xyz, torch.Tensor) or not xyz.is_floating_point():
        raise TypeError(f"spherical_harmonics: xyz must be a floating-point tensor, got {type(xyz).__name__}"
                        f"{'' if not isinstance(xyz, torch.Tensor) else ' of ' + str(xyz.dtype)}")
    if xyz.dim() == 0 or xyz.shape[-1] != 3:
        raise ValueError(f"spherical_harmonics: xyz must have shape (..., 3), got {tuple(xyz.shape)}")
    work = xyz.float() if xyz.dtype in (torch.float16, torch.bfloat16) else xyz
    unit = work / work.norm(dim=-1, keepdim=True)
    x, y, z = unit.unbind(-1)
    cos_m, sin_m = [torch.ones_like(x)], [torch.zeros_like(x)]  # Re, Im of (x + iy)^m
    for _ in range(lmax):
        c, s = cos_m[-1], sin_m[-1]
        cos_m.append(c * x - s * y)
        sin_m.append(s * x + c * y)
    columns: list[torch.Tensor | None] = [None] * num_coefficients(lmax)
    for m in range(lmax + 1):
        # q_l = (-1)^m N_lm P̄_l^m(z) / sin^m θ, normalised as it goes (no factorials, so no
        # overflow at large m): q_m = (-1)^m √((2m+1)/4π · Π_k≤m (2k−1)/2k), q_{m+1} = √(2m+3) z q_m,
        # q_l = a (z q_{l−1} − b q_{l−2}), a = √((4l²−1)/(l²−m²)), b = √(((l−1)²−m²)/(4(l−1)²−1)).
        start = (-1) ** m * math.sqrt((2 * m + 1) / (4 * math.pi) * math.prod((2 * k - 1) / (2 * k) for k in range(1, m + 1)))
        q_prev, q = None, torch.full_like(z, start)
        for l in range(m, lmax + 1):
            if l == m + 1:
                q_prev, q = q, math.sqrt(2 * m + 3) * z * q
            elif l > m + 1:
                a = math.sqrt((4 * l * l - 1) / (l * l - m * m))
                b = math.sqrt(((l - 1) ** 2 - m * m) / (4 * (l - 1) ** 2 - 1))
                q_prev, q = q, a * (z * q - b * q_prev)
            if m == 0:
                columns[l * l + l] = q
            else:
                columns[l * l + l + m] = math.sqrt(2) * q * cos_m[m]
                columns[l * l + l - m] = math.sqrt(2) * q * sin_m[m]
    return torch.stack(columns, dim=-1).to(xyz.dtype)


# ---------------------------------------------------------------------------- quadrature


@functools.lru_cache(maxsize=64)
def sphere_quadrature(degree: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (P, 3) and weights (P,) in float64 that integrate every polynomial of degree
    ≤ ``degree`` on S² exactly: Gauss–Legendre in cos θ (degree//2 + 1 nodes, exact to
    degree 2n−1 in z) × degree+1 uniform φ (exact for e^{ikφ}, |k| ≤ degree; the modes
    k ≠ 0 integrate to zero, and the k = 0 part is a polynomial in z)."""
    n_theta, n_phi = degree // 2 + 1, degree + 1
    z, w = np.polynomial.legendre.leggauss(n_theta)
    phi = 2 * np.pi * np.arange(n_phi) / n_phi
    z, w, phi = (torch.from_numpy(np.asarray(a, dtype=np.float64)) for a in (z, w, phi))
    s = (1 - z * z).sqrt()
    points = torch.stack([s[:, None] * phi.cos()[None, :], s[:, None] * phi.sin()[None, :],
                          z[:, None].expand(-1, n_phi)], dim=-1).reshape(-1, 3)
    weights = (w[:, None] * (2 * math.pi / n_phi)).expand(-1, n_phi).reshape(-1)
    return points, weights.contiguous()


# ---------------------------------------------------------------------------- Wigner 3j, Gaunt


@functools.lru_cache(maxsize=None)
def _factorial(n: int) -> int:
    return math.factorial(n)


@functools.lru_cache(maxsize=None)
def wigner_3j(l1: int, l2: int, l3: int, m1: int, m2: int, m3: int) -> float:
    """The Wigner 3j symbol (l1 l2 l3; m1 m2 m3) by Racah's formula in exact rational
    arithmetic (one rounding at the end)."""
    if m1 + m2 + m3 != 0 or not abs(l1 - l2) <= l3 <= l1 + l2 or max(abs(m1) - l1, abs(m2) - l2, abs(m3) - l3) > 0:
        return 0.0
    f = _factorial
    square = Fraction(f(l1 + l2 - l3) * f(l1 - l2 + l3) * f(-l1 + l2 + l3), f(l1 + l2 + l3 + 1))
    square *= f(l1 + m1) * f(l1 - m1) * f(l2 + m2) * f(l2 - m2) * f(l3 + m3) * f(l3 - m3)
    ts = range(max(0, l2 - l3 - m1, l1 - l3 + m2), min(l1 + l2 - l3, l1 - m1, l2 + m2) + 1)
    dens = [f(t) * f(l3 - l2 + t + m1) * f(l3 - l1 + t - m2) * f(l1 + l2 - l3 - t) * f(l1 - t - m1) * f(l2 - t + m2)
            for t in ts]
    common = math.lcm(*dens)
    total = sum((-1) ** t * (common // den) for t, den in zip(ts, dens))  # the sum times `common`
    if total == 0:
        return 0.0
    sign = (-1) ** ((l1 - l2 - m3) % 2) * (1 if total > 0 else -1)
    return sign * math.sqrt(float(square * Fraction(total * total, common * common)))  # exact until here


def _real_from_complex(l: int) -> np.ndarray:
    """U with Y^real_l = U @ Y^complex_l ((2l+1)², rows m = -l..l): sympy's unitary matrix
    of ``real_gaunt`` (Condon–Shortley phase in the complex Y)."""
    u = np.zeros((2 * l + 1, 2 * l + 1), dtype=np.complex128)
    r = 1 / math.sqrt(2)
    u[l, l] = 1
    for m in range(1, l + 1):
        u[l + m, l + m], u[l + m, l - m] = r, (-1) ** m * r
        u[l - m, l - m], u[l - m, l + m] = 1j * (-1) ** m * r, -1j * r
    return u


@functools.lru_cache(maxsize=None)
def _gaunt_block(l1: int, l2: int, l3: int) -> np.ndarray:
    """∫ Y_l1m1 Y_l2m2 Y_l3m3 dΩ over the real Y of degrees l1, l2, l3, (2l1+1, 2l2+1, 2l3+1).
    The complex integral is √((2l1+1)(2l2+1)(2l3+1)/4π)·(l1 l2 l3; 0 0 0)(l1 l2 l3; m1 m2 m3);
    the real one follows by U on every index (zero unless l1+l2+l3 is even and triangular)."""
    shape = (2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1)
    if (l1 + l2 + l3) % 2 or not abs(l1 - l2) <= l3 <= l1 + l2:
        return np.zeros(shape)
    c = math.sqrt((2 * l1 + 1) * (2 * l2 + 1) * (2 * l3 + 1) / (4 * math.pi)) * wigner_3j(l1, l2, l3, 0, 0, 0)
    complex_block = np.zeros(shape)
    for m1 in range(0, l1 + 1):  # (-m1, -m2, -m3) has the same 3j symbol (l1+l2+l3 even)
        for m2 in range(max(-l2, -l3 - m1), min(l2, l3 - m1) + 1):
            value = c * wigner_3j(l1, l2, l3, m1, m2, -m1 - m2)
            complex_block[l1 + m1, l2 + m2, l3 - m1 - m2] = complex_block[l1 - m1, l2 - m2, l3 + m1 + m2] = value
    real = complex_block.astype(np.complex128)
    for l in (l1, l2, l3):  # U on the leading index, which then moves last; U's row m holds ±m only
        u = _real_from_complex(l)
        diagonal, anti = np.diagonal(u).copy(), np.fliplr(u).diagonal().copy()
        anti[l] = 0
        real = np.moveaxis(diagonal[:, None, None] * real + anti[:, None, None] * real[::-1], 0, -1)
    return np.ascontiguousarray(real.real)


@functools.lru_cache(maxsize=16)
def _gaunt_table(l1max: int, l2max: int, lmax_out: int) -> torch.Tensor:
    table = np.zeros((num_coefficients(l1max), num_coefficients(l2max), num_coefficients(lmax_out)))
    for l1 in range(l1max + 1):
        for l2 in range(l2max + 1):
            for l3 in range(abs(l1 - l2), min(l1 + l2, lmax_out) + 1, 2):
                table[l1 * l1:(l1 + 1) ** 2, l2 * l2:(l2 + 1) ** 2, l3 * l3:(l3 + 1) ** 2] = _gaunt_block(l1, l2, l3)
    return torch.from_numpy(table)


def gaunt_coefficients(l1max: int, l2max: int, lmax_out: int) -> torch.Tensor:
    """The dense float64 table G[i, j, k] = ∫ Y_i Y_j Y_k dΩ, ((l1max+1)², (l2max+1)², (lmax_out+1)²),
    from Wigner 3j symbols (exact rational arithmetic, one rounding each); cached, returned
    read-only in spirit (a shared tensor: clone it before writing). Zero unless l1+l2+l3 is even."""
    for name, value in (("l1max", l1max), ("l2max", l2max), ("lmax_out", lmax_out)):
        _check_degree(f"gaunt_coefficients: {name}", value)
    return _gaunt_table(l1max, l2max, lmax_out)


# ---------------------------------------------------------------------------- Wigner D


def wigner_D(lmax: int, rotation: torch.Tensor) -> torch.Tensor:
    """The real-SH representation of a rotation: D ((lmax+1)², (lmax+1)², block diagonal,
    float64) with Y(R p) = D(R) Y(p) for every unit vector p, so the coefficients of
    p ↦ f(Rᵀp) are D(R) x when f = Y·x. rotation: (3, 3) orthogonal, det +1 (an improper one
    gives the parity-signed blocks). Exact quadrature: D = ∫ Y(R p) Y(p)ᵀ dΩ."""
    _check_degree("wigner_D: lmax", lmax)
    rot = torch.as_tensor(rotation, dtype=torch.float64).cpu()
    if rot.shape != (3, 3) or not torch.allclose(rot @ rot.T, torch.eye(3, dtype=torch.float64), atol=1e-9):
        raise ValueError(f"wigner_D: rotation must be a (3, 3) orthogonal matrix, got shape {tuple(rot.shape)}")
    points, weights = sphere_quadrature(2 * lmax)
    y = spherical_harmonics(lmax, points)
    d = (spherical_harmonics(lmax, points @ rot.T) * weights[:, None]).T @ y
    mask = torch.block_diag(*[torch.ones(2 * l + 1, 2 * l + 1, dtype=torch.float64) for l in range(lmax + 1)])
    return d * mask  # the off-block entries are quadrature round-off


# ---------------------------------------------------------------------------- e3nn's basis

E3NN_NORMALIZATIONS = ("integral", "component", "norm")


def _e3nn_scale(l: int, normalization: str) -> float:
    """e3nn's Y_l = scale · (orthonormal Y_l in e3nn's axes)."""
    if normalization not in E3NN_NORMALIZATIONS:
        raise ValueError(f"e3nn normalization must be one of {E3NN_NORMALIZATIONS}, got {normalization!r}")
    return {"integral": 1.0, "component": math.sqrt(4 * math.pi),
            "norm": math.sqrt(4 * math.pi / (2 * l + 1))}[normalization]


# e3nn (0.5, 0.6) orders its axes so that its Y_1(p) is √(3/4π)·p, with y its polar axis: its
# Y_l(p) is ours at Q p with Q p = (−p_z, −p_x, p_y) (a rotation, det +1), for every l and m
# (tests/test_spherical.py checks this against e3nn).
_E3NN_AXES = torch.tensor([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)


@functools.lru_cache(maxsize=32)
def _e3nn_matrix(lmax: int, normalization: str, to_e3nn: bool) -> torch.Tensor:
    """M with ours = M @ e3nn's (to_e3nn: the inverse). e3nn's Y(p) = S Y_ours(Q p) = S D Y_ours(p)
    (S the per-degree scale), so Σ x·Y_e3nn = (Dᵀ S x)·Y_ours, and D is orthogonal."""
    d = wigner_D(lmax, _E3NN_AXES)
    scale = torch.cat([torch.full((2 * l + 1,), _e3nn_scale(l, normalization), dtype=torch.float64)
                       for l in range(lmax + 1)])
    return (d / scale[:, None] if to_e3nn else d.T * scale[None, :]).contiguous()


def from_e3nn(x: torch.Tensor, lmax: int, normalization: str = "component") -> torch.Tensor:
    """Coefficients in e3nn's basis (``o3.spherical_harmonics(..., normalization=...)``, irreps
    "0e + 1o + 2e + ..." up to lmax) -> ours, as the same function on the sphere:
    Σ_i x_i Y^e3nn_i(p) = Σ_k out_k Y_k(p). x: (..., (lmax+1)²), float; returns x's dtype."""
    return _convert(x, lmax, normalization, False, "from_e3nn")


def to_e3nn(x: torch.Tensor, lmax: int, normalization: str = "component") -> torch.Tensor:
    """The inverse of :func:`from_e3nn`: our coefficients -> e3nn's, same function."""
    return _convert(x, lmax, normalization, True, "to_e3nn")


def _convert(x, lmax, normalization, to_e3nn, name):
    _check_degree(f"{name}: lmax", lmax)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name}: x must be a floating-point tensor")
    if x.dim() == 0 or x.shape[-1] != num_coefficients(lmax):
        raise ValueError(f"{name}: x must have shape (..., {num_coefficients(lmax)}) for lmax={lmax}, got {tuple(x.shape)}")
    if normalization not in E3NN_NORMALIZATIONS:
        raise ValueError(f"{name}: normalization must be one of {E3NN_NORMALIZATIONS}, got {normalization!r}")
    mat = _e3nn_matrix(lmax, normalization, to_e3nn)
    return x @ mat.T.to(dtype=x.dtype, device=x.device)
