"""Drop-in for fast-hadamard-transform 1.1.0 (Dao-AILab) on fastspec's kernels.

Switch by import::

    from fast_hadamard_transform import hadamard_transform                          # before
    from fast_hadamard_transform.fast_hadamard_transform_interface import hadamard_transform_12N
    from fastspec.compat.fast_hadamard_transform import hadamard_transform, hadamard_transform_12N

``hadamard_transform(x, scale=1.0)``: each row of x (..., dim) is zero-padded to n, the
next power of two ≥ dim (and ≥ 8), multiplied by Sylvester's H_n (``scipy.linalg.hadamard``),
scaled and cut back to dim.

``hadamard_transform_{m}N(x, scale=1.0)`` for m in 12, 20, 28, 40: dim is rounded up to a
multiple of 4m, then zero-padded to n = m·2^k, the smallest such length; each padded row v
becomes (B_m ⊗ H_(n/m)) v, scaled, cut back to dim. B_m is the peer's matrix
(:func:`base_matrix`), its index the most significant one of v, and it multiplies from the
left (out[i] = Σ_j B[i][j] v[j], as the peer's generated kernels do): in row form
x @ (B_mᵀ ⊗ H_(n/m)). So only dim = m·2^k with k ≥ 2 is unpadded: ``hadamard_transform_12N``
of a dim-12 row is the first 12 entries of a length-48 transform, not B_12 x.

float16, bfloat16 and float32 are computed in float32 and returned in x's dtype, as the
peer does. When dim was padded the result is a view of the padded result, as the peer's.

Where this module does more than the peer: any device (the peer takes CUDA tensors only),
every fastspec backend (``backend=``, keyword-only), float64 (computed in float64), padded
lengths up to 2^20 (the peer stops at dim 32768, and at m·1024 for ``_{m}N``), empty batches.

Where it differs, because the peer is wrong there:

- Gradients of ``hadamard_transform_20N/28N/40N``: the peer's backward runs the forward
  transform again, assuming a symmetric matrix; B_20, B_28 and B_40 are not symmetric, so
  it returns the gradient of x @ (B_m ⊗ H) instead. Here the gradient is exact (the
  transposed transform). For ``hadamard_transform`` and ``_12N`` (symmetric) the two agree.
- Padded length n = 8m (dim from 4m+1 to 8m): the peer's dispatch tests ``log_N == 2``
  twice and launches no kernel, returning uninitialised memory. Here it is the transform
  the padding rule defines.
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from fastspec.hadamard import MAX_N
from fastspec.ops.fwht import FLOAT_DTYPES, choose_backend, fwht_op, register_block

__all__ = ["hadamard_transform", "hadamard_transform_12N", "hadamard_transform_20N",
           "hadamard_transform_28N", "hadamard_transform_40N"]

BASE_ORDERS = (12, 20, 28, 40)

# The peer's base matrices, one row of signs per line: csrc/code_gen.py of
# Dao-AILab/fast-hadamard-transform (had_12_paley, had_20_will, had_28_will, had_40_tpal,
# the four its main() generates kernels from).
_ROWS = {
    12: """
        +-++++++++++ --+-+-+-+-+- +++-++----++ +---+--+-++- +++++-++---- +-+---+--+-+
        ++--+++-++-- +--++---+--+ ++----+++-++ +--+-++---+- ++++----+++- +-+--+-++---
    """,
    20: """
        +----+----++--++-++- -+----+---+++---+-++ --+----+---+++-+-+-+ ---+----+---+++++-+-
        ----+----++--++-++-+ -+++++-----+--+++--+ +-+++-+---+-+--+++-- ++-++--+---+-+--+++-
        +++-+---+---+-+--+++ ++++-----++--+-+--++ --++-+-++-+-----++++ ---++-+-++-+---+-+++
        +---++-+-+--+--++-++ ++---++-+----+-+++-+ -++---++-+----+++++- -+--+--++-+----+----
        +-+-----++-+----+--- -+-+-+---+--+----+-- --+-+++------+----+- +--+--++------+----+
    """,
    28: """
        +------++----++-+--+-+--++-- -+-----+++-----+-+--+-+--++- --+-----+++---+-+-+----+--++
        ---+-----+++---+-+-+-+--+--+ ----+-----+++---+-+-+++--+-- -----+-----++++--+-+--++--+-
        ------++----++-+--+-+--++--+ --++++-+-------++--+++-+--+- ---++++-+-----+-++--+-+-+--+
        +---+++--+----++-++--+-+-+-- ++---++---+----++-++--+-+-+- +++---+----+----++-++--+-+-+
        ++++--------+-+--++-++--+-+- -++++--------+++--++--+--+-+ -+-++-++--++--+--------++++-
        +-+-++--+--++--+--------++++ -+-+-++--+--++--+----+---+++ +-+-+-++--+--+---+---++---++
        ++-+-+-++--+------+--+++---+ -++-+-+-++--+------+-++++--- +-++-+---++--+------+-++++--
        -++--++-+-++-+++----++------ +-++--++-+-++-+++-----+----- ++-++---+-+-++-+++-----+----
        -++-++-+-+-+-+--+++-----+--- --++-++++-+-+----+++-----+-- +--++-+-++-+-+----+++-----+-
        ++--++-+-++-+-+----++------+
    """,
    40: """
        +-------------------+------------------- ++-++----+-+-++++--+++-++----+-+-++++--+
        +++-++----+-+-++++--+++-++----+-+-++++-- +-++-++----+-+-++++-+-++-++----+-+-++++-
        +--++-++----+-+-+++++--++-++----+-+-++++ ++--++-++----+-+-+++++--++-++----+-+-+++
        +++--++-++----+-+-+++++--++-++----+-+-++ ++++--++-++----+-+-+++++--++-++----+-+-+
        +++++--++-++----+-+-+++++--++-++----+-+- +-++++--++-++----+-++-++++--++-++----+-+
        ++-++++--++-++----+-++-++++--++-++----+- +-+-++++--++-++----++-+-++++--++-++----+
        ++-+-++++--++-++----++-+-++++--++-++---- +-+-+-++++--++-++---+-+-+-++++--++-++---
        +--+-+-++++--++-++--+--+-+-++++--++-++-- +---+-+-++++--++-++-+---+-+-++++--++-++-
        +----+-+-++++--++-+++----+-+-++++--++-++ ++----+-+-++++--++-+++----+-+-++++--++-+
        +++----+-+-++++--++-+++----+-+-++++--++- +-++----+-+-++++--+++-++----+-+-++++--++
        +--------------------+++++++++++++++++++ ++-++----+-+-++++--+--+--++++-+-+----++-
        +++-++----+-+-++++-----+--++++-+-+----++ +-++-++----+-+-++++--+--+--++++-+-+----+
        +--++-++----+-+-++++-++--+--++++-+-+---- ++--++-++----+-+-+++--++--+--++++-+-+---
        +++--++-++----+-+-++---++--+--++++-+-+-- ++++--++-++----+-+-+----++--+--++++-+-+-
        +++++--++-++----+-+------++--+--++++-+-+ +-++++--++-++----+-+-+----++--+--++++-+-
        ++-++++--++-++----+---+----++--+--++++-+ +-+-++++--++-++----+-+-+----++--+--++++-
        ++-+-++++--++-++------+-+----++--+--++++ +-+-+-++++--++-++----+-+-+----++--+--+++
        +--+-+-++++--++-++---++-+-+----++--+--++ +---+-+-++++--++-++--+++-+-+----++--+--+
        +----+-+-++++--++-++-++++-+-+----++--+-- ++----+-+-++++--++-+--++++-+-+----++--+-
        +++----+-+-++++--++----++++-+-+----++--+ +-++----+-+-++++--++-+--++++-+-+----++--
    """,
}


def base_matrix(m: int) -> torch.Tensor:
    """The peer's base matrix B_m for ``hadamard_transform_{m}N``: (m, m) float64 of ±1,
    B Bᵀ = m·I; symmetric for m = 12 only."""
    if m not in _ROWS:
        raise ValueError(f"base_matrix: m must be one of {BASE_ORDERS}, got {m}")
    return torch.tensor([[1.0 if c == "+" else -1.0 for c in row] for row in _ROWS[m].split()],
                        dtype=torch.float64)


def block_name(m: int) -> str:
    """The name B_m is registered under with :func:`fastspec.ops.fwht.register_block`."""
    return f"fast_hadamard_transform.{m}"


for _m in BASE_ORDERS:
    register_block(block_name(_m), base_matrix(_m))


def _padded_length(dim: int, m: int) -> int:
    """The peer's row length: dim rounded up to a multiple of 8 (m = 1) or 4m, then to m·2^k."""
    multiple = 8 if m == 1 else 4 * m
    q = -(-dim // multiple) * multiple // m
    return m * (1 << (q - 1).bit_length())


def _transform(name: str, x: torch.Tensor, scale, m: int, backend: str) -> torch.Tensor:
    """Validate, zero-pad to the peer's length, run the fwht op (base B_m if m > 1), cut back."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: x must be float16, bfloat16 or float32 (or float64), got {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{name}: x must have at least one dimension (the transform runs along "
                         "the last), got a 0-dim tensor")
    if not isinstance(scale, numbers.Real):
        raise TypeError(f"{name}: scale must be a real number, got {type(scale).__name__}")
    dim = int(x.shape[-1])
    if dim == 0:
        raise ValueError(f"{name}: the last dim of x must be at least 1, got 0")
    n = _padded_length(dim, m)
    if n > MAX_N:
        peer_max = 32768 if m == 1 else m * 1024
        raise ValueError(f"{name}: dim={dim} pads to {n}; at most {MAX_N} here "
                         f"(fast-hadamard-transform itself takes dim <= {peer_max})")
    padded = F.pad(x, (0, n - dim)) if n != dim else x
    chosen = choose_backend(backend, x.device, x.dtype, n, m)
    # B_m multiplies each row from the left: in row form that is x @ B_mᵀ, so transpose.
    y = fwht_op(padded, float(scale), m > 1, block_name(m) if m > 1 else "", chosen)
    return y[..., :dim] if n != dim else y


def hadamard_transform(x: torch.Tensor, scale: float = 1.0, *, backend: str = "auto") -> torch.Tensor:
    """``(pad(x) @ H_n)[..., :dim] * scale``: x (..., dim) zero-padded to n, the next power
    of two ≥ dim (and ≥ 8), H_n Sylvester's (``scipy.linalg.hadamard(n)``).

    x: any float dtype, any device; returns (..., dim) in x's dtype. scale: a real number.
    backend: 'auto' | 'torch' | 'triton' | 'cuda' (as for :func:`fastspec.fwht`).
    Exact gradient; torch.compile works.
    """
    return _transform("hadamard_transform", x, scale, 1, backend)


def hadamard_transform_12N(x: torch.Tensor, scale: float = 1.0, *, backend: str = "auto") -> torch.Tensor:
    """``(pad(x) @ (B_12ᵀ ⊗ H_(n/12)))[..., :dim] * scale``, n = 12·2^k ≥ dim rounded up to
    a multiple of 48 (see the module docstring). x: (..., dim), any float dtype and device;
    returns (..., dim) in x's dtype. backend: as for :func:`hadamard_transform`."""
    return _transform("hadamard_transform_12N", x, scale, 12, backend)


def hadamard_transform_20N(x: torch.Tensor, scale: float = 1.0, *, backend: str = "auto") -> torch.Tensor:
    """As :func:`hadamard_transform_12N` with B_20, n = 20·2^k ≥ dim rounded up to a multiple
    of 80. The gradient is exact (the peer's is not: B_20 is not symmetric)."""
    return _transform("hadamard_transform_20N", x, scale, 20, backend)


def hadamard_transform_28N(x: torch.Tensor, scale: float = 1.0, *, backend: str = "auto") -> torch.Tensor:
    """As :func:`hadamard_transform_12N` with B_28, n = 28·2^k ≥ dim rounded up to a multiple
    of 112. The gradient is exact (the peer's is not: B_28 is not symmetric)."""
    return _transform("hadamard_transform_28N", x, scale, 28, backend)


def hadamard_transform_40N(x: torch.Tensor, scale: float = 1.0, *, backend: str = "auto") -> torch.Tensor:
    """As :func:`hadamard_transform_12N` with B_40, n = 40·2^k ≥ dim rounded up to a multiple
    of 160. The gradient is exact (the peer's is not: B_40 is not symmetric)."""
    return _transform("hadamard_transform_40N", x, scale, 40, backend)
