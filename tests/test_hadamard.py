"""fastspec.hadamard: GF(q), the Hadamard blocks, the canonical rule and the supported sizes."""
import hashlib
import itertools
import re

import numpy as np
import pytest
import scipy.linalg
import torch

import fastspec
from fastspec.hadamard import (
    MAX_BASE_ORDER, MAX_N, GaloisField, _WILLIAMSON, base_orders, check_size, construction, decompose,
    hadamard_block, hadamard_matrix, is_symmetric, supported_sizes,
)
from fastspec.reference.fwht import fwht_dense, fwht_reference

from conftest import random_input

MODEL_WIDTHS = {  # MLP widths of released models -> canonical (m, p)
    11008: (172, 64),  # Llama-2-7B
    13824: (108, 128),  # Llama-2-13B, Qwen2.5-14B
    18944: (148, 128),  # Qwen2.5-7B
    8960: (140, 64),  # Qwen2.5-1.5B
    4864: (76, 64),  # Qwen2.5-0.5B
    2304: (36, 64),  # Gemma-2-2B
    9216: (36, 256),  # Gemma-2-2B
    27648: (108, 256),  # Qwen2.5-32B
}

# sha256 of (H > 0) as bytes (row-major bools). 12, 20, 28, 40: computed from fastspec
# 0.1.0's blocks, which must never change; the others freeze one block of each kind.
FROZEN_BLOCKS = {
    12: "14e09fbeafff04182b48b9045685676322fe50969eb6c090e2b9a672219d7649",
    20: "78265f133f5eeb50ee7203dce3f50644c3b2c28b6c01ee02e57a8c8d81e53fdf",
    28: "ab081cc8394e7b11dc469d345115cb92c3137f9b3a9e9768eed586d1fd93484b",
    40: "c60f704f47be22c3ed1db0bd82513501de19136faaaa56000458d9cf34604844",
    24: "f18e957402f8b5246cc5ed530e8a520a80115c6e54fadfb22598bbf6df336293",  # Paley I, q = 23
    36: "ac39d4bbba41c38315de05c2bab5b84eea177348c64bad43c6a49cebc5c9efac",  # Paley II, q = 17
    92: "a147f43c492cde213d6a6a2f50da0c57bfb389866f1f8d3af46b374df6e0281a",  # Williamson, order 23
    96: "07ef782c50866d59ce4fc2e5e02ee44d08ad0b223816621746c691531c5be50f",  # H_12 ⊗ H_8
    172: "ac825f9b6bbb0ae4f90e3b3578efc414c6ade55231ec45839f25e124446dd6ac",  # Williamson, order 43
    344: "94c6ebedb6a36ebd3070ef7f17c9d315b5bdda4584f90f69aa06214ea1167e68",  # Paley I, q = 7^3
    1020: "93ca6d67a84f516f61c9adfeda780dc8f180332e891e4b61949adffa29c9343f",  # Paley II, q = 509
}


def _gram(h: torch.Tensor) -> torch.Tensor:
    """H Hᵀ as int64, computed exactly in float32 (3x faster than an int32 matmul here): for
    ±1 entries every partial sum, in any order, is an integer of size at most n < 2^24."""
    h32 = h.to(torch.float32)
    return (h32 @ h32.T).to(torch.int64)


def _digest(h: torch.Tensor) -> str:
    return hashlib.sha256((h > 0).numpy().tobytes()).hexdigest()


# --------------------------------------------------------------------------- GF(q)


@pytest.mark.parametrize("q", [3, 9, 25, 27, 49, 121, 343])
def test_galois_field_axioms(q):
    field = GaloisField(q)
    x = np.arange(q)
    a, b = x[:, None], x[None, :]
    prod = field.mul(a, b)
    assert prod.shape == (q, q) and prod.min() >= 0 and prod.max() < q
    assert np.array_equal(prod, prod.T)
    one = field.p ** (field.e - 1)  # the polynomial 1: digits c_0 = 1, then zeros
    assert np.array_equal(prod[0], np.zeros(q)) and np.array_equal(prod[one], x)
    assert all(np.count_nonzero(row == one) == 1 for row in prod[1:])  # every a != 0 has one inverse
    total = field.add(a, b)
    assert np.array_equal(field.sub(total, b), np.broadcast_to(a, (q, q)))
    assert all(sorted(row) == list(range(q)) for row in total)  # (F, +) is a group
    rng = np.random.default_rng(q)
    u, v, w = rng.integers(0, q, size=(3, 4000))
    assert np.array_equal(field.mul(u, field.add(v, w)), field.add(field.mul(u, v), field.mul(u, w)))
    assert np.array_equal(field.mul(u, field.mul(v, w)), field.mul(field.mul(u, v), w))
    chi = field.chi(x)
    assert np.count_nonzero(chi == 1) == (q - 1) // 2 and chi[0] == 0
    assert np.array_equal(field.chi(prod), chi[:, None] * chi[None, :])  # χ is multiplicative


