"""Triton Gaunt tensor product, grid method: SH -> quadrature grid, pointwise product, -> SH,
fused in one kernel per block of rows (the leading dims and channels flattened).

Per row, with d = (L+1)² coefficients and P quadrature nodes (fastspec.ops.gaunt.grid_tables):

    out = ((x1 @ Y1) * (x2 @ Y2)) @ proj        Y1 (d1, P), Y2 (d2, P), proj (P, d3)

A program holds a (BLOCK_R, d1) tile of x1 and one of x2 and a (BLOCK_R, d3) accumulator,
and walks the nodes in chunks of BLOCK_P: two dots give f1 and f2 at the chunk's nodes,
their product enters the accumulator by a third dot. The grid values never leave the
chip: DRAM sees x1, x2 and out once, plus the tables (shared by every program, so L2).
Flops per row: 2·P·(d1 + d2 + d3) against the dense contraction's 2·d1·d2·d3.

The backward is this kernel again (fastspec.ops.gaunt: grad_x1 = op(x2, grad) at degree L1).

Precision: the tables are float32 (rounded once from float64), the data is read in its
dtype and widened to float32, accumulation is float32 and the output is rounded once to the
input dtype. The dots are IEEE float32 for float32 and float16 data (as accurate as the torch
backend's) and TF32 for bfloat16 data (``dot_precision``; the interpreter truncates TF32
operands as the GPU may, triton_kernels/_interpreter.py, so the tests see that error). Coefficient dims are padded to powers of two
(at least 16, the smallest ``tl.dot``) and the node count to a multiple of BLOCK_P, with
zeros in the tables, so padded lanes add nothing.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from fastspec.spherical import degree_of, num_coefficients

BLOCK_P = 32
"""Quadrature nodes per step of the node loop."""


def _block_rows(d_max: int) -> int:
    """Rows per program: three (rows, d) float32 tiles live in registers (x1, x2, the
    accumulator), so fewer rows for wider coefficient vectors."""
    return 64 if d_max <= 16 else 32 if d_max <= 64 else 16


@triton.jit
def gaunt_grid_kernel(x1_ptr, x2_ptr, y1_ptr, y2_ptr, proj_ptr, out_ptr, rows, P,
                      D1: tl.constexpr, D2: tl.constexpr, D3: tl.constexpr,
                      D1P: tl.constexpr, D2P: tl.constexpr, D3P: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, PRECISION: tl.constexpr):
    """x1 (rows, D1), x2 (rows, D2), out (rows, D3) contiguous; y1 (D1P, P), y2 (D2P, P),
    proj (P, D3P) float32, zero-padded, P a multiple of BLOCK_P."""
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # rows·D may pass 2^31
    in_rows = r[:, None] < rows
    c1, c2, c3 = tl.arange(0, D1P), tl.arange(0, D2P), tl.arange(0, D3P)
    a = tl.load(x1_ptr + r[:, None] * D1 + c1[None, :], mask=in_rows & (c1[None, :] < D1), other=0.0).to(tl.float32)
    b = tl.load(x2_ptr + r[:, None] * D2 + c2[None, :], mask=in_rows & (c2[None, :] < D2), other=0.0).to(tl.float32)
    acc = tl.zeros((BLOCK_R, D3P), tl.float32)
    nodes = tl.arange(0, BLOCK_P)
    for p0 in range(0, P, BLOCK_P):
        y1 = tl.load(y1_ptr + c1[:, None] * P + (p0 + nodes)[None, :])
        y2 = tl.load(y2_ptr + c2[:, None] * P + (p0 + nodes)[None, :])
        f1 = tl.dot(a, y1, input_precision=PRECISION)
        f2 = tl.dot(b, y2, input_precision=PRECISION)
        proj = tl.load(proj_ptr + (p0 + nodes)[:, None] * D3P + c3[None, :])
        acc = tl.dot(f1 * f2, proj, acc, input_precision=PRECISION)
    tl.store(out_ptr + r[:, None] * D3 + c3[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=in_rows & (c3[None, :] < D3))


def _padded(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


@functools.lru_cache(maxsize=32)
def padded_tables(l1: int, l2: int, lmax_out: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """grid_tables in float32 on ``device``, zero-padded to (D1P, P'), (D2P, P'), (P', D3P)."""
    from fastspec.ops.gaunt import grid_tables

    y1, y2, proj = grid_tables(l1, l2, lmax_out)
    p = triton.cdiv(y1.shape[1], BLOCK_P) * BLOCK_P

    def pad(t, rows, cols):
        out = torch.zeros(rows, cols, dtype=torch.float32)
        out[:t.shape[0], :t.shape[1]] = t
        return out.to(device)

    d1, d2, d3 = (num_coefficients(l) for l in (l1, l2, lmax_out))
    return pad(y1, _padded(d1), p), pad(y2, _padded(d2), p), pad(proj, p, _padded(d3))


def dot_precision(dtype: torch.dtype) -> str:
    """TF32 tensor cores for bfloat16 data (2^-11 relative error per rounding, three of them
    along the way: together about bfloat16's own rounding, 2^-9, so an element can end one
    bfloat16 ulp from the exact value instead of half), IEEE float32 otherwise (float16's
    rounding, 2^-12, is finer than TF32's)."""
    return "tf32" if dtype == torch.bfloat16 else "ieee"


def _num_warps(d_max: int) -> int:
    return 4 if d_max <= 64 else 8


def gaunt_grid_call(a: torch.Tensor, b: torch.Tensor, y1: torch.Tensor, y2: torch.Tensor, proj: torch.Tensor,
                    out: torch.Tensor):
    """The launch (kernel, grid, args, meta) that writes out (rows, d3) from a (rows, d1) and
    b (rows, d2), contiguous, with the padded tables; also used to compile it ahead of time."""
    rows, (d1, d2, d3) = a.shape[0], (a.shape[1], b.shape[1], out.shape[1])
    block_r = _block_rows(max(d1, d2, d3))
    meta = dict(D1=d1, D2=d2, D3=d3, D1P=y1.shape[0], D2P=y2.shape[0], D3P=proj.shape[1], BLOCK_R=block_r,
                BLOCK_P=BLOCK_P, PRECISION=dot_precision(a.dtype), num_warps=_num_warps(max(d1, d2, d3)))
    return gaunt_grid_kernel, (triton.cdiv(rows, block_r),), (a, b, y1, y2, proj, out, rows, y1.shape[1]), meta


def gaunt_grid(x1: torch.Tensor, x2: torch.Tensor, lmax_out: int) -> torch.Tensor:
    """x1 (..., d1), x2 (..., d2) of one leading shape and dtype (float16, bfloat16, float32)
    -> (..., (lmax_out+1)²) in that dtype, lmax_out ≤ L1 + L2. Any strides (made contiguous)."""
    l1, l2 = degree_of(x1.shape[-1]), degree_of(x2.shape[-1])
    d3 = num_coefficients(lmax_out)
    a, b = x1.reshape(-1, x1.shape[-1]).contiguous(), x2.reshape(-1, x2.shape[-1]).contiguous()
    out = torch.empty(a.shape[0], d3, dtype=x1.dtype, device=x1.device)
    if a.shape[0]:
        kernel, grid, args, meta = gaunt_grid_call(a, b, *padded_tables(l1, l2, lmax_out, x1.device), out)
        kernel[grid](*args, **meta)
    return out.reshape(*x1.shape[:-1], d3)
