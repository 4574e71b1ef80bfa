"""Triton FWHT: the Hadamard transform as small matrix products on the tensor cores.

A row of length n = m·2^k is an (m, 2, 2, ..., 2) tensor and H_n = H_m ⊗ H_2 ⊗ ... ⊗ H_2.
Each program loads an (R, A, B, C) tile: R rows (one long row or several short ones),
each viewed as (A, B, C), and multiplies every axis by a small dense matrix, the
Kronecker product of the factors that fall on that axis:

    (R·A·B, C) @ M_C, rotate to (R, C, A, B);  (R·C·A, B) @ M_B, rotate;  (R·B·C, A) @ M_A, rotate

so each row is read once and written once, and every product is a plain 2-D dot with
the data on the left (no broadcast copies of the matrices in registers). Rows
never share a matrix: an identity-with-zeros factor would carry one row's NaN or Inf
into its neighbours as NaN. Axes are padded to powers of two (at least 16, the smallest
`tl.dot`); padded lanes are masked on load and store.

A tile holds at most 8192 elements (registers). Rows up to 2^15 are still transformed by
one program: tiles of the inner factor, a barrier, then tiles of the outer factor over a
strided axis, in place; the row stays in L2 in between, so DRAM sees one read and one
write. Longer rows take two launches of the same kernel (twice the DRAM traffic): rows
of up to 2^15 as above, then the outer factor (at least 16) over a strided axis.

Precision: the matrices hold 0 and ±1, exact in every dot type, so only the data needs
care. float64 dots in float64. float32 data is split into two TF32-exact parts (two TF32
dots: each element off by at most 2^-22 relative, instead of TF32's 2^-11); float16
and bfloat16 data are split into two bfloat16 parts (2^-17). Accumulation is float32
(float64 for float64), and the scale is applied once at the end in that precision.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import torch
import triton
import triton.language as tl

from fastspec.hadamard import sylvester

MAX_FUSED_N = 2**13
"""Rows up to this length are one tile. A program holds its whole tile in registers
(about six per element with the split parts and the accumulator): 8192 elements fit 16
warps without spilling on sm_90, 16384 do not (ptxas, see tests/test_fwht_triton_sm90.py)."""
MAX_ROW_N = 2**15
"""Rows up to this length are transformed by one program in two phases (tiles of the
inner factor, then of the outer), so the row is read from and written to DRAM once."""
_CHUNK = 4096
"""Target number of elements one program transforms."""
_MEMORY_COST = 32
"""Planner weight of one element's load+store against one multiply-add per element."""
_MAX_AXIS = 64
"""Largest padded axis. A program loads each axis matrix into registers: (64, 64) is 16
values a thread at 8 warps, (128, 128) spills."""