def test_galois_field_normalisation():
    """The modulus is the first monic irreducible in lexicographic order of (a_0, …, a_(e-1))."""
    assert tuple(GaloisField(9).modulus) == (1, 0)  # t² + 1: fastspec 0.1's GF(9) = F_3[i]
    assert tuple(GaloisField(27).modulus) == (1, 0, 2)  # t³ + 2t² + 1 (t³ + 1, t³ + t² + 1 have root 2 or 1)
    assert tuple(GaloisField(13).modulus) == (0,)
    gf7 = GaloisField(7)
    assert np.array_equal(gf7.mul(np.arange(7)[:, None], np.arange(7)), np.outer(range(7), range(7)) % 7)
    gf9 = GaloisField(9)  # x = 3·c_0 + c_1 is c_0 + c_1 t, so 1 = 3, t = 1 and t² = -1 = 6
    assert gf9.mul(1, 1) == 6 and gf9.mul(3, 3) == 3


@pytest.mark.parametrize("q", [0, 1, 4, 15, 1024])
def test_galois_field_rejects(q):
    with pytest.raises(ValueError, match=f"odd prime power, got {q}"):
        GaloisField(q)


# --------------------------------------------------------------------------- the blocks


@pytest.mark.parametrize("m", base_orders())
def test_base_block_is_hadamard(m):
    h = hadamard_block(m)
    assert h.shape == (m, m) and h.dtype == torch.float64 and h.device.type == "cpu"
    assert bool((h.abs() == 1).all())
    assert torch.equal(_gram(h), m * torch.eye(m, dtype=torch.int64))
    assert torch.equal(h, h.T) == is_symmetric(m)
    kind = construction(m)
    if kind.startswith("Paley I,"):
        assert torch.equal(h + h.T, 2 * torch.eye(m, dtype=torch.float64))  # skew-Hadamard
    if kind.startswith("Paley II,"):
        assert is_symmetric(m)
    if product := re.fullmatch(r"H_(\d+) ⊗ H_(\d+)", kind):
        a, b = (int(g) for g in product.groups())
        factors = [hadamard_block(f) if f in base_orders() else torch.from_numpy(scipy.linalg.hadamard(f) * 1.0)
                   for f in (a, b)]
        assert a * b == m and torch.equal(h, torch.kron(*factors))


def test_base_orders():
    orders = base_orders()
    assert list(orders) == sorted(set(orders)) and orders[0] == 12 and orders[-1] <= MAX_BASE_ORDER
    for m in orders:
        odd = m // (m & -m)
        assert odd > 1 and m % 4 == 0
    assert {92, 116, 156, 172, 344, 36, 24, 40} <= set(orders)
    assert not {4, 8, 16, 1024, 6, 18, 236, 472, 944} & set(orders)  # powers of two, 2·odd, odd part 59


@pytest.mark.parametrize("o", sorted(_WILLIAMSON))
def test_williamson_table(o):
    """Four symmetric ±1 sequences whose periodic autocorrelations sum to 4o·δ."""
    rows, _ = _WILLIAMSON[o]
    seqs = np.array([[1 if s == "+" else -1 for s in row] for row in rows])
    assert seqs.shape == (4, o) and all(set(row) <= {"+", "-"} for row in rows)
    assert np.array_equal(seqs[:, 1:], seqs[:, :0:-1])  # x[i] = x[-i]: symmetric circulants
    paf = sum(np.array([seq @ np.roll(seq, s) for s in range(o)]) for seq in seqs)
    assert paf[0] == 4 * o and not paf[1:].any()


def test_sloane_172_first_row():
    """Row 0 of had.172.will in Sloane's library, as a ±1 string."""
    row = "".join("+" if v > 0 else "-" for v in hadamard_block(172)[0].tolist())
    assert row == ("+---++--++++-+-+++-++--++-+++-+-++++--++---" "++-++++++----+-+--++-++-++--+-+----++++++-+"
                   "+++-+-++--+-+-++++-+----+-++++-+-+--++-+-++" "++---++++-+--+--++--------++--+--+-++++---+")


