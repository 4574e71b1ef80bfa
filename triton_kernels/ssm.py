"""Triton kernels of the state-space-model family: linear scan, selective scan (forward
and backward), the S4D Vandermonde kernel.

Scans run along time in chunks held in registers: a program owns a block of rows, loads
a chunk of (gate, token) pairs, combines them with ``tl.associative_scan`` (the operator
(a1, b1)∘(a2, b2) = (a1·a2, a2·b1 + b2), x ↦ a2·(a1·x + b1) + b2), applies the carry from
the previous chunk and keeps the chunk's last state as the next carry: one pass over the
data, any T (the tail of the last chunk is padded with identity steps a = 1, b = 0, so the
last column always holds the state). Complex numbers are separate real and imaginary
planes (interleaved in memory, as torch.view_as_real). Half precision is computed in
float32; float64 and complex128 in float64.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

SCAN_TILE = 4096
"""Elements (rows × time steps) of one linear-scan chunk."""
SCAN_MAX_T = 1024
"""Longest chunk of time steps."""


@triton.jit
def _first_order(a1, b1, a2, b2):
    """(a1, b1) then (a2, b2): x ↦ a2·(a1·x + b1) + b2."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _first_order_complex(ar1, ai1, br1, bi1, ar2, ai2, br2, bi2):
    """_first_order on complex numbers as (real, imaginary) planes."""
    return (ar2 * ar1 - ai2 * ai1, ar2 * ai1 + ai2 * ar1,
            ar2 * br1 - ai2 * bi1 + br2, ar2 * bi1 + ai2 * br1 + bi2)


@triton.jit
def _last_column(x, pos, last):
    return tl.sum(tl.where(pos[None, :] == last, x, 0.0), 1)


@triton.jit
def _linear_scan_kernel(a_ptr, b_ptr, x0_ptr, out_ptr, rows, T,
                        HAS_X0: tl.constexpr, REVERSE: tl.constexpr, COMPLEX: tl.constexpr,
                        WIDE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr):
    """x_t = a_t·x_{t∓1} + b_t over rows of length T (contiguous; complex: interleaved
    real/imaginary, element offsets doubled). WIDE: float64 arithmetic, else float32."""
    acc = tl.float64 if WIDE else tl.float32
    row = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    live = row < rows
    parts = 2 if COMPLEX else 1
    if HAS_X0:
        xr = tl.load(x0_ptr + row * parts, mask=live, other=0.0).to(acc)
        xi = tl.load(x0_ptr + row * parts + 1, mask=live & COMPLEX, other=0.0).to(acc)
    else:
        xr = tl.zeros((BLOCK_R,), acc)
        xi = tl.zeros((BLOCK_R,), acc)
    for start in range(0, T, BLOCK_T):
        pos = start + tl.arange(0, BLOCK_T)
        t = T - 1 - pos if REVERSE else pos
        mask = live[:, None] & (pos < T)[None, :]
        off = (row[:, None] * T + t[None, :]) * parts
        ar = tl.load(a_ptr + off, mask=mask, other=1.0).to(acc)
        br = tl.load(b_ptr + off, mask=mask, other=0.0).to(acc)
        if COMPLEX:
            ai = tl.load(a_ptr + off + 1, mask=mask, other=0.0).to(acc)
            bi = tl.load(b_ptr + off + 1, mask=mask, other=0.0).to(acc)
            ar, ai, br, bi = tl.associative_scan((ar, ai, br, bi), 1, _first_order_complex)
            yr = ar * xr[:, None] - ai * xi[:, None] + br
            yi = ar * xi[:, None] + ai * xr[:, None] + bi
            tl.store(out_ptr + off, yr.to(out_ptr.dtype.element_ty), mask=mask)
            tl.store(out_ptr + off + 1, yi.to(out_ptr.dtype.element_ty), mask=mask)
            xr = _last_column(yr, pos, start + BLOCK_T - 1)
            xi = _last_column(yi, pos, start + BLOCK_T - 1)
        else:
            ar, br = tl.associative_scan((ar, br), 1, _first_order)
            yr = ar * xr[:, None] + br
            tl.store(out_ptr + off, yr.to(out_ptr.dtype.element_ty), mask=mask)
            xr = _last_column(yr, pos, start + BLOCK_T - 1)


def _planes(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous()
    return torch.view_as_real(t) if t.is_complex() else t


def linear_scan_call(gates: torch.Tensor, tokens: torch.Tensor, initial: torch.Tensor | None, out: torch.Tensor,
                     reverse: bool):
    """The launch (kernel, grid, args, meta) that writes the scan of (gates, tokens) (B, C, T)
    into ``out`` (contiguous, tokens' dtype); also used to compile it ahead of time."""
    rows, T = tokens.shape[0] * tokens.shape[1], tokens.shape[2]
    block_t = min(triton.next_power_of_2(T), SCAN_MAX_T)
    block_r = max(1, min(SCAN_TILE // block_t, triton.next_power_of_2(rows)))
    a, b, o = _planes(gates), _planes(tokens), _planes(out)
    x0 = a if initial is None else _planes(initial)
    wide = tokens.dtype in (torch.float64, torch.complex128)
    meta = dict(HAS_X0=initial is not None, REVERSE=reverse, COMPLEX=tokens.is_complex(), WIDE=wide,
                BLOCK_R=block_r, BLOCK_T=block_t, num_warps=4)
    return _linear_scan_kernel, (triton.cdiv(rows, block_r),), (a, b, x0, o, rows, T), meta


def linear_scan(gates: torch.Tensor, tokens: torch.Tensor, initial: torch.Tensor | None, reverse: bool) -> torch.Tensor:
    """x (B, C, T) in tokens' dtype, contiguous; see fastspec.linear_scan."""
    out = torch.empty(tokens.shape, dtype=tokens.dtype, device=tokens.device)
    if out.numel():
        kernel, grid, args, meta = linear_scan_call(gates, tokens, initial, out, reverse)
        kernel[grid](*args, **meta)
    return out
