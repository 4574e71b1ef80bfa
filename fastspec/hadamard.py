"""Hadamard matrices and the transform sizes fastspec supports.

The FWHT of length n multiplies by ``H_n = H_m ⊗ H_p`` with ``n = m·p``: ``H_p``
(p = 2^k) is Sylvester's matrix in natural order (``scipy.linalg.hadamard``) and ``H_m``
is the block of order m, where m = 1 or a *base order* ``m = o·2^j`` (o odd > 1, j ≥ 2,
m ≤ MAX_BASE_ORDER) that this module can build (:func:`base_orders`).

The canonical rule (fixed: a block never changes between releases). For ``n = o·2^e``
with o odd, o = 1 gives Sylvester's matrix (m = 1). Otherwise m = o·2^j for the
smallest j ≥ 2 such that a block of order m ≤ MAX_BASE_ORDER is built here, and
``H_n = H_m ⊗ H_(2^(e-j))``; n is unsupported if there is none or j > e. The block of
order m is the first of these constructions that applies:

1. Paley II (Paley 1933): m = 2(q+1) for a prime power q ≡ 1 (mod 4). With the
   symmetric conference matrix ``C = [[0, 1ᵀ], [1, Q]]``,
   ``H = C ⊗ [[1, -1], [-1, -1]] + I ⊗ [[1, 1], [1, -1]]``: symmetric, so ``H² = m I``.
2. Paley I (Paley 1933): m = q+1 for a prime power q ≡ 3 (mod 4). With the skew
   conference matrix ``S = [[0, 1ᵀ], [-1, Q]]``, ``H = I + S``: skew-Hadamard,
   ``H + Hᵀ = 2I`` (not symmetric).
3. A Kronecker product ``H_a ⊗ H_b`` (a·b = m) of two smaller buildable orders (powers
   of two or base orders): a symmetric product (both factors symmetric) if there is one,
   then the largest a.
4. The table: Williamson's array (Williamson 1944) of four symmetric circulants A, B, C, D
   of order o = m/4 (``X[i, j] = x[(j - i) mod o]`` from the first row x),
   ``H = [[A, B, C, D], [-B, A, -D, C], [-C, D, A, -B], [-D, -C, B, A]]`` (not symmetric).

Q is the Jacobsthal matrix ``Q[i, j] = χ(x_j - x_i)`` over GF(q), χ the quadratic
character and x_i the element numbered i. GF(q), q = p^e, is F_p[t]/(f): the integer x
stands for ``c_0 + c_1 t + … + c_(e-1) t^(e-1)`` where c_0 c_1 … c_(e-1) are the base-p
digits of x, most significant first, and f is the first monic irreducible
``t^e + a_(e-1) t^(e-1) + … + a_0`` in lexicographic order of (a_0, …, a_(e-1)).

This keeps fastspec 0.1's blocks bit for bit: 12, 20 and 28 are Paley II with q = 5, 9
(GF(9) = F_3[i]/(i² + 1), a + b·i numbered 3a + b) and 13, and ``H_40 = H_20 ⊗ H_2``, so
n = 40·2^k is ``H_20 ⊗ H_(2^(k+1))`` as before.

``H_n Hᵀ_n = n I`` for every n. ``H_n`` is symmetric exactly when its block is
(:func:`is_symmetric`): Sylvester, Paley II and products of symmetric blocks; there the
transform is its own inverse up to 1/n.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import numpy as np
import torch

MAX_N = 2**20
"""Largest supported transform length (every supported n is at most this)."""
MAX_BASE_ORDER = 1024
"""Largest base block m: the GPU kernels multiply the m-axis as a dense ±1 matrix."""

# Williamson quadruples: o -> (first rows of A, B, C, D as '+'/'-' strings, source), for
# orders 4·o no Paley or Kronecker construction reaches. Each is four symmetric ±1
# sequences with periodic autocorrelations summing to 4o at shift 0 and to 0 elsewhere
# (A² + B² + C² + D² = 4o·I), checked in tests/test_hadamard.py.
# 23, 29: as tabulated in SageMath (sage/combinat/matrices/hadamard_matrix.py,
#   williamson_type_quadruples_smallcases), which cites M. Hall Jr., Combinatorial
#   Theory, 2nd ed., Wiley. Order 92 was first found by Baumert, Golomb and Hall,
#   "Discovery of an Hadamard matrix of order 92", Bull. AMS 68 (1962).
# 39: the same SageMath table, citing S. London, "Constructing new Turyn type
#   sequences, T-sequences and Hadamard matrices", PhD thesis, UIC 2013.
# 43: row 0 of had.172.will in N. J. A. Sloane's library of Hadamard matrices
#   (http://neilsloane.com/hadamard/), as copied in QuaRot's fake_quant/hadamard_utils.py;
#   that matrix is Williamson's array above built from these rows (checked on its rows
#   0, 47, 105 and 171). SageMath's table (citing Hall) has the same rows as D, C, B, A.
_WILLIAMSON = {
    23: (("++---+---+-++-+---+---+", "+-++-++--++++++--++-++-",
          "+++---++-+-++-+-++---++", "+++-+++-+------+-+++-++"),
         "Hall, Combinatorial Theory"),
    29: (("+++---++--+-+----+-+--++---++", "+-+---++--+-++++++-+--++---+-",
          "++++-++-+---++++++---+-++-+++", "++--+--+-+++-++++-+++-+--+--+"),
         "Hall, Combinatorial Theory"),
    39: (("+++--+-+-----+--++----++--+-----+-+--++", "+++--++-+---+-+--+----+--+-+---+-++--++",
          "++++---+--++----+-+--+-+----++--+---+++", "+---++-+-+-----+++-++-+++-----+-+-++---"),
         "London 2013"),
    43: (("+---++--++++-+-+++-++--++-+++-+-++++--++---", "++-++++++----+-+--++-++-++--+-+----++++++-+",
          "+++-+-++--+-+-++++-+----+-++++-+-+--++-+-++", "++---++++-+--+--++--------++--+--+-++++---+"),
         "Sloane's library, had.172.will"),
}


# ----------------------------------------------------------------------------- GF(q)


def _prime_power(q: int) -> tuple[int, int] | None:
    """(p, e) with q = p^e, p prime and e ≥ 1; None if q is not a prime power."""
    if q < 2:
        return None
    p = next((d for d in range(2, math.isqrt(q) + 1) if q % d == 0), q)
    e = 0
    while q % p == 0:
        q //= p
        e += 1
    return (p, e) if q == 1 else None


def _divides(g: list[int], f: list[int], p: int) -> bool:
    """Whether the monic g divides f over F_p (coefficient lists, constant term first)."""
    r = list(f)
    for k in range(len(f) - len(g), -1, -1):
        c = r[k + len(g) - 1]
        for i, gi in enumerate(g):
            r[k + i] = (r[k + i] - c * gi) % p
    return not any(r)


def _first_irreducible(p: int, e: int) -> tuple[int, ...]:
    """(a_0, …, a_(e-1)) of the first monic irreducible t^e + a_(e-1) t^(e-1) + … + a_0
    over F_p in lexicographic order of (a_0, …, a_(e-1))."""
    factors = [list(low) + [1] for d in range(1, e // 2 + 1) for low in itertools.product(range(p), repeat=d)]
    return next(low for low in itertools.product(range(p), repeat=e)
                if not any(_divides(g, list(low) + [1], p) for g in factors))


class GaloisField:
    """GF(q) for an odd prime power q = p^e, table-driven (tables of q·e entries).

    Elements are the integers 0..q-1 (the polynomial each stands for and the modulus are
    in the module docstring: 0 is 0, p^(e-1) is 1, and for e = 1 the integers mod p). The
    operations take integer arrays (or ints) of any broadcastable shapes and return int64
    arrays of the broadcast shape.
    """

    def __init__(self, q: int):
        pe = _prime_power(q)
        if pe is None or pe[0] == 2:
            raise ValueError(f"GaloisField: q must be an odd prime power, got {q}")
        self.q = q
        self.p, self.e = pe
        self.modulus = np.array(_first_irreducible(self.p, self.e))
        """(a_0, …, a_(e-1)): the field is F_p[t]/(t^e + a_(e-1) t^(e-1) + … + a_0)."""
        place = self.p ** np.arange(self.e - 1, -1, -1)  # value of digit c_k
        self._digits = np.arange(q)[:, None] // place % self.p  # (q, e): c_0 … c_(e-1)
        nonzero = np.arange(1, q)
        self._chi = np.full(q, -1, dtype=np.int64)
        self._chi[0] = 0
        self._chi[self.mul(nonzero, nonzero)] = 1

    def _number(self, digits: np.ndarray) -> np.ndarray:
        x = digits[..., 0] % self.p
        for k in range(1, self.e):
            x = x * self.p + digits[..., k] % self.p
        return x

    def add(self, a, b) -> np.ndarray:
        return self._number(self._digits[a] + self._digits[b])

    def sub(self, a, b) -> np.ndarray:
        return self._number(self._digits[a] - self._digits[b])

    def mul(self, a, b) -> np.ndarray:
        da, db = self._digits[a], self._digits[b]
        e = self.e
        prod = np.zeros(np.broadcast_shapes(da.shape, db.shape)[:-1] + (2 * e - 1,), dtype=np.int64)
        for i, j in itertools.product(range(e), repeat=2):
            prod[..., i + j] += da[..., i] * db[..., j]
        for k in range(2 * e - 2, e - 1, -1):  # t^k = t^(k-e)·t^e ≡ -t^(k-e)·(a_0 + … + a_(e-1) t^(e-1))
            prod[..., k - e:k] -= prod[..., k, None] % self.p * self.modulus
        return self._number(prod[..., :e])

    def chi(self, a) -> np.ndarray:
        """Quadratic character: 0 at 0, 1 on nonzero squares, -1 elsewhere."""
        return self._chi[a]


def _jacobsthal(q: int) -> np.ndarray:
    """(q, q) int64 Jacobsthal matrix Q[i, j] = χ(x_j - x_i) over GF(q), q an odd prime power."""
    field = GaloisField(q)
    x = np.arange(q)
    return field.chi(field.sub(x[None, :], x[:, None]))


# ----------------------------------------------------------------------------- constructions


def _conference(q: int) -> np.ndarray:
    """(q+1, q+1) conference matrix [[0, 1ᵀ], [χ(-1)·1, Q]] over GF(q): C Cᵀ = q I, symmetric
    for q ≡ 1 (mod 4) and skew for q ≡ 3 (mod 4) (Paley 1933)."""
    c = np.zeros((q + 1, q + 1), dtype=np.int64)
    c[0, 1:] = 1
    c[1:, 0] = 1 if q % 4 == 1 else -1
    c[1:, 1:] = _jacobsthal(q)
    return c


def _paley1(q: int) -> np.ndarray:
    """Skew-Hadamard matrix I + S of order q+1, q ≡ 3 (mod 4) (Paley's construction I)."""
    return np.eye(q + 1, dtype=np.int64) + _conference(q)


def _paley2(q: int) -> np.ndarray:
    """Symmetric Hadamard matrix of order 2(q+1), q ≡ 1 (mod 4) (Paley's construction II)."""
    c = _conference(q)
    return np.kron(c, [[1, -1], [-1, -1]]) + np.kron(np.eye(q + 1, dtype=np.int64), [[1, 1], [1, -1]])


def _williamson(rows: tuple[str, str, str, str]) -> np.ndarray:
    """Williamson's array of the four circulants with these first rows (order 4·len(row))."""
    o = len(rows[0])
    shift = (np.arange(o)[None, :] - np.arange(o)[:, None]) % o
    a, b, c, d = (np.array([1 if s == "+" else -1 for s in row])[shift] for row in rows)
    return np.block([[a, b, c, d], [-b, a, -d, c], [-c, d, a, -b], [-d, -c, b, a]])


def sylvester(n: int) -> torch.Tensor:
    """Sylvester Hadamard matrix of order n = 2^k (float64), H[i, j] = (-1)^popcount(i & j)."""
    idx = torch.arange(n)
    bits = torch.bitwise_and(idx[:, None], idx[None, :])
    parity = torch.zeros_like(bits)
    while bool(bits.any()):
        parity ^= bits & 1
        bits = bits >> 1
    return (1 - 2 * parity).to(torch.float64)


@dataclasses.dataclass(frozen=True)
class _Recipe:
    kind: str  # "paley2" (args (q,)), "paley1" ((q,)), "kron" ((a, b)), "williamson" ((o,))
    args: tuple
    symmetric: bool


def _power_str(q: int) -> str:
    p, e = _prime_power(q)
    return f"{p}^{e}" if e > 1 else str(p)


def _recipe(m: int, symmetric: dict[int, bool]) -> _Recipe | None:
    """How to build order m (the first construction that applies), given the symmetry of
    every smaller buildable order; None if none applies."""
    if (m // 2 - 1) % 4 == 1 and _prime_power(m // 2 - 1):
        return _Recipe("paley2", (m // 2 - 1,), True)
    if (m - 1) % 4 == 3 and _prime_power(m - 1):
        return _Recipe("paley1", (m - 1,), False)
    pairs = [(a, m // a) for a in range(m // 2, 1, -1) if m % a == 0 and a in symmetric and m // a in symmetric]
    if pairs:
        a, b = max(pairs, key=lambda ab: (symmetric[ab[0]] and symmetric[ab[1]], ab[0]))
        return _Recipe("kron", (a, b), symmetric[a] and symmetric[b])
    if m // 4 in _WILLIAMSON:
        return _Recipe("williamson", (m // 4,), False)
    return None


@functools.lru_cache(maxsize=None)
def _recipes() -> dict[int, _Recipe]:
    """Every base order, ascending, with its recipe."""
    symmetric = {2**k: True for k in range(1, MAX_BASE_ORDER.bit_length())}  # Sylvester factors
    recipes = {}
    for m in range(4, MAX_BASE_ORDER + 1, 4):
        recipe = None if m & (m - 1) == 0 else _recipe(m, symmetric)
        if recipe is not None:
            recipes[m] = recipe
            symmetric[m] = recipe.symmetric
    return recipes


@functools.lru_cache(maxsize=None)
def _smallest_block() -> dict[int, int]:
    """Odd part o -> the smallest base order o·2^j: the block of every n = o·2^e, e ≥ j."""
    smallest = {}
    for m in _recipes():  # ascending
        smallest.setdefault(m // (m & -m), m)
    return smallest


def _recipe_of(m: int, caller: str) -> _Recipe | None:
    """The recipe of base order m, None for m = 1; ValueError for anything else."""
    if m == 1:
        return None
    recipe = _recipes().get(m)
    if recipe is None:
        orders = base_orders()
        raise ValueError(
            f"{caller}: m must be 1 or a base order ({', '.join(map(str, orders[:6]))}, …, {orders[-1]}: "
            f"fastspec.hadamard.base_orders()), got {m}"
        )
    return recipe


@functools.lru_cache(maxsize=16)
def _block(m: int) -> torch.Tensor:
    """Block of order m: 1, a power of two (Sylvester) or a base order (float64, CPU)."""
    if m & (m - 1) == 0:
        return sylvester(m)
    recipe = _recipes()[m]
    if recipe.kind == "kron":
        return torch.kron(_block(recipe.args[0]), _block(recipe.args[1]))
    if recipe.kind == "williamson":
        block = _williamson(_WILLIAMSON[recipe.args[0]][0])
    else:
        block = (_paley2 if recipe.kind == "paley2" else _paley1)(*recipe.args)
    return torch.from_numpy(block.astype(np.float64))


# ----------------------------------------------------------------------------- public API


def base_orders() -> tuple[int, ...]:
    """Every base order m = o·2^j (o odd > 1, j ≥ 2, m ≤ MAX_BASE_ORDER) built here, ascending."""
    return tuple(_recipes())


def construction(m: int) -> str:
    """How the block of order m (1 or a base order) is built, e.g. 'Paley I, q = 7^3'."""
    recipe = _recipe_of(m, "construction")
    if recipe is None:
        return "trivial, H_1 = [1]"
    if recipe.kind == "kron":
        return "H_{} ⊗ H_{}".format(*recipe.args)
    if recipe.kind == "williamson":
        (o,) = recipe.args
        return f"Williamson, order {o} ({_WILLIAMSON[o][1]})"
    return f"Paley {'II' if recipe.kind == 'paley2' else 'I'}, q = {_power_str(recipe.args[0])}"


def is_symmetric(m: int) -> bool:
    """Whether the block of order m (1 or a base order) is symmetric."""
    recipe = _recipe_of(m, "is_symmetric")
    return recipe is None or recipe.symmetric


def hadamard_block(m: int) -> torch.Tensor:
    """The canonical block of order m (1 or a base order): (m, m) float64 on the CPU, ±1
    entries, H Hᵀ = m I. Cached and shared: do not modify it in place."""
    _recipe_of(m, "hadamard_block")
    return _block(m)


def decompose(n: int) -> tuple[int, int] | None:
    """(m, p) with n = m·p by the canonical rule (m = 1 or a base order, p a power of two);
    None if n is unsupported."""
    if not isinstance(n, int) or n < 1 or n > MAX_N:
        return None
    o = n // (n & -n)
    if o == 1:
        return 1, n
    m = _smallest_block().get(o)
    if m is None or n % m:
        return None
    return m, n // m


@functools.lru_cache(maxsize=None)
def supported_sizes() -> tuple[int, ...]:
    """All supported transform lengths, ascending."""
    sizes = {2**k for k in range(MAX_N.bit_length())}
    for m in _smallest_block().values():
        sizes.update(m << k for k in range(MAX_N.bit_length()) if m << k <= MAX_N)
    return tuple(sorted(sizes))


def _why_unsupported(n) -> str:
    if not isinstance(n, int) or n < 1:
        return "n must be a positive integer"
    if n > MAX_N:
        return f"longer than {MAX_N}"
    o = n // (n & -n)
    if n % 4:
        return "a Hadamard matrix of order n > 2 needs 4 | n"
    m = _smallest_block().get(o)
    if m is None:
        return f"no block of order {o}·2^j ≤ {MAX_BASE_ORDER} is built for the odd part {o}"
    return f"the smallest block for the odd part {o} has order {m}, so n must be a multiple of {m}"


def check_size(n: int) -> tuple[int, int]:
    """(m, p) for a supported n (see decompose); otherwise ValueError saying why, what is
    supported and the nearest supported sizes."""
    mp = decompose(n)
    if mp is None:
        sizes = supported_sizes()
        below = [s for s in sizes if s < n]
        above = [s for s in sizes if s > n]
        near = ", ".join(str(s) for s in (below[-1:] + above[:1]))
        orders = base_orders()
        raise ValueError(
            f"fwht: unsupported length n={n} ({_why_unsupported(n)}); supported are n = 2^k and "
            f"n = m·2^k for a base order m ({', '.join(map(str, orders[:6]))}, …, {orders[-1]}: "
            f"fastspec.hadamard.base_orders()), up to {MAX_N}; nearest supported: {near}"
        )
    return mp


@functools.lru_cache(maxsize=64)
def _hadamard_cpu64(n: int) -> torch.Tensor:
    m, p = check_size(n)
    return torch.kron(_block(m), sylvester(p)) if m > 1 else sylvester(p)


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Dense (n, n) matrix H_n = H_m ⊗ H_p that ``fwht`` multiplies by (without scale).

    Entries are ±1 and H_n H_nᵀ = n·I; symmetric when ``is_symmetric(m)``. n must be a
    supported size of at most 16384.
    """
    if n > 2**14:
        raise ValueError(f"hadamard_matrix: n={n} would be a dense {n}x{n} matrix; at most 16384")
    return _hadamard_cpu64(n).to(dtype=dtype, device=device)
