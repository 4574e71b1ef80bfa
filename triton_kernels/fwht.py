"""Triton FWHT: the Hadamard transform as small matrix products on the tensor cores.

A row of length n = m·2^k is an (m, 2, 2, ..., 2) tensor and H_n = H_m ⊗ H_2 ⊗ ... ⊗ H_2.
Each program loads R rows (one long row, or several short ones), views each row as a 3-D tile
(A, B, C), and multiplies every axis by a small dense matrix (the Kronecker product of
the factors that fall on that axis, identity for axes that only enumerate rows):

    stage C:  (A·B, C) @ M_C        stage B:  M_Bᵀ @ (A, B, C) (batched over A)
    stage A:  M_Aᵀ @ (A, B·C)

so each row is read once and written once. Axes are padded to powers of two (at least
16, the smallest `tl.dot`); padded lanes are masked on load and store. Rows longer than
2^15 take two passes of the same kernel: the inner 2^15-or-less factor over contiguous
rows, then the outer factor over a strided axis (in place).

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

MAX_FUSED_N = 2**15
"""Rows up to this length are transformed in a single pass."""
_CHUNK = 4096
"""Target number of elements one program transforms."""
_MEMORY_COST = 32
"""Planner weight of one element's load+store against one multiply-add per element."""


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
def _matmul(lhs, rhs, DATA_IS_LHS: tl.constexpr, MODE: tl.constexpr):
    """lhs @ rhs where one side is data (float32/float64) and the other a 0/±1 matrix."""
    if MODE == 0:
        return tl.dot(lhs, rhs, out_dtype=tl.float64)
    if DATA_IS_LHS:
        hi, lo = _split(lhs, MODE)
        acc = tl.dot(hi, rhs, input_precision="tf32", out_dtype=tl.float32)
        return tl.dot(lo, rhs, acc, input_precision="tf32", out_dtype=tl.float32)
    hi, lo = _split(rhs, MODE)
    acc = tl.dot(lhs, hi, input_precision="tf32", out_dtype=tl.float32)
    return tl.dot(lhs, lo, acc, input_precision="tf32", out_dtype=tl.float32)


