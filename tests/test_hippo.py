"""fastspec.hippo: HiPPO matrices against their formulas entry by entry, the NPLR form,
the LegS memory property, and the S4D initialisations."""
import math

import numpy as np
import pytest
import torch

from fastspec import hippo


def _formula(measure, N, n, k):
    """(A[n, k], B[n]) of the module docstring, one entry at a time."""
    r = lambda i: math.sqrt(2 * i + 1)  # noqa: E731
    if measure == "legs":
        a = -r(n) * r(k) if n > k else (-(n + 1) if n == k else 0.0)
        return a, r(n)
    if measure == "legt":
        return -0.5 * r(n) * r(k) * (1 if n >= k else (-1) ** (n - k)), 0.5 * r(n)
    if measure == "lagt":
        return (-1.0 if n > k else (-0.5 if n == k else 0.0)), 1.0
    b = lambda i: 1.0 if i == 0 else (math.sqrt(2) if i % 2 == 0 else 0.0)  # noqa: E731
    J = 0  # J[2j+1, 2j] = j, J[2j, 2j+1] = −j
    if n // 2 == k // 2 and n != k:
        J = n // 2 if n % 2 else -(n // 2)
    if measure == "fout":
        return math.pi * J - b(n) * b(k), b(n)
    return 2 * math.pi * J - 0.5 * (n == k), b(n)


@pytest.mark.parametrize("measure", hippo.MEASURES)
@pytest.mark.parametrize("N", [2, 6, 9])
def test_transition_matches_the_formulas(measure, N):
    if measure in ("fout", "foud") and N % 2:
        with pytest.raises(ValueError, match="N must be even"):
            hippo.transition(measure, N)
        return
    A, B = hippo.transition(measure, N)
    assert A.dtype == B.dtype == torch.float64 and A.shape == (N, N) and B.shape == (N,)
    for n in range(N):
        for k in range(N):
            a, b = _formula(measure, N, n, k)
            assert A[n, k].item() == pytest.approx(a, abs=1e-13), (n, k)
        assert B[n].item() == pytest.approx(b, abs=1e-13), n


def test_fourier_pairs_couple_at_their_frequency():
    A, _ = hippo.transition("foud", 8)
    assert A[5, 4] == pytest.approx(2 * math.pi * 2) and A[4, 5] == pytest.approx(-2 * math.pi * 2)
    A, B = hippo.transition("fout", 8)
    assert A[5, 4] == pytest.approx(math.pi * 2) and A[4, 5] == pytest.approx(-math.pi * 2)
    assert torch.all(A[1] == 0) and torch.all(A[:, 1] == 0) and B[1] == 0  # sin 0 = 0: a dead mode


@pytest.mark.parametrize("measure", hippo.MEASURES)
@pytest.mark.parametrize("N", [2, 8, 64])
def test_rank_correction_makes_a_normal_matrix(measure, N):
    A, _ = hippo.transition(measure, N)
    P = hippo.rank_correction(measure, N)
    assert P.shape == (N, {"legt": 2, "foud": 0}.get(measure, 1))
    S = A + P @ P.T
    skew = S - torch.diagonal(S).mean() * torch.eye(N, dtype=torch.float64)
    torch.testing.assert_close(skew, -skew.T, rtol=0, atol=1e-12)


@pytest.mark.parametrize("measure", hippo.MEASURES)
@pytest.mark.parametrize("N", [2, 8, 64, 256])
def test_nplr_reconstructs_the_hippo_matrix(measure, N):
    A, B = hippo.transition(measure, N)
    W, P, Bt, V = hippo.nplr(measure, N)
    assert W.dtype == P.dtype == Bt.dtype == V.dtype == torch.complex128
    eye = torch.eye(N, dtype=torch.complex128)
    assert (V.conj().T @ V - eye).abs().max() < 1e-12
    rebuilt = V @ (torch.diag(W) - P @ P.conj().T) @ V.conj().T
    scale = A.abs().max()
    assert (rebuilt - A).abs().max() / scale < 1e-10
    assert (V @ Bt - B).abs().max() / B.abs().max() < 1e-10
    assert torch.all(W.imag[:-1] >= W.imag[1:])  # sorted: conjugate pairs at ±ω
    torch.testing.assert_close(W.imag, -W.imag.flip(0), rtol=0, atol=1e-9 * float(W.imag.abs().max() + 1))


