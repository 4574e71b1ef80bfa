"""fastspec.spherical: real spherical harmonics, Gaunt coefficients, Wigner D, e3nn's basis."""
import math

import pytest
import torch

from fastspec import spherical
from fastspec.spherical import (gaunt_coefficients, num_coefficients, sphere_quadrature, spherical_harmonics,
                                wigner_3j, wigner_D)

from conftest import random_input


def _random_rotation() -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


def test_gaunt_matches_sympy_real_gaunt():
    """Every entry of the degree-≤4 table against sympy's exact real Gaunt coefficient; the
    entries the selection rules make zero (l1+l2+l3 odd or not triangular; for the orders,
    |m3| ∉ {|m1|+|m2|, ||m1|−|m2||} or an odd number of negative m: an odd number of
    sin(|m|φ) factors) must be exactly zero."""
    wigner = pytest.importorskip("sympy.physics.wigner")
    table = gaunt_coefficients(4, 4, 4)
    checked = 0
    for l1 in range(5):
        for l2 in range(5):
            for l3 in range(5):
                block = table[l1 * l1:(l1 + 1) ** 2, l2 * l2:(l2 + 1) ** 2, l3 * l3:(l3 + 1) ** 2]
                if (l1 + l2 + l3) % 2 or not abs(l1 - l2) <= l3 <= l1 + l2:
                    assert torch.count_nonzero(block) == 0, (l1, l2, l3)
                    continue
                for m1 in range(-l1, l1 + 1):
                    for m2 in range(-l2, l2 + 1):
                        for m3 in range(-l3, l3 + 1):
                            value = block[l1 + m1, l2 + m2, l3 + m3].item()
                            if abs(m3) not in (abs(m1) + abs(m2), abs(abs(m1) - abs(m2))) or (m1 < 0) + (m2 < 0) + (m3 < 0) in (1, 3):
                                assert value == 0.0, (l1, l2, l3, m1, m2, m3)
                                continue
                            exact = float(wigner.real_gaunt(l1, l2, l3, m1, m2, m3))
                            assert abs(value - exact) <= 1e-15, (l1, l2, l3, m1, m2, m3)
                            checked += 1
    assert checked > 500


def test_odd_paths_are_exactly_zero_and_table_is_symmetric():
    table = gaunt_coefficients(6, 5, 7)
    degree = torch.cat([torch.full((2 * l + 1,), l) for l in range(8)])
    odd = (degree[:49, None, None] + degree[None, :36, None] + degree[None, None, :64]) % 2 == 1
    assert torch.count_nonzero(table[odd]) == 0 and torch.count_nonzero(table[~odd]) > 0
    full = gaunt_coefficients(5, 5, 5)
    for perm in [(1, 0, 2), (2, 1, 0), (0, 2, 1)]:
        torch.testing.assert_close(full.permute(*perm), full, rtol=0, atol=1e-15)


def test_gaunt_equals_the_integral_by_quadrature():
    points, weights = sphere_quadrature(3 * 7)
    y = spherical_harmonics(7, points)
    by_quadrature = torch.einsum("pi,pj,pk,p->ijk", y, y, y, weights)
    torch.testing.assert_close(gaunt_coefficients(7, 7, 7), by_quadrature, rtol=0, atol=1e-14)


def test_wigner_3j_against_sympy():
    wigner = pytest.importorskip("sympy.physics.wigner")
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        l1, l2 = (int(v) for v in torch.randint(0, 30, (2,), generator=gen))
        l3 = int(torch.randint(abs(l1 - l2), l1 + l2 + 1, (), generator=gen))
        m1 = int(torch.randint(-l1, l1 + 1, (), generator=gen))
        m2 = int(torch.randint(-l2, l2 + 1, (), generator=gen))
        exact = float(wigner.wigner_3j(l1, l2, l3, m1, m2, -m1 - m2))
        assert abs(wigner_3j(l1, l2, l3, m1, m2, -m1 - m2) - exact) <= 1e-15 * max(1.0, abs(exact))
    assert wigner_3j(1, 1, 3, 0, 0, 0) == 0.0 and wigner_3j(1, 1, 1, 1, 1, 1) == 0.0