@triton.jit
def _load_matrix(ptr, S: tl.constexpr):
    i = tl.arange(0, S)
    return tl.load(ptr + i[:, None] * S + i[None, :])


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
    acc_type = tl.float64 if MODE == 0 else tl.float32
    x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(acc_type)
    if APPLY_C:
        y = _matmul(tl.reshape(x, (R * A * B, C)), _load_matrix(mc_ptr, C), True, MODE)
        x = tl.reshape(y, (R, A, B, C))
    if APPLY_B:
        mbt = tl.broadcast_to(_load_matrix(mb_ptr, B)[None, :, :], (R * A, B, B))
        x = tl.reshape(_matmul(mbt, tl.reshape(x, (R * A, B, C)), False, MODE), (R, A, B, C))
    if APPLY_A:
        mat = tl.broadcast_to(_load_matrix(ma_ptr, A)[None, :, :], (R, A, A))
        x = tl.reshape(_matmul(mat, tl.reshape(x, (R, A, B * C)), False, MODE), (R, A, B, C))
    tl.store(out_ptr + base + offs, (x * scale).to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- planning
# A factor is ("h", 2) for one Sylvester bit or ("h", m) for a base block; factor lists
# run from the least significant up. Rows get their own tile dimension R: a matrix that
# mixed rows (I ⊗ H) would multiply one row's NaN or Inf by zero into its neighbours.


@dataclasses.dataclass(frozen=True)
class _Axis:
    factors: tuple  # least significant first
    stride: int
    applied: bool = True

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
    row: int = 0  # contiguous passes: the length of the rows this pass transforms, ...
    rows: int = 1  # ... and R, how many of them one program takes
    programs_per_group: int = 1  # strided pass: programs per row, ...
    group_stride: int = 0  # ... the row length, ...
    program_stride: int = 0  # ... and the columns one program covers


def _axis(factors, stride) -> _Axis:
    return _Axis(tuple(factors), stride, applied=bool(factors))


def _cost(axes) -> float:
    """Relative time per element: padding waste × (memory + multiply-adds)."""
    waste = math.prod(ax.padded for ax in axes) / math.prod(ax.true for ax in axes)
    return waste * (_MEMORY_COST + sum(ax.padded for ax in axes if ax.applied))


@functools.lru_cache(maxsize=None)
def _plan_contiguous(m: int, k: int) -> _Pass:
    """Cheapest (A, B, C) split of a row of length m·2^k, and the rows per program."""
    n_row = m * 2**k
    factors = [("h", 2)] * k + ([("h", m)] if m > 1 else [])
    best = None
    for i in range(len(factors) + 1):
        for j in range(i, len(factors) + 1):
            c = _axis(factors[:i], 1)
            b = _axis(factors[i:j], c.true)
            a = _axis(factors[j:], b.true * c.true)
            if (b.applied and c.padded < 16) or (a.applied and b.padded * c.padded < 16):
                continue  # the N dimension of a stage's dot would be under 16
            if best is None or _cost((a, b, c)) < best[0]:
                best = (_cost((a, b, c)), a, b, c)
    _, a, b, c = best
    rows = triton.next_power_of_2(max(1, -(-_CHUNK // n_row)))
    if c.applied:  # the M dimension of the first dot, R·A·B, must reach 16
        rows = max(rows, 16 // min(16, a.padded * b.padded))
    return _Pass(a, b, c, row=n_row, rows=rows)


def _plan(m: int, p: int, n: int) -> list[_Pass]:
    """Passes for rows of n = m·p (m = 1 or a base order, p a power of two)."""
    if n <= MAX_FUSED_N:
        return [_plan_contiguous(m, p.bit_length() - 1)]
    inner = min(p, MAX_FUSED_N) if m > 1 else min(MAX_FUSED_N, n // 16)
    outer_bits = (p // inner).bit_length() - 1
    outer = _axis([("h", 2)] * outer_bits + ([("h", m)] if m > 1 else []), inner)
    columns = max(16, _CHUNK // outer.padded)
    strided = _Pass(
        outer, _axis((), 0), _Axis((("i", columns),), 1, applied=False),
        programs_per_group=inner // columns, group_stride=n, program_stride=columns,
    )
    return [_plan_contiguous(1, inner.bit_length() - 1), strided]


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


def _launch(x: torch.Tensor, out: torch.Tensor, step: _Pass, scale: float) -> None:
    a, b, c = step.a, step.b, step.c
    dot_dtype = _DOT_DTYPE[x.dtype]
    mats = [_axis_matrix(ax, left, dot_dtype, x.device) for ax, left in ((a, True), (b, True), (c, False))]
    if step.programs_per_group > 1:
        grid = (x.numel() // step.group_stride * step.programs_per_group,)
    else:
        grid = (triton.cdiv(x.numel(), step.rows * step.row),)
        step = dataclasses.replace(step, group_stride=step.rows * step.row)
    volume = step.rows * a.padded * b.padded * c.padded
    fwht_kernel[grid](
        x, out, *mats, x.numel(), scale,
        step.row, a.stride, b.stride, c.stride,
        step.programs_per_group, step.group_stride, step.program_stride,
        R=step.rows, A_TRUE=a.true, B_TRUE=b.true, C_TRUE=c.true, A=a.padded, B=b.padded, C=c.padded,
        APPLY_A=a.applied, APPLY_B=b.applied, APPLY_C=c.applied, MODE=_MODE[x.dtype],
        num_warps=4 if volume <= 4096 else 8,
    )


def fwht(x: torch.Tensor, scale: float, m: int, p: int) -> torch.Tensor:
    """(x @ (H_m ⊗ H_p)) * scale along the last dim of a contiguous x (float16, bfloat16,
    float32 or float64) with x.shape[-1] = m·p, m = 1 or a base order, p a power of two."""
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    src = x
    for i, step in enumerate(_plan(m, p, x.shape[-1])):
        _launch(src, out, step, scale if i == 0 else 1.0)
        src = out
    return out