@triton.jit
def _split(x, MODE: tl.constexpr):
    """x (float32) = hi + lo with hi exact in the dot type; lo = 0 where x is ±inf."""
    if MODE == 1:  # TF32 keeps 10 mantissa bits: truncate for hi, round the rest to nearest
        hi = (x.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
        rest = tl.where(hi == x, 0.0, x - hi)
        lo = ((rest.to(tl.int32, bitcast=True) + 4096) & -8192).to(tl.float32, bitcast=True)
    else:
        hi = x.to(tl.bfloat16)
        hi32 = hi.to(tl.float32)
        lo = tl.where(hi32 == x, 0.0, x - hi32).to(tl.bfloat16)
    return hi, lo


@triton.jit
def _stage(x, m_ptr, R: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,
           APPLY: tl.constexpr, MODE: tl.constexpr):
    """x: (R, D0, D1, D2). Multiplies the last axis by the (D2, D2) matrix at m_ptr (if
    APPLY) and rotates that axis to the front: returns (R, D2, D0, D1)."""
    if APPLY:
        i = tl.arange(0, D2)
        mat = tl.load(m_ptr + i[:, None] * D2 + i[None, :])
        rows = tl.reshape(x, (R * D0 * D1, D2))
        if MODE == 0:
            y = tl.dot(rows, mat, out_dtype=tl.float64)
        else:
            hi, lo = _split(rows, MODE)
            y = tl.dot(hi, mat, input_precision="tf32", out_dtype=tl.float32)
            y = tl.dot(lo, mat, y, input_precision="tf32", out_dtype=tl.float32)
        x = tl.reshape(y, (R, D0, D1, D2))
    if D2 == 1:
        out = tl.reshape(x, (R, D2, D0, D1))
    else:
        out = tl.permute(x, (0, 3, 1, 2))
    return out


@triton.jit
def _tile(src_ptr, dst_ptr, base, numel, scale_hi, scale_lo, ma_ptr, mb_ptr, mc_ptr,
          stride_r, stride_a, stride_b, stride_c,
          R: tl.constexpr, A_TRUE: tl.constexpr, B_TRUE: tl.constexpr, C_TRUE: tl.constexpr,
          A: tl.constexpr, B: tl.constexpr, C: tl.constexpr,
          APPLY_A: tl.constexpr, APPLY_B: tl.constexpr, APPLY_C: tl.constexpr,
          MODE: tl.constexpr, CACHE: tl.constexpr):
    """Transforms the (R, A, B, C) tile at src_ptr + base into dst_ptr + base: R rows (or
    columns) each viewed as (A, B, C). MODE: 0 float64, 1 float32 (split TF32), 2 float16
    and bfloat16 (split bfloat16)."""
    r = tl.arange(0, R)[:, None, None, None]
    a = tl.arange(0, A)[None, :, None, None]
    b = tl.arange(0, B)[None, None, :, None]
    c = tl.arange(0, C)[None, None, None, :]
    offs = r * stride_r + a * stride_a + b * stride_b + c * stride_c
    mask = (a < A_TRUE) & (b < B_TRUE) & (c < C_TRUE) & (base + offs < numel)
    x = tl.load(src_ptr + base + offs, mask=mask, other=0.0, cache_modifier=CACHE)
    x = x.to(tl.float64 if MODE == 0 else tl.float32)
    x = _stage(x, mc_ptr, R, A, B, C, APPLY_C, MODE)  # (R, C, A, B)
    x = _stage(x, mb_ptr, R, C, A, B, APPLY_B, MODE)  # (R, B, C, A)
    x = _stage(x, ma_ptr, R, B, C, A, APPLY_A, MODE)  # (R, A, B, C)
    scale = tl.cast(scale_hi, x.dtype) + tl.cast(scale_lo, x.dtype)  # exact in float64, inf-safe
    tl.store(dst_ptr + base + offs, (x * scale).to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def fwht_kernel(
    src_ptr, out_ptr, numel, scale_hi, scale_lo,
    programs_per_group, group_stride, program_stride,
    ma1, mb1, mc1, sr1, sa1, sb1, sc1, step1,
    ma2, mb2, mc2, sr2, sa2, sb2, sc2, step2,
    T1: tl.constexpr, R1: tl.constexpr, A_TRUE1: tl.constexpr, B_TRUE1: tl.constexpr, C_TRUE1: tl.constexpr,
    A1: tl.constexpr, B1: tl.constexpr, C1: tl.constexpr,
    APPLY_A1: tl.constexpr, APPLY_B1: tl.constexpr, APPLY_C1: tl.constexpr,
    T2: tl.constexpr, R2: tl.constexpr, A_TRUE2: tl.constexpr, B_TRUE2: tl.constexpr, C_TRUE2: tl.constexpr,
    A2: tl.constexpr, B2: tl.constexpr, C2: tl.constexpr,
    APPLY_A2: tl.constexpr, APPLY_B2: tl.constexpr, APPLY_C2: tl.constexpr,
    MODE: tl.constexpr,
):
    """One program: T1 tiles of phase 1 (src -> out, scaled), then, if T2 > 0, T2 tiles
    of phase 2 (out -> out, in place) after a barrier. Phase 2 reads what other threads
    of this program wrote in phase 1: the barrier orders it, and the loads bypass L1."""
    pid = tl.program_id(0).to(tl.int64)
    base = (pid // programs_per_group) * group_stride + (pid % programs_per_group) * program_stride
    for t in range(T1):
        _tile(src_ptr, out_ptr, base + t * step1, numel, scale_hi, scale_lo, ma1, mb1, mc1, sr1, sa1, sb1, sc1,
              R1, A_TRUE1, B_TRUE1, C_TRUE1, A1, B1, C1, APPLY_A1, APPLY_B1, APPLY_C1, MODE, "")
    if T2 > 0:
        tl.debug_barrier()
        for t in range(T2):
            _tile(out_ptr, out_ptr, base + t * step2, numel, 1.0, 0.0, ma2, mb2, mc2, sr2, sa2, sb2, sc2,
                  R2, A_TRUE2, B_TRUE2, C_TRUE2, A2, B2, C2, APPLY_A2, APPLY_B2, APPLY_C2, MODE, ".cg")


# ----------------------------------------------------------------------------- planning
# A factor is 2 for one Sylvester bit or m for a base block; factor lists run from the
# least significant up, so an axis (a run of them) is H_(its size): a base block only
# ever stands at the top of a run.


@dataclasses.dataclass(frozen=True)
class _Axis:
    factors: tuple  # least significant first; () for an axis of size 1
    stride: int

    @property
    def applied(self) -> bool:
        return bool(self.factors)

    @property
    def true(self) -> int:
        return math.prod(self.factors)

    @property
    def padded(self) -> int:
        size = triton.next_power_of_2(self.true)
        return max(size, 16) if self.applied else size


@dataclasses.dataclass(frozen=True)
class _Phase:
    """Tiles of R rows (or columns) at stride row_stride, each row an (A, B, C) tile;
    one program's consecutive tiles lie tile_stride apart."""

    a: _Axis
    b: _Axis
    c: _Axis
    rows: int
    row_stride: int
    tiles: int = 1
    tile_stride: int = 0


@dataclasses.dataclass(frozen=True)
class _Launch:
    """One kernel launch: program pid starts at (pid // programs_per_group) * group_stride
    + (pid % programs_per_group) * program_stride and runs its phases (one or two)."""

    phases: tuple
    group_stride: int
    programs_per_group: int = 1
    program_stride: int = 0


def _cost(axes) -> float:
    """Relative time per element: padding waste × (memory + multiply-adds)."""
    waste = math.prod(ax.padded for ax in axes) / math.prod(ax.true for ax in axes)
    return waste * (_MEMORY_COST + sum(ax.padded for ax in axes if ax.applied))


def _split_axes(factors: tuple, unit: int) -> tuple[_Axis, _Axis, _Axis]:
    """Cheapest split of factors (least significant first) into axes (A, B, C) of padded
    size at most _MAX_AXIS; strides are in units of `unit` elements."""
    best = None
    for i in range(len(factors) + 1):
        for j in range(i, len(factors) + 1):
            c = _Axis(factors[:i], unit)
            b = _Axis(factors[i:j], unit * c.true)
            a = _Axis(factors[j:], unit * c.true * b.true)
            if max(a.padded, b.padded, c.padded) <= _MAX_AXIS and (best is None or _cost((a, b, c)) < best[0]):
                best = (_cost((a, b, c)), (a, b, c))
    return best[1]


def _rows_per_program(a: _Axis, b: _Axis, c: _Axis) -> int:
    """About _CHUNK padded elements a program, and enough rows that the M dimension of
    every dot (R times the other axes) reaches 16."""
    volume = a.padded * b.padded * c.padded
    rows = triton.next_power_of_2(max(1, _CHUNK // volume))
    for ax in (a, b, c):
        if ax.applied:
            rows = max(rows, 16 // min(16, volume // ax.padded))
    return rows


def _factors(m: int, bits: int) -> tuple:
    return (2,) * bits + ((m,) if m > 1 else ())


def _contiguous(m: int, p: int) -> _Phase:
    """Rows of m·p contiguous elements, R of them a tile."""
    a, b, c = _split_axes(_factors(m, p.bit_length() - 1), 1)
    rows = _rows_per_program(a, b, c)
    return _Phase(a, b, c, rows=rows, row_stride=m * p, tile_stride=rows * m * p)


def _strided(m: int, outer_bits: int, inner: int) -> _Phase:
    """The outer factor H_m ⊗ H_(2^outer_bits) of rows viewed as (outer, inner): tiles of
    R columns (stride 1), the outer axes at stride inner."""
    a, b, c = _split_axes(_factors(m, outer_bits), inner)
    columns = _rows_per_program(a, b, c)
    return _Phase(a, b, c, rows=columns, row_stride=1, tiles=inner // columns, tile_stride=columns)


@functools.lru_cache(maxsize=None)
def _plan(m: int, p: int, n: int) -> tuple[_Launch, ...]:
    """Kernel launches for rows of n = m·p (m = 1 or a base order, p a power of two).

    n ≤ MAX_FUSED_N: a grid over tiles of whole rows. Up to MAX_ROW_N: one program a row,
    inner factor then outer factor, the row staying in L2 in between. Longer: two
    launches, the inner factor (itself one of the above) over all rows, then the outer
    factor in place.
    """
    if n <= MAX_FUSED_N:
        phase = _contiguous(m, p)
        return (_Launch((phase,), group_stride=phase.tile_stride),)
    one_launch = n <= MAX_ROW_N
    limit = MAX_FUSED_N if one_launch else MAX_ROW_N
    inner = min(p, limit) if m > 1 else min(limit, n // 16)  # outer factor of at least 16
    outer = _strided(m, (p // inner).bit_length() - 1, inner)
    if one_launch:
        first = _contiguous(1, inner)
        inner_rows = n // inner  # m·2^j: a tile's R inner rows must divide it
        rows = min(first.rows, inner_rows & -inner_rows)
        first = dataclasses.replace(first, rows=rows, tiles=inner_rows // rows, tile_stride=rows * inner)
        return (_Launch((first, outer), group_stride=n),)
    (first,) = _plan(1, inner, inner)
    return (
        first,
        _Launch((dataclasses.replace(outer, tiles=1),), group_stride=n,
                programs_per_group=outer.tiles, program_stride=outer.tile_stride),
    )


_DOT_DTYPE = {torch.float64: torch.float64, torch.float32: torch.float32,
              torch.float16: torch.bfloat16, torch.bfloat16: torch.bfloat16}
_MODE = {torch.float64: 0, torch.float32: 1, torch.float16: 2, torch.bfloat16: 2}


@functools.lru_cache(maxsize=256)
def _axis_matrix(axis: _Axis, base, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (S, S) matrix of an axis, zero-padded: B ⊗ H_(2^j) if the axis holds the base
    block (its most significant factor), else H of its size. Every stage multiplies its
    axis from the right (it is rotated last first), so B is used as it is."""
    padded = torch.zeros(axis.padded, axis.padded, dtype=torch.float64)
    m = axis.factors[-1] if axis.factors and axis.factors[-1] > 2 else 1
    mat = sylvester(axis.true // m)
    padded[: axis.true, : axis.true] = torch.kron(base.matrix(), mat) if m > 1 else mat
    return padded.to(dtype=dtype, device=device)


def _phase_args(phase: _Phase, base, dtype: torch.dtype, device: torch.device):
    a, b, c = phase.a, phase.b, phase.c
    mats = [_axis_matrix(ax, base, _DOT_DTYPE[dtype], device) for ax in (a, b, c)]
    args = (*mats, phase.row_stride, a.stride, b.stride, c.stride, phase.tile_stride)
    meta = (phase.rows, a.true, b.true, c.true, a.padded, b.padded, c.padded, a.applied, b.applied, c.applied)
    return args, meta


_META = ("R", "A_TRUE", "B_TRUE", "C_TRUE", "A", "B", "C", "APPLY_A", "APPLY_B", "APPLY_C")


def _split_scale(scale: float) -> tuple[float, float]:
    """scale = hi + lo with both float32 (a launch passes Python floats as float32): the
    product x·hi + x·lo keeps float64 results within 2^-48 of x·scale."""
    hi = float(torch.tensor(scale, dtype=torch.float32))
    return hi, float(torch.tensor(scale - hi, dtype=torch.float32))


def kernel_calls(x: torch.Tensor, out: torch.Tensor, scale: float, p: int, base):
    """The launches that transform x into out, x @ (B ⊗ H_p) * scale with B of
    ``base`` (fastspec.ops.fwht.Base): a list of (grid, args, meta) for
    ``fwht_kernel[grid](*args, **meta)`` (also used to compile them ahead of time)."""
    calls = []
    for i, launch in enumerate(_plan(base.m, p, x.shape[-1])):
        phases = launch.phases
        first_args, first_meta = _phase_args(phases[0], base, x.dtype, x.device)
        second_args, second_meta = _phase_args(phases[-1], base, x.dtype, x.device)
        grid = (triton.cdiv(x.numel(), launch.group_stride) * launch.programs_per_group,)
        args = (x if i == 0 else out, out, x.numel(), *(_split_scale(scale) if i == 0 else (1.0, 0.0)),
                launch.programs_per_group, launch.group_stride, launch.program_stride,
                *first_args, *second_args)
        meta = {"T1": phases[0].tiles, "T2": phases[1].tiles if len(phases) > 1 else 0}
        meta |= {k + "1": v for k, v in zip(_META, first_meta, strict=True)}
        meta |= {k + "2": v for k, v in zip(_META, second_meta, strict=True)}
        volume = max(ph.rows * ph.a.padded * ph.b.padded * ph.c.padded for ph in phases)
        meta |= {"MODE": _MODE[x.dtype], "num_warps": min(16, max(4, volume // 512))}
        calls.append((grid, args, meta))
    return calls


def fwht(x: torch.Tensor, scale: float, p: int, base) -> torch.Tensor:
    """(x @ (B ⊗ H_p)) * scale along the last dim of a contiguous x (float16, bfloat16,
    float32 or float64), x.shape[-1] = m·p, B the (m, m) block of ``base``."""
    out = torch.empty_like(x)
    # A scale far outside float32's range would lose its low part: applied afterwards.
    in_range = scale == 0 or 2.0**-60 <= abs(scale) <= 2.0**60
    if x.numel():
        for grid, args, meta in kernel_calls(x, out, scale if in_range else 1.0, p, base):
            fwht_kernel[grid](*args, **meta)
        if not in_range:
            out.mul_(scale)
    return out
