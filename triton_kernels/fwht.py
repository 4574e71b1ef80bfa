"""Triton FWHT: the Hadamard transform as matrix products on the tensor cores.

A row of length n = m·p (p = 2^k) is multiplied by B ⊗ H_p, B the (m, m) base block.

Powers of two (m = 1), ``fwht_kernel``: a row is an (2, 2, ..., 2) tensor and H_p the
Kronecker product of H_2's. Each program loads an (R, A, B, C) tile: R rows (one long
row or several short ones), each viewed as (A, B, C), and multiplies every axis by a
small dense matrix, the Kronecker product of the factors that fall on that axis:

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

A base block (m > 1), ``fwht_base_kernel``: a row is an (m, p) matrix X and the result
Bᵀ X H_p. The m-axis is a tiled GEMM, (64 × K-chunk) tiles of Bᵀ against (K-chunk × 64)
tiles of X, accumulated over the whole of m (up to 1024): the one contraction with a
long axis, done first, on the raw input. Its epilogue multiplies the accumulator tile by
H of the low 2^4..2^6 bits of p (one dot, data on the left) before the store; the rest
of H_p is a pass of the power-of-two tiles above over the (m, p) sub-rows, in place
after a barrier (or a second launch for rows above 2^15). A factor of at most 2 left
over, or a p below 16, is folded into the GEMM's block instead (B ⊗ H_f).

Precision: the matrices hold 0 and ±1, exact in every dot type, so only the data needs
care. float64 dots in float64. float16 and bfloat16 input enters the first contraction
of a base block as it is (one dot, exact products); everywhere else the data is float32
and is split into bfloat16 parts, truncating all but the last part: three parts for
float32 data (exact: 8 + 8 + 8 bits), two for float16/bfloat16 data (2^-17 relative).
Accumulation is float32 (float64 for float64), and the scale, passed as two float32
halves, is applied once at the end in that precision.
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
"""Power-of-two rows up to this length are one tile. A program holds its whole tile in
registers (about six per element with the split parts and the accumulator): 8192 elements
fit 16 warps without spilling on sm_90, 16384 do not (ptxas, tests/test_fwht_triton_sm90.py)."""
MAX_ROW_N = 2**15
"""Rows up to this length are transformed by one program in two phases (tiles, a barrier,
tiles over a strided axis), so the row is read from and written to DRAM once."""
_CHUNK = 4096
"""Target number of elements one program transforms."""
_MEMORY_COST = 32
"""Planner weight of one element's load+store against one multiply-add per element."""
_MAX_AXIS = 64
"""Largest padded axis. A program loads each axis matrix into registers: (64, 64) is 16
values a thread at 8 warps, (128, 128) spills."""
_GEMM_TILE = 64
"""A base-block GEMM tile: 64 rows of Bᵀ (one Hopper warpgroup MMA) by 64 data columns."""
_MAX_FOLD = 2
"""Largest power-of-two factor folded into the GEMM's block rather than left to a pass."""
_MAX_FOLDED_ORDER = 128
"""For p < 16 the whole H_p is folded into the block while m·p stays at most this."""


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _dot(data, mat, acc, DATA_LEFT: tl.constexpr):
    if DATA_LEFT:
        acc = tl.dot(data, mat, acc, out_dtype=acc.dtype)
    else:
        acc = tl.dot(mat, data, acc, out_dtype=acc.dtype)
    return acc