@pytest.mark.parametrize("lmax", [12, 40])
def test_spherical_harmonics_orthonormal_by_quadrature(lmax):
    """Also at a degree whose factorials overflow int64 and (2m−1)!! float32."""
    points, weights = sphere_quadrature(2 * lmax)
    y = spherical_harmonics(lmax, points * 3.0)  # normalised inside
    gram = y.T @ (y * weights[:, None])
    torch.testing.assert_close(gram, torch.eye(num_coefficients(lmax), dtype=torch.float64), rtol=0, atol=1e-12)
    single = spherical_harmonics(lmax, points.float())
    assert torch.isfinite(single).all() and (single.double() - y).abs().max() < 1e-4


def test_spherical_harmonics_closed_forms():
    """The first degrees written out: Condon–Shortley phase, z polar, index l² + l + m."""
    p = random_input((50, 3), torch.float64, device="cpu")
    x, y, z = (p / p.norm(dim=-1, keepdim=True)).unbind(-1)
    c1, c2 = math.sqrt(3 / (4 * math.pi)), math.sqrt(15 / (4 * math.pi))
    expected = torch.stack([torch.full_like(x, 1 / math.sqrt(4 * math.pi)), -c1 * y, c1 * z, -c1 * x,
                            c2 * x * y, -c2 * y * z, math.sqrt(5 / (16 * math.pi)) * (3 * z * z - 1),
                            -c2 * x * z, c2 / 2 * (x * x - y * y)], dim=-1)
    torch.testing.assert_close(spherical_harmonics(2, p), expected, rtol=1e-13, atol=1e-14)


def test_spherical_harmonics_shapes_dtypes_autograd():
    p = random_input((2, 5, 3), torch.float32, device="cpu")
    assert spherical_harmonics(3, p).shape == (2, 5, 16) and spherical_harmonics(3, p).dtype == torch.float32
    assert spherical_harmonics(2, p.bfloat16()).dtype == torch.bfloat16
    p64 = random_input((4, 3), torch.float64, device="cpu").requires_grad_()
    assert torch.autograd.gradcheck(lambda q: spherical_harmonics(4, q), (p64,))
    # Y is a function of the direction alone: no gradient along p
    spherical_harmonics(3, p64).sum().backward()
    assert (p64.grad * p64.detach()).sum(-1).abs().max() < 1e-12
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        spherical_harmonics(2, torch.zeros(4, 2))
    with pytest.raises(TypeError, match="floating-point"):
        spherical_harmonics(2, torch.zeros(4, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="lmax"):
        spherical_harmonics(-1, p)


def test_wigner_D_rotates_harmonics():
    lmax = 6
    rot = _random_rotation()
    d = wigner_D(lmax, rot)
    p = random_input((40, 3), torch.float64, device="cpu")
    torch.testing.assert_close(spherical_harmonics(lmax, p @ rot.T), spherical_harmonics(lmax, p) @ d.T,
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d @ d.T, torch.eye(num_coefficients(lmax), dtype=torch.float64), rtol=0, atol=1e-12)
    rot2 = _random_rotation()
    torch.testing.assert_close(wigner_D(lmax, rot @ rot2), d @ wigner_D(lmax, rot2), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="orthogonal"):
        wigner_D(2, torch.ones(3, 3))


@pytest.mark.parametrize("normalization", spherical.E3NN_NORMALIZATIONS)
def test_e3nn_conversion_is_the_same_function(normalization):
    o3 = pytest.importorskip("e3nn.o3")
    lmax = 5
    p = random_input((30, 3), torch.float64, device="cpu")
    x = random_input((7, num_coefficients(lmax)), torch.float64, device="cpu")
    y_e3nn = o3.spherical_harmonics(list(range(lmax + 1)), p, normalize=True, normalization=normalization)
    ours = spherical.from_e3nn(x, lmax, normalization)
    torch.testing.assert_close(ours @ spherical_harmonics(lmax, p).T, x @ y_e3nn.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(spherical.to_e3nn(ours, lmax, normalization), x, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(\.\.\., 36\)"):
        spherical.to_e3nn(x[:, :25], lmax, normalization)
    with pytest.raises(ValueError, match="normalization"):
        spherical.from_e3nn(x, lmax, "unit")


def test_gaunt_coefficients_bad_degrees():
    with pytest.raises(ValueError, match="l1max"):
        gaunt_coefficients(-1, 2, 2)
    with pytest.raises(ValueError, match="lmax_out"):
        gaunt_coefficients(1, 2, 2.0)
