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
`tl.dot`); padded lanes are masked on load and store. Rows longer than 8192 take two
passes of the same kernel: the inner factor over contiguous rows, then the outer factor
over a strided axis, in place (twice the memory traffic: for those lengths the CUDA
kernel, which keeps one register per element, is the fast path).

Precision: the matrices hold 0 and ±1, exact in every dot type, so only the data needs
care. float64 dots in float64. float32 data is split into a TF32-exact high part and the
remainder (two TF32 dots: about 2^-20 relative error instead of TF32's 2^-11); float16
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

from fastspec.hadamard import hadamard_block, sylvester

MAX_FUSED_N = 2**13
"""Rows up to this length take one pass. A program holds its whole tile in registers
(about six per element with the split parts and the accumulator): 8192 elements fit 16
warps without spilling on sm_90, 16384 do not (ptxas, see tests/test_fwht_triton_sm90.py)."""
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
    if MODE == 1:
        hi = (x.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)  # 10-bit mantissa
        lo = tl.where(hi == x, 0.0, x - hi)
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
def fwht_kernel(
    x_ptr, out_ptr, ma_ptr, mb_ptr, mc_ptr,
    numel, scale,
    stride_r, stride_a, stride_b, stride_c,
    programs_per_group, group_stride, program_stride,
    R: tl.constexpr, A_TRUE: tl.constexpr, B_TRUE: tl.constexpr, C_TRUE: tl.constexpr,
    A: tl.constexpr, B: tl.constexpr, C: tl.constexpr,
    APPLY_A: tl.constexpr, APPLY_B: tl.constexpr, APPLY_C: tl.constexpr,
    MODE: tl.constexpr,
):
    """One (R, A, B, C) tile per program: R independent rows, each an (A, B, C) tile
    (see the module docstring). MODE: 0 float64, 1 float32 (split TF32), 2 float16 and
    bfloat16 (split bfloat16)."""
    pid = tl.program_id(0).to(tl.int64)
    base = (pid // programs_per_group) * group_stride + (pid % programs_per_group) * program_stride
    r = tl.arange(0, R)[:, None, None, None]
    a = tl.arange(0, A)[None, :, None, None]
    b = tl.arange(0, B)[None, None, :, None]
    c = tl.arange(0, C)[None, None, None, :]
    offs = r * stride_r + a * stride_a + b * stride_b + c * stride_c
    mask = (a < A_TRUE) & (b < B_TRUE) & (c < C_TRUE) & (base + offs < numel)
    x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float64 if MODE == 0 else tl.float32)
    x = _stage(x, mc_ptr, R, A, B, C, APPLY_C, MODE)  # (R, C, A, B)
    x = _stage(x, mb_ptr, R, C, A, B, APPLY_B, MODE)  # (R, B, C, A)
    x = _stage(x, ma_ptr, R, B, C, A, APPLY_A, MODE)  # (R, A, B, C)
    tl.store(out_ptr + base + offs, (x * scale).to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- planning
# A factor is ("h", 2) for one Sylvester bit or ("h", m) for a base block; factor lists
# run from the least significant up.


@dataclasses.dataclass(frozen=True)
class _Axis:
    factors: tuple  # least significant first; () for an axis of size 1
    stride: int

    @property
    def applied(self) -> bool:
        return bool(self.factors)

    @property
    def true(self) -> int:
        return math.prod(size for _, size in self.factors)

    @property
    def padded(self) -> int:
        size = triton.next_power_of_2(self.true)
        return max(size, 16) if self.applied else size


@dataclasses.dataclass(frozen=True)
class _Pass:
    a: _Axis
    b: _Axis
    c: _Axis
    row: int = 0  # contiguous passes: the length of the rows this pass transforms
    rows: int = 1  # R: rows (strided pass: columns) one program takes, ...
    row_stride: int = 0  # ... and their stride
    programs_per_group: int = 1  # strided pass: programs per row, ...
    group_stride: int = 0  # ... the row length, ...
    program_stride: int = 0  # ... and the columns one program covers


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
    return (("h", 2),) * bits + ((("h", m),) if m > 1 else ())


@functools.lru_cache(maxsize=None)
def _plan(m: int, p: int, n: int) -> tuple[_Pass, ...]:
    """Passes for rows of n = m·p (m = 1 or a base order, p a power of two)."""
    if n <= MAX_FUSED_N:
        a, b, c = _split_axes(_factors(m, p.bit_length() - 1), 1)
        rows = _rows_per_program(a, b, c)
        return (_Pass(a, b, c, row=n, rows=rows, row_stride=n),)
    inner = min(p, MAX_FUSED_N) if m > 1 else min(MAX_FUSED_N, n // 16)
    first = _plan(1, inner, inner)[0]
    a, b, c = _split_axes(_factors(m, (p // inner).bit_length() - 1), inner)
    columns = _rows_per_program(a, b, c)
    strided = _Pass(a, b, c, rows=columns, row_stride=1, programs_per_group=inner // columns,
                    group_stride=n, program_stride=columns)
    return (first, strided)


_DOT_DTYPE = {torch.float64: torch.float64, torch.float32: torch.float32,
              torch.float16: torch.bfloat16, torch.bfloat16: torch.bfloat16}
_MODE = {torch.float64: 0, torch.float32: 1, torch.float16: 2, torch.bfloat16: 2}


@functools.lru_cache(maxsize=256)
def _axis_matrix(axis: _Axis, left: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The padded (S, S) matrix of an axis: Kronecker product of its factors, most
    significant first; transposed when it multiplies from the left."""
    mat = torch.ones(1, 1, dtype=torch.float64)
    for _, size in reversed(axis.factors if axis.applied else ()):
        mat = torch.kron(mat, sylvester(2) if size == 2 else hadamard_block(size))
    if left:
        mat = mat.T
    padded = torch.zeros(axis.padded, axis.padded, dtype=torch.float64)
    padded[: axis.true, : axis.true] = mat
    return padded.to(dtype=dtype, device=device).contiguous()


def kernel_calls(x: torch.Tensor, out: torch.Tensor, scale: float, m: int, p: int):
    """The launches that transform x into out: a list of (grid, args, meta) for
    ``fwht_kernel[grid](*args, **meta)`` (also used to compile them ahead of time)."""
    calls = []
    for i, step in enumerate(_plan(m, p, x.shape[-1])):
        a, b, c = step.a, step.b, step.c
        mats = [_axis_matrix(ax, left, _DOT_DTYPE[x.dtype], x.device) for ax, left in ((a, True), (b, True), (c, False))]
        if step.programs_per_group > 1:
            grid = (x.numel() // step.group_stride * step.programs_per_group,)
        else:
            grid = (triton.cdiv(x.numel(), step.rows * step.row),)
            step = dataclasses.replace(step, group_stride=step.rows * step.row)
        args = (
            x if i == 0 else out, out, *mats, x.numel(), scale if i == 0 else 1.0,
            step.row_stride, a.stride, b.stride, c.stride,
            step.programs_per_group, step.group_stride, step.program_stride,
        )
        volume = step.rows * a.padded * b.padded * c.padded
        meta = dict(
            R=step.rows, A_TRUE=a.true, B_TRUE=b.true, C_TRUE=c.true, A=a.padded, B=b.padded, C=c.padded,
            APPLY_A=a.applied, APPLY_B=b.applied, APPLY_C=c.applied, MODE=_MODE[x.dtype],
            num_warps=min(16, max(4, volume // 512)),
        )
        calls.append((grid, args, meta))
    return calls


def fwht(x: torch.Tensor, scale: float, m: int, p: int) -> torch.Tensor:
    """(x @ (H_m ⊗ H_p)) * scale along the last dim of a contiguous x (float16, bfloat16,
    float32 or float64) with x.shape[-1] = m·p, m = 1 or a base order, p a power of two."""
    out = torch.empty_like(x)
    if x.numel():
        for grid, args, meta in kernel_calls(x, out, scale, m, p):
            fwht_kernel[grid](*args, **meta)
    return out