@triton.jit
def _mma(data, mat, acc, acc_lo, DATA_LEFT: tl.constexpr, PARTS: tl.constexpr):
    """(acc, acc_lo) + data @ mat (DATA_LEFT) or mat @ data, mat exact in the dot type.

    PARTS 0: float64 data and dot; 1: 16-bit data, one dot; 2 or 3: float32 data split
    into bfloat16 parts, all but the last truncated (so none overflows), the last rounded
    (3 parts are exact). The first part's products go to acc: sums of numbers of 8
    significant bits stay (nearly) exact in float32, whatever the length of the sum or how
    the hardware rounds; the small parts go to acc_lo. ``where`` keeps ±inf in the first
    part alone (inf - inf would be NaN)."""
    if PARTS <= 1:
        acc = _dot(data, mat, acc, DATA_LEFT)
    else:
        part = (data.to(tl.int32, bitcast=True) & -65536).to(tl.float32, bitcast=True)
        acc = _dot(part.to(tl.bfloat16), mat, acc, DATA_LEFT)
        rest = tl.where(part == data, 0.0, data - part)
        if PARTS == 3:
            part = (rest.to(tl.int32, bitcast=True) & -65536).to(tl.float32, bitcast=True)
            acc_lo = _dot(part.to(tl.bfloat16), mat, acc_lo, DATA_LEFT)
            rest = tl.where(part == rest, 0.0, rest - part)
        acc_lo = _dot(rest.to(tl.bfloat16), mat, acc_lo, DATA_LEFT)
    return acc, acc_lo