@pytest.mark.parametrize("m", FROZEN_BLOCKS)
def test_blocks_never_change(m):
    assert _digest(hadamard_block(m)) == FROZEN_BLOCKS[m]


def test_construction_strings():
    assert construction(12) == "Paley II, q = 5"
    assert construction(20) == "Paley II, q = 3^2"
    assert construction(28) == "Paley II, q = 13"
    assert construction(24) == "Paley I, q = 23"
    assert construction(344) == "Paley I, q = 7^3"
    assert construction(40) == "H_20 ⊗ H_2"
    assert construction(96) == "H_12 ⊗ H_8"  # symmetric, preferred to H_48 ⊗ H_2 (48: Paley I)
    assert construction(172) == "Williamson, order 43 (Sloane's library, had.172.will)"
    assert construction(92).startswith("Williamson, order 23 (")
    assert construction(1) == "trivial, H_1 = [1]"
    assert is_symmetric(1) and is_symmetric(12) and is_symmetric(96)
    assert not is_symmetric(24) and not is_symmetric(172)


@pytest.mark.parametrize("fn", [hadamard_block, construction, is_symmetric])
@pytest.mark.parametrize("m", [0, 2, 6, 16, 18, 236, 2048])
def test_bad_block_order(fn, m):
    with pytest.raises(ValueError, match=f"{fn.__name__}: m must be 1 or a base order .*base_orders\\(\\)\\), got {m}"):
        fn(m)


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("n", MODEL_WIDTHS)
def test_model_widths(n):
    assert decompose(n) == MODEL_WIDTHS[n] == check_size(n)
    assert n in supported_sizes()


@pytest.mark.parametrize("n,expect", [
    (1, (1, 1)), (2, (1, 2)), (2**20, (1, 2**20)),
    (12, (12, 1)), (24, (12, 2)), (40 * 8, (20, 16)),  # the smallest block of the odd part
    (92, (92, 1)), (23 * 16, (92, 4)), (43 * 8, (172, 2)), (172 * 4096, (172, 4096)),
    (44, (44, 1)), (36 * 2**14, (36, 2**14)), (1020, (1020, 1)), (255 * 2**12, (1020, 1024)),
    (3, None), (6, None), (18, None), (45, None), (236, None), (59 * 16, None), (257 * 4, None),
    (0, None), (-4, None), (2**20 + 2**19, None), (2**21, None), (12.0, None),
])
def test_decompose(n, expect):
    assert decompose(n) == expect