def _legs_reconstruction_error(N: int, steps: int = 2000) -> float:
    """Run the LegS ODE c' = (A c + B f) / t over f on [0, 1] (trapezoidal steps from the
    exact moments at t0 = 1/steps), rebuild f on [0, 1] from c(1) with the scaled Legendre
    polynomials g_n(s) = √(2n+1)·P_n(2s − 1) (HiPPO eq. (3)), return the relative RMS error."""
    f = lambda s: np.sin(3 * np.pi * s) + s**2 - 0.5 * np.cos(7 * s)  # noqa: E731
    A, B = (m.numpy() for m in hippo.transition("legs", N))
    legendre = [np.polynomial.legendre.Legendre.basis(n) for n in range(N)]
    dt = t = 1.0 / steps
    x, w = np.polynomial.legendre.leggauss(64)
    c = np.array([np.sqrt(2 * n + 1) * (legendre[n](x) * f((x + 1) / 2 * t)).dot(w) / 2 for n in range(N)])
    eye = np.eye(N)
    for _ in range(steps - 1):
        rhs = (eye + dt / (2 * t) * A) @ c + dt / 2 * B * (f(t + dt) / (t + dt) + f(t) / t)
        t += dt
        c = np.linalg.solve(eye - dt / (2 * t) * A, rhs)
    s = np.linspace(0, 1, 1001)
    rebuilt = sum(c[n] * np.sqrt(2 * n + 1) * legendre[n](2 * s - 1) for n in range(N))
    return float(np.sqrt(np.mean((rebuilt - f(s)) ** 2) / np.mean(f(s) ** 2)))


def test_legs_state_remembers_the_whole_history():
    """HiPPO-LegS: the state at time t is the projection of f on [0, t] onto the first N
    Legendre polynomials, so the error of the rebuilt history falls as N grows (down to
    the step's own error, about 2e-6 here)."""
    errors = [_legs_reconstruction_error(N) for N in (4, 8, 12, 16)]
    assert errors[0] > 0.1
    assert all(later < earlier / 10 for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-5, errors


@pytest.mark.parametrize("N", [1, 4, 32])
def test_s4d_inits_match_their_formulas(N):
    n = torch.arange(N, dtype=torch.float64)
    A, B = hippo.s4d_init("lin", 3, N)
    assert A.shape == B.shape == (3, N) and A.dtype == torch.complex64
    torch.testing.assert_close(A, torch.complex(-0.5 * torch.ones(N), math.pi * n.float()).expand(3, N))
    assert torch.all(B == 1)
    A, _ = hippo.s4d_init("inv", 2, N, dtype=torch.complex128)
    torch.testing.assert_close(A[1].imag, 2 * N / math.pi * (2 * N / (2 * n + 1) - 1))
    assert torch.all(A.real == -0.5)
    A, _ = hippo.s4d_init("real", 2, N)
    torch.testing.assert_close(A[0], torch.complex(-(n.float() + 1), torch.zeros(N)))


def test_s4d_legs_is_the_diagonal_part_of_hippo_legs():
    N = 16
    A, B = hippo.s4d_init("legs", 2, N, dtype=torch.complex128)
    W, _, Bt, _ = hippo.nplr("legs", 2 * N)
    torch.testing.assert_close(A[0], W[:N].flip(0))
    torch.testing.assert_close(B[1], Bt[:N].flip(0))
    assert torch.all(A.imag > 0) and torch.all(A.imag[:, 1:] > A.imag[:, :-1])
    torch.testing.assert_close(A.real, torch.full((2, N), -0.5, dtype=torch.float64))
    # the 2N eigenvalues come in conjugate pairs, so the kept half and its conjugate are all of them
    torch.testing.assert_close(torch.sort(torch.cat([A[0], A[0].conj()]).imag).values, torch.sort(W.imag).values)


def test_init_log_dt_is_log_uniform_in_range():
    log_dt = hippo.init_log_dt(4096, 1e-3, 1e-1, generator=torch.Generator().manual_seed(0))
    assert log_dt.shape == (4096,) and log_dt.dtype == torch.float32
    assert log_dt.min() >= math.log(1e-3) and log_dt.max() <= math.log(1e-1)
    assert abs(log_dt.mean().item() - (math.log(1e-3) + math.log(1e-1)) / 2) < 0.1
    assert torch.all(hippo.init_log_dt(3, 0.01, 0.01) == math.log(0.01))


def test_bad_arguments():
    with pytest.raises(ValueError, match="measure must be one of 'legs', 'legt', 'lagt', 'fout', 'foud'"):
        hippo.transition("legendre", 4)
    with pytest.raises(ValueError, match="N must be a positive int"):
        hippo.nplr("legs", 0)
    with pytest.raises(ValueError, match="N must be even"):
        hippo.rank_correction("fout", 3)
    with pytest.raises(ValueError, match="kind must be one of 'legs', 'lin', 'inv', 'real'"):
        hippo.s4d_init("hippo", 2, 4)
    with pytest.raises(TypeError, match="complex64 or complex128"):
        hippo.s4d_init("lin", 2, 4, dtype=torch.float32)
    with pytest.raises(ValueError, match="H must be a positive int"):
        hippo.s4d_init("lin", 0, 4)
    with pytest.raises(ValueError, match="0 < dt_min <= dt_max"):
        hippo.init_log_dt(4, 0.1, 0.01)