@triton.jit
def _stage(x, m_ptr, R: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,
           APPLY: tl.constexpr, PARTS: tl.constexpr):
    """x: (R, D0, D1, D2). Multiplies the last axis by the (D2, D2) matrix at m_ptr (if
    APPLY) and rotates that axis to the front: returns (R, D2, D0, D1)."""
    if APPLY:
        i = tl.arange(0, D2)
        mat = tl.load(m_ptr + i[:, None] * D2 + i[None, :])
        rows = tl.reshape(x, (R * D0 * D1, D2))
        zeros = tl.zeros((R * D0 * D1, D2), x.dtype)
        y, y_lo = _mma(rows, mat, zeros, zeros, True, PARTS)
        if PARTS >= 2:
            y += y_lo
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
          PARTS: tl.constexpr, CACHE: tl.constexpr):
    """Transforms the (R, A, B, C) tile at src_ptr + base into dst_ptr + base: R rows (or
    columns) each viewed as (A, B, C); PARTS as in _mma for float32 data (0: float64)."""
    r = tl.arange(0, R)[:, None, None, None]
    a = tl.arange(0, A)[None, :, None, None]
    b = tl.arange(0, B)[None, None, :, None]
    c = tl.arange(0, C)[None, None, None, :]
    offs = r * stride_r + a * stride_a + b * stride_b + c * stride_c
    mask = (a < A_TRUE) & (b < B_TRUE) & (c < C_TRUE) & (base + offs < numel)
    x = tl.load(src_ptr + base + offs, mask=mask, other=0.0, cache_modifier=CACHE)
    x = x.to(tl.float64 if PARTS == 0 else tl.float32)
    x = _stage(x, mc_ptr, R, A, B, C, APPLY_C, PARTS)  # (R, C, A, B)
    x = _stage(x, mb_ptr, R, C, A, B, APPLY_B, PARTS)  # (R, B, C, A)
    x = _stage(x, ma_ptr, R, B, C, A, APPLY_A, PARTS)  # (R, A, B, C)
    tl.store(dst_ptr + base + offs, (x * _scale(scale_hi, scale_lo, x.dtype)).to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scale(scale_hi, scale_lo, dtype: tl.constexpr):
    """The scale from its two float32 halves (a float64 one keeps 48 bits; no inf·0)."""
    return tl.cast(scale_hi, dtype) + tl.cast(scale_lo, dtype)


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
    PARTS: tl.constexpr,
):
    """Powers of two. One program: T1 tiles of phase 1 (src -> out, scaled), then, if
    T2 > 0, T2 tiles of phase 2 (out -> out, in place) after a barrier. Phase 2 reads what
    other threads of this program wrote in phase 1: the barrier orders it, and the loads
    bypass L1."""
    pid = tl.program_id(0).to(tl.int64)
    base = (pid // programs_per_group) * group_stride + (pid % programs_per_group) * program_stride
    for t in range(T1):
        _tile(src_ptr, out_ptr, base + t * step1, numel, scale_hi, scale_lo, ma1, mb1, mc1, sr1, sa1, sb1, sc1,
              R1, A_TRUE1, B_TRUE1, C_TRUE1, A1, B1, C1, APPLY_A1, APPLY_B1, APPLY_C1, PARTS, "")
    if T2 > 0:
        tl.debug_barrier()
        for t in range(T2):
            _tile(out_ptr, out_ptr, base + t * step2, numel, 1.0, 0.0, ma2, mb2, mc2, sr2, sa2, sb2, sc2,
                  R2, A_TRUE2, B_TRUE2, C_TRUE2, A2, B2, C2, APPLY_A2, APPLY_B2, APPLY_C2, PARTS, ".cg")


@triton.jit
def _gemm_tile(src_ptr, dst_ptr, rows, row0, j0, scale_hi, scale_lo, bt_ptr, e_ptr,
               N: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, KSTRIDE: tl.constexpr,
               WJ: tl.constexpr, RW: tl.constexpr, MT: tl.constexpr, KC: tl.constexpr,
               EPILOGUE: tl.constexpr, PARTS1: tl.constexpr, PARTS2: tl.constexpr):
    """Y[c, col] = Σ_a Bᵀ[c, a] X[a, col] for the 64 columns col = (row r < RW, j < WJ) at
    (row0 + r)·N + a·KSTRIDE + j0 + j, c and a < K (Bᵀ at bt_ptr zero-padded to KP × KP),
    then (EPILOGUE) each row's WJ entries times the (WJ, WJ) matrix at e_ptr, scaled, stored."""
    w = tl.arange(0, RW * WJ)
    row = row0 + w // WJ
    col = row.to(tl.int64) * N + j0 + w % WJ
    col_ok = row < rows
    acc_type: tl.constexpr = tl.float64 if PARTS1 == 0 else tl.float32
    for m0 in range(0, KP, MT):
        c = m0 + tl.arange(0, MT)
        acc = tl.zeros((MT, RW * WJ), acc_type)
        acc_lo = tl.zeros((MT, RW * WJ), acc_type)
        for k0 in range(0, KP, KC):
            a = k0 + tl.arange(0, KC)
            x = tl.load(src_ptr + a[:, None] * KSTRIDE + col[None, :], mask=(a[:, None] < K) & col_ok[None, :], other=0.0)
            if PARTS1 == 0:
                x = x.to(tl.float64)
            elif PARTS1 > 1:
                x = x.to(tl.float32)
            bt = tl.load(bt_ptr + c[:, None] * KP + a[None, :])
            acc, acc_lo = _mma(x, bt, acc, acc_lo, False, PARTS1)
        if PARTS1 >= 2:
            acc += acc_lo
        if EPILOGUE:
            i = tl.arange(0, WJ)
            e = tl.load(e_ptr + i[:, None] * WJ + i[None, :])
            y = tl.reshape(acc, (MT * RW, WJ))
            zeros = tl.zeros((MT * RW, WJ), acc_type)
            y, y_lo = _mma(y, e, zeros, zeros, True, PARTS2)
            if PARTS2 >= 2:
                y += y_lo
            acc = tl.reshape(y, (MT, RW * WJ))
        out = (acc * _scale(scale_hi, scale_lo, acc_type)).to(dst_ptr.dtype.element_ty)
        tl.store(dst_ptr + c[:, None] * KSTRIDE + col[None, :], out, mask=(c[:, None] < K) & col_ok[None, :])


@triton.jit
def fwht_base_kernel(
    src_ptr, out_ptr, rows, numel, scale_hi, scale_lo, bt_ptr, e_ptr,
    ma2, mb2, mc2, sr2, sa2, sb2, sc2, step2,
    N: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, KSTRIDE: tl.constexpr,
    WJ: tl.constexpr, RW: tl.constexpr, MT: tl.constexpr, KC: tl.constexpr,
    JT: tl.constexpr, PROGRAMS_PER_GROUP: tl.constexpr, EPILOGUE: tl.constexpr,
    PARTS1: tl.constexpr, PARTS2: tl.constexpr,
    T2: tl.constexpr, R2: tl.constexpr, A_TRUE2: tl.constexpr, B_TRUE2: tl.constexpr, C_TRUE2: tl.constexpr,
    A2: tl.constexpr, B2: tl.constexpr, C2: tl.constexpr,
    APPLY_A2: tl.constexpr, APPLY_B2: tl.constexpr, APPLY_C2: tl.constexpr,
):
    """A base block. Program pid takes RW rows from (pid // PROGRAMS_PER_GROUP)·RW and the
    JT column tiles (WJ wide, at j0 = tile·WJ) from (pid % PROGRAMS_PER_GROUP)·JT: the GEMM
    of _gemm_tile, src -> out, scaled. Then, if T2 > 0, after a barrier, T2 power-of-two
    tiles (as in fwht_kernel) over its rows, out -> out in place."""
    pid = tl.program_id(0)
    row0 = (pid // PROGRAMS_PER_GROUP) * RW
    for t in range(JT):
        j0 = ((pid % PROGRAMS_PER_GROUP) * JT + t) * WJ
        _gemm_tile(src_ptr, out_ptr, rows, row0, j0, scale_hi, scale_lo, bt_ptr, e_ptr,
                   N, K, KP, KSTRIDE, WJ, RW, MT, KC, EPILOGUE, PARTS1, PARTS2)
    if T2 > 0:
        tl.debug_barrier()
        base = row0.to(tl.int64) * N
        for t in range(T2):
            _tile(out_ptr, out_ptr, base + t * step2, numel, 1.0, 0.0, ma2, mb2, mc2, sr2, sa2, sb2, sc2,
                  R2, A_TRUE2, B_TRUE2, C_TRUE2, A2, B2, C2, APPLY_A2, APPLY_B2, APPLY_C2, PARTS2, ".cg")


# ----------------------------------------------------------------------------- planning
# Power-of-two tiles: a factor is one Sylvester bit, an axis a run of them (its size).


@dataclasses.dataclass(frozen=True)
class _Axis:
    bits: int  # log2 of its size; an axis of size 1 is not applied
    stride: int

    @property
    def applied(self) -> bool:
        return self.bits > 0

    @property
    def true(self) -> int:
        return 2**self.bits

    @property
    def padded(self) -> int:
        return max(self.true, 16) if self.applied else 1


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
    """One power-of-two launch: program pid starts at (pid // programs_per_group) *
    group_stride + (pid % programs_per_group) * program_stride and runs its phases."""

    phases: tuple
    group_stride: int
    programs_per_group: int = 1
    program_stride: int = 0


@dataclasses.dataclass(frozen=True)
class _Gemm:
    """The base block's GEMM on rows viewed as (k, kstride): block order k = m·fold
    (B ⊗ H_fold), column tiles of rw rows × wj entries, and, if epilogue, H_wj (wj >= 16)
    on each tile row before the store."""

    m: int
    fold: int
    kstride: int
    wj: int
    epilogue: bool

    @property
    def k(self) -> int:
        return self.m * self.fold

    @property
    def rw(self) -> int:
        return _GEMM_TILE // self.wj

    @property
    def tiles_per_row(self) -> int:
        return self.kstride // self.wj


@dataclasses.dataclass(frozen=True)
class _BaseLaunch:
    """One base-block launch: the GEMM, then (phase, if any) power-of-two tiles over the
    same rows after a barrier; `split` programs share a row group's column tiles."""

    gemm: _Gemm
    phase: _Phase | None
    split: int = 1


def _cost(axes) -> float:
    """Relative time per element: padding waste × (memory + multiply-adds)."""
    waste = math.prod(ax.padded for ax in axes) / math.prod(ax.true for ax in axes)
    return waste * (_MEMORY_COST + sum(ax.padded for ax in axes if ax.applied))


def _split_axes(bits: int, unit: int) -> tuple[_Axis, _Axis, _Axis]:
    """Cheapest split of H_(2^bits) into axes (A, B, C) of padded size at most _MAX_AXIS
    (C least significant); strides are in units of `unit` elements."""
    best = None
    for i in range(bits + 1):
        for j in range(i, bits + 1):
            c = _Axis(i, unit)
            b = _Axis(j - i, unit * c.true)
            a = _Axis(bits - j, unit * c.true * b.true)
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


def _contiguous(p: int) -> _Phase:
    """Rows of p contiguous elements, R of them a tile."""
    a, b, c = _split_axes(p.bit_length() - 1, 1)
    rows = _rows_per_program(a, b, c)
    return _Phase(a, b, c, rows=rows, row_stride=p, tile_stride=rows * p)


def _strided(outer: int, inner: int) -> _Phase:
    """The outer factor H_outer of rows viewed as (outer, inner): tiles of R columns
    (stride 1; at least 16, for 16-byte accesses), the outer axes at stride inner."""
    a, b, c = _split_axes(outer.bit_length() - 1, inner)
    columns = min(max(16, _rows_per_program(a, b, c)), inner)
    return _Phase(a, b, c, rows=columns, row_stride=1, tiles=inner // columns, tile_stride=columns)


def _tiles_over(phase: _Phase, count: int, length: int) -> _Phase:
    """`phase` over `count` consecutive rows of `length` as one program's tiles (R rows
    each, R dividing count)."""
    rows = min(phase.rows, count & -count)
    return dataclasses.replace(phase, rows=rows, tiles=count // rows, tile_stride=rows * length)


def _outer_launch(outer: _Phase, length: int) -> _Launch:
    """A launch of `outer` (a _strided phase) over every row of `length`, one tile a program."""
    return _Launch((dataclasses.replace(outer, tiles=1),), group_stride=length,
                   programs_per_group=outer.tiles, program_stride=outer.tile_stride)


@functools.lru_cache(maxsize=None)
def _plan_pow2(p: int) -> tuple[_Launch, ...]:
    """Launches for rows of p = 2^k.

    p ≤ MAX_FUSED_N: a grid over tiles of whole rows. Up to MAX_ROW_N: one program a row,
    inner factor then outer factor, the row staying in L2 in between. Longer: two
    launches, the inner factor (itself one of the above) over all rows, then the outer
    factor in place.
    """
    if p <= MAX_FUSED_N:
        phase = _contiguous(p)
        return (_Launch((phase,), group_stride=phase.tile_stride),)
    inner = min(MAX_FUSED_N, p // 16) if p <= MAX_ROW_N else min(MAX_ROW_N, p // 16)
    outer = _strided(p // inner, inner)
    if p <= MAX_ROW_N:
        first = _tiles_over(_contiguous(inner), p // inner, inner)
        return (_Launch((first, outer), group_stride=p),)
    (first,) = _plan_pow2(inner)
    return (first, _outer_launch(outer, p))


@functools.lru_cache(maxsize=None)
def _plan_base(m: int, p: int) -> tuple:
    """Launches for rows of n = m·p, m > 1.

    p < 16: H_p folded into the GEMM's block while m·p ≤ _MAX_FOLDED_ORDER, else a pass
    over the contiguous sub-rows of p. p ≥ 16: the GEMM's epilogue takes the low 2^4..2^6
    bits of H_p, a factor of at most _MAX_FOLD left over is folded into the block, a larger
    one is a pass over the (m, p) sub-rows as columns of stride 64, all in one program up
    to n = MAX_ROW_N. Longer rows: the GEMM alone, then H_p as for powers of two on the
    sub-rows of p, in place.
    """
    if p < 16:
        fold = p if m * p <= _MAX_FOLDED_ORDER else 1
        gemm = _Gemm(m, fold, kstride=p // fold, wj=p // fold, epilogue=False)
        phase = None if fold == p else _tiles_over(_contiguous(p), gemm.rw * m, p)
        return (_BaseLaunch(gemm, phase),)
    wj = min(p, 64)
    rest = p // wj
    if rest <= _MAX_FOLD:
        return (_BaseLaunch(_Gemm(m, rest, kstride=wj, wj=wj, epilogue=True), None),)
    if m * p <= MAX_ROW_N:
        outer = _strided(rest, wj)
        assert outer.tiles == 1, outer  # rest ≤ 32 here: one tile covers a sub-row
        gemm = _Gemm(m, 1, kstride=p, wj=wj, epilogue=True)
        return (_BaseLaunch(gemm, dataclasses.replace(outer, tiles=m, tile_stride=p)),)
    gemm = _Gemm(m, 1, kstride=p, wj=wj, epilogue=False)
    return (_BaseLaunch(gemm, None, split=gemm.tiles_per_row), *_plan_pow2(p))


# ----------------------------------------------------------------------------- launches

_PARTS = {torch.float64: 0, torch.float32: 3, torch.float16: 2, torch.bfloat16: 2}
"""Parts of the float32 data in a dot (_mma): 0 means float64."""


def _dot_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.bfloat16


@functools.lru_cache(maxsize=256)
def _padded_matrix(mat_key, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(size, size) zero-padded: `mat_key` is ("H", order) for Sylvester's matrix or
    ("B", base, fold, transposed) for (B ⊗ H_fold) or its transpose."""
    if mat_key[0] == "H":
        mat = sylvester(mat_key[1])
    else:
        _, base, fold, transposed = mat_key
        mat = torch.kron(base.matrix(), sylvester(fold))
        mat = mat.T if transposed else mat
    out = torch.zeros(size, size, dtype=torch.float64)
    out[: mat.shape[0], : mat.shape[0]] = mat
    return out.to(dtype=dtype, device=device)


def _phase_args(phase: _Phase, dtype: torch.dtype, device: torch.device):
    a, b, c = phase.a, phase.b, phase.c
    mats = [_padded_matrix(("H", ax.true), ax.padded, _dot_dtype(dtype), device) for ax in (a, b, c)]
    args = (*mats, phase.row_stride, a.stride, b.stride, c.stride, phase.tile_stride)
    meta = (phase.rows, a.true, b.true, c.true, a.padded, b.padded, c.padded, a.applied, b.applied, c.applied)
    return args, meta


_META = ("R", "A_TRUE", "B_TRUE", "C_TRUE", "A", "B", "C", "APPLY_A", "APPLY_B", "APPLY_C")


def _num_warps(phases) -> int:
    volume = max(ph.rows * ph.a.padded * ph.b.padded * ph.c.padded for ph in phases)
    return min(16, max(4, volume // 512))


def _pow2_call(launch: _Launch, src, out, scale_parts, dtype, device):
    phases = launch.phases
    first_args, first_meta = _phase_args(phases[0], dtype, device)
    second_args, second_meta = _phase_args(phases[-1], dtype, device)
    grid = (triton.cdiv(out.numel(), launch.group_stride) * launch.programs_per_group,)
    args = (src, out, out.numel(), *scale_parts, launch.programs_per_group, launch.group_stride,
            launch.program_stride, *first_args, *second_args)
    meta = {"T1": phases[0].tiles, "T2": phases[1].tiles if len(phases) > 1 else 0}
    meta |= {k + "1": v for k, v in zip(_META, first_meta, strict=True)}
    meta |= {k + "2": v for k, v in zip(_META, second_meta, strict=True)}
    meta |= {"PARTS": _PARTS[dtype], "num_warps": _num_warps(phases)}
    return fwht_kernel, grid, args, meta


def _base_call(launch: _BaseLaunch, base, src, out, scale_parts, dtype, device):
    gemm, n = launch.gemm, out.shape[-1]
    kp = triton.cdiv(gemm.k, _GEMM_TILE) * _GEMM_TILE if gemm.k > 32 else max(16, triton.next_power_of_2(gemm.k))
    # The GEMM multiplies Bᵀ from the left: its first operand is the block transposed.
    bt = _padded_matrix(("B", base, gemm.fold, True), kp, dtype if dtype == torch.float16 else _dot_dtype(dtype), device)
    e = _padded_matrix(("H", gemm.wj), gemm.wj, _dot_dtype(dtype), device)
    phase = launch.phase
    second_args, second_meta = _phase_args(phase or _contiguous(1), dtype, device)
    rows = out.numel() // n if n else 0
    groups = triton.cdiv(rows, gemm.rw)
    args = (src, out, rows, out.numel(), *scale_parts, bt, e, *second_args)
    meta = {"N": n, "K": gemm.k, "KP": kp, "KSTRIDE": gemm.kstride, "WJ": gemm.wj, "RW": gemm.rw,
            "MT": min(_GEMM_TILE, kp), "KC": min(32, kp), "JT": gemm.tiles_per_row // launch.split,
            "PROGRAMS_PER_GROUP": launch.split, "EPILOGUE": gemm.epilogue,
            "PARTS1": 1 if dtype in (torch.float16, torch.bfloat16) else _PARTS[dtype], "PARTS2": _PARTS[dtype],
            "T2": phase.tiles if phase else 0}
    meta |= {k + "2": v for k, v in zip(_META, second_meta, strict=True)}
    meta["num_warps"] = 4
    return fwht_base_kernel, (groups * launch.split,), args, meta


def _split_scale(scale: float) -> tuple[float, float]:
    """scale = hi + lo with both float32 (a launch passes Python floats as float32): the
    kernels rebuild it in float64, within 2^-48 of scale."""
    hi = float(torch.tensor(scale, dtype=torch.float32))
    return hi, float(torch.tensor(scale - hi, dtype=torch.float32))


def kernel_calls(x: torch.Tensor, out: torch.Tensor, scale: float, p: int, base):
    """The launches that transform x into out, x @ (B ⊗ H_p) * scale with B of
    ``base`` (fastspec.ops.fwht.Base): a list of (kernel, grid, args, meta) for
    ``kernel[grid](*args, **meta)`` (also used to compile them ahead of time)."""
    calls = []
    plan = _plan_pow2(p) if base.m == 1 else _plan_base(base.m, p)
    for i, launch in enumerate(plan):
        src, parts = (x, _split_scale(scale)) if i == 0 else (out, (1.0, 0.0))
        if isinstance(launch, _BaseLaunch):
            calls.append(_base_call(launch, base, src, out, parts, x.dtype, x.device))
        else:
            calls.append(_pow2_call(launch, src, out, parts, x.dtype, x.device))
    return calls


def fwht(x: torch.Tensor, scale: float, p: int, base) -> torch.Tensor:
    """(x @ (B ⊗ H_p)) * scale along the last dim of a contiguous x (float16, bfloat16,
    float32 or float64), x.shape[-1] = m·p, B the (m, m) block of ``base``."""
    out = torch.empty_like(x)
    # A scale far outside float32's range would lose its low part: applied afterwards.
    in_range = scale == 0 or 2.0**-60 <= abs(scale) <= 2.0**60
    if x.numel():
        for kernel, grid, args, meta in kernel_calls(x, out, scale if in_range else 1.0, p, base):
            kernel[grid](*args, **meta)
        if not in_range:
            out.mul_(scale)
    return out