def test_supported_sizes_follow_the_rule():
    sizes = supported_sizes()
    assert list(sizes) == sorted(set(sizes)) and sizes[0] == 1 and sizes[-1] == MAX_N
    orders = set(base_orders())
    for n in sizes:
        m, p = decompose(n)
        assert m * p == n and p & (p - 1) == 0
        if m > 1:  # m = o·2^j with no smaller o·2^i (i ≥ 2) buildable
            odd = m // (m & -m)
            assert m in orders and not any(odd << i in orders for i in range(2, (m // odd).bit_length() - 1))
    assert [n for n in range(1, 4097) if decompose(n) is not None] == [n for n in sizes if n <= 4096]


@pytest.mark.parametrize("n,why,nearest", [
    (3, "needs 4 \\| n", "2, 4"),
    (6, "needs 4 \\| n", "4, 8"),
    (18, "needs 4 \\| n", "16, 20"),
    (45, "needs 4 \\| n", "44, 48"),
    (236, "no block of order 59·2\\^j ≤ 1024 is built for the odd part 59", "232, 240"),
    (2**20 + 2**19, "longer than 1048576", "1048576"),
])
def test_check_size_message(n, why, nearest):
    with pytest.raises(ValueError, match=f"fwht: unsupported length n={n} \\(.*{why}\\); supported are n = 2\\^k "
                                         f"and n = m·2\\^k for a base order m .*nearest supported: {nearest}$"):
        check_size(n)


def test_check_size_message_smallest_block():
    """A Hadamard matrix of order 4·o may exist, but the smallest block built here is larger."""
    for o in range(3, MAX_BASE_ORDER // 4, 2):
        m = decompose(o * 2**18)
        if m is not None and m[0] > 4 * o:
            with pytest.raises(ValueError, match=f"smallest block for the odd part {o} has order {m[0]}"):
                check_size(4 * o)


# --------------------------------------------------------------------------- dense matrices


@pytest.mark.parametrize("n", [2**k for k in range(11)])
def test_powers_of_two_are_scipy(n):
    assert torch.equal(hadamard_matrix(n), torch.from_numpy(scipy.linalg.hadamard(n) * 1.0))


@pytest.mark.parametrize("n", [12, 48, 40 * 8, 44 * 4, 92 * 2, 172 * 8, 344 * 2, 1020, 36 * 32])
def test_hadamard_matrix_is_block_kron_sylvester(n):
    h = hadamard_matrix(n)
    m, p = decompose(n)
    assert torch.equal(h, torch.kron(hadamard_block(m), torch.from_numpy(scipy.linalg.hadamard(p) * 1.0)))
    assert torch.equal(_gram(h), n * torch.eye(n, dtype=torch.int64))
    assert torch.equal(h, h.T) == is_symmetric(m)
    assert torch.equal(fastspec.hadamard_matrix(n, dtype=torch.float32), h.float())


@pytest.mark.parametrize("k", range(5))
def test_40k_is_20_times_2k(k):
    """n = 40·2^k reads as H_40 ⊗ H_(2^k) and as H_20 ⊗ H_(2^(k+1)): the same matrix."""
    n = 40 * 2**k
    expect = torch.kron(hadamard_block(40), torch.from_numpy(scipy.linalg.hadamard(2**k).astype(np.float64)))
    assert torch.equal(fastspec.hadamard_matrix(n), expect)


def test_hadamard_matrix_too_large():
    with pytest.raises(ValueError, match="at most 16384"):
        hadamard_matrix(2**15)
    with pytest.raises(ValueError, match="unsupported length n=236"):
        hadamard_matrix(236)


@pytest.mark.parametrize("n", [n for n in supported_sizes() if n <= 1024])
def test_reference_is_the_dense_product(n):
    """The reference (butterfly, then H_m on the leading index) multiplies by hadamard_matrix(n),
    in that orientation (x @ H_n) for the blocks that are not symmetric too."""
    x = random_input((3, n), torch.float64, device="cpu")
    torch.testing.assert_close(fwht_reference(x, 0.25), fwht_dense(x, 0.25), rtol=1e-12, atol=1e-12)


def _columns(n: int, cols: torch.Tensor, transpose: bool) -> torch.Tensor:
    """H_n[:, cols] (or H_nᵀ[:, cols]) from the definition H_n = H_m ⊗ H_p, built apart from
    hadamard_matrix and the reference: column j is the Kronecker product of the block's
    column j // p and the Sylvester column j % p, whose entries are (−1)^popcount(i & j)."""
    m, p = decompose(n)
    block = hadamard_block(m).T if transpose else hadamard_block(m)
    low = torch.arange(p, dtype=torch.int32)[:, None] & (cols % p).to(torch.int32)[None, :]
    for shift in (16, 8, 4, 2, 1):  # fold the bits: bit 0 ends up as the parity
        low ^= low >> shift
    sylvester = (1 - 2 * (low & 1)).to(torch.float64)
    return (block[:, cols // p][:, None, :] * sylvester[None, :, :]).reshape(n, len(cols))


_LARGE = [n for n in supported_sizes() if n > 1024]


@pytest.mark.parametrize("n", [n for n in _LARGE if n <= 2**14] + [MAX_N]
                         + [pytest.param(n, marks=pytest.mark.slow) for n in _LARGE[_LARGE.index(2**14) + 1::31]])
def test_reference_is_the_product_on_sampled_columns(n):
    """Every supported n from 1024 to 16384 (below: the dense test above), and a sample up
    to 2^20: the reference's output columns J equal x @ H_n[:, J] for 48 random columns and
    the first and last, both orientations."""
    gen = torch.Generator().manual_seed(n)
    cols = torch.cat([torch.tensor([0, n - 1]), torch.randint(0, n, (48,), generator=gen)])
    x = random_input((2, n), torch.float64, device="cpu")
    for transpose in (False, True):
        torch.testing.assert_close(fwht_reference(x, 0.5, transpose=transpose)[:, cols],
                                   0.5 * (x @ _columns(n, cols, transpose)), rtol=0, atol=1e-15 * n)


def test_jacobsthal_is_a_conference_core():
    """Q Qᵀ = q I - J and Q 1 = 0 for the largest fields used (q = 1019 prime, 3^6, 31^2)."""
    from fastspec.hadamard import _jacobsthal

    for q in (1019, 729, 961):
        jac = torch.from_numpy(_jacobsthal(q))
        assert torch.equal(_gram(jac), q * torch.eye(q, dtype=torch.int64) - 1)
        assert not jac.sum(1).any()
        assert torch.equal(jac.T, -jac if q % 4 == 3 else jac)
