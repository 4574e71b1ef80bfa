"""Reference butterfly and Monarch products in float64, by definition rather than by speed.

Butterfly (Dao et al. 2019; torch_butterfly's layout): ``twiddle`` (nstacks, nblocks, log2 n,
n/2, 2, 2) holds log2 n factors per block. Factor ``idx`` of a block has stride
s = 2^idx (increasing stride) or 2^(log2 n - 1 - idx) (decreasing); it pairs the entries
a = (p // s)·2s + p % s and b = a + s of a row (pair p < n/2) and maps them by the 2×2
matrix ``T = twiddle[stack, block, idx, p]``: (y_a, y_b) = T (x_a, x_b). Blocks apply in
order and alternate the stride direction. A row is multiplied from the left: y = M x with
M = F_last ⋯ F_first, for each stack. ``transpose=True`` multiplies by Mᵀ (not Mᴴ).

Monarch (fly's ``blockdiag_butterfly_multiply``): w1 (k, q, p), w2 (l, s, r) with
k·p = n and l·r = k·q: y = P₂ · blockdiag(w2) · P₁ · blockdiag(w1) · x, where P₁ reads the
k·q intermediate as (r, l) and writes it as (l, r), and P₂ reads the l·s output as (l, s)
and writes it as (s, l).

The benchmarks' baselines are here too: ``butterfly_per_factor`` (torch_butterfly's pure-PyTorch
formulation, one broadcast product per factor) and ``monarch_two_bmm`` (fly's two-bmm forward).
"""
from __future__ import annotations

import torch


def _wide(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.complex128 if t.is_complex() else torch.float64)


def factor_strides(log_n: int, nblocks: int, increasing_stride: bool) -> list[tuple[int, int, int]]:
    """(block, idx, stride) of every factor in the order they apply."""
    order = []
    increasing = increasing_stride
    for block in range(nblocks):
        for idx in range(log_n):
            order.append((block, idx, 1 << (idx if increasing else log_n - 1 - idx)))
        increasing = not increasing
    return order


def _apply_factor(factor: torch.Tensor, x: torch.Tensor, stride: int) -> torch.Tensor:
    """One factor: factor (nstacks, n/2, 2, 2), x (batch, nstacks, n); explicit pair indices."""
    n = x.shape[-1]
    p = torch.arange(n // 2, device=x.device)
    a = (p // stride) * 2 * stride + p % stride
    b = a + stride
    xa, xb = x[..., a], x[..., b]
    y = torch.empty_like(x)
    y[..., a] = factor[..., 0, 0] * xa + factor[..., 0, 1] * xb
    y[..., b] = factor[..., 1, 0] * xa + factor[..., 1, 1] * xb
    return y


def butterfly_reference(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool = True,
                        transpose: bool = False) -> torch.Tensor:
    """M x (or Mᵀ x) per row, in float64 (complex128 if either input is complex).

    twiddle: (nstacks, nblocks, log2 n, n/2, 2, 2); x: (batch, nstacks, n)."""
    wide = torch.complex128 if (twiddle.is_complex() or x.is_complex()) else torch.float64
    tw, y = twiddle.to(wide), x.to(wide)
    nblocks, log_n = tw.shape[1], tw.shape[2]
    order = factor_strides(log_n, nblocks, increasing_stride)
    if transpose:  # Mᵀ = F_firstᵀ ⋯ F_lastᵀ
        for block, idx, stride in reversed(order):
            y = _apply_factor(tw[:, block, idx].transpose(-1, -2), y, stride)
    else:
        for block, idx, stride in order:
            y = _apply_factor(tw[:, block, idx], y, stride)
    return y


def butterfly_matrix(twiddle: torch.Tensor, increasing_stride: bool = True, transpose: bool = False) -> torch.Tensor:
    """The dense (nstacks, n, n) matrix M (or Mᵀ) of the product of the factors: the
    factors applied to the columns of the identity."""
    nstacks, n = twiddle.shape[0], 2 * twiddle.shape[3]
    eye = torch.eye(n, dtype=torch.float64, device=twiddle.device)
    columns = butterfly_reference(twiddle, eye[:, None, :].expand(n, nstacks, n), increasing_stride, transpose)
    return columns.permute(1, 2, 0)  # columns[j, stack, :] is column j


def monarch_matrix(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """The dense (l·s, k·p) Monarch matrix, float64 (complex128 for complex weights)."""
    w1, w2 = _wide(w1), _wide(w2)
    k, q, _ = w1.shape
    l, s, r = w2.shape
    d1, d2 = torch.block_diag(*w1.unbind(0)), torch.block_diag(*w2.unbind(0))
    eye1, eye2 = torch.eye(k * q, dtype=d1.dtype, device=w1.device), torch.eye(l * s, dtype=d1.dtype, device=w1.device)
    p1 = eye1[torch.arange(k * q, device=w1.device).reshape(r, l).T.reshape(-1)]  # (P₁v)[i·r + j] = v[j·l + i]
    p2 = eye2[torch.arange(l * s, device=w1.device).reshape(l, s).T.reshape(-1)]  # (P₂v)[i·l + j] = v[j·s + i]
    return p2 @ d2.to(d1.dtype) @ p1 @ d1


def monarch_reference(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """x @ Mᵀ for x (..., k·p) with the dense matrix above, float64 (or complex128)."""
    mat = monarch_matrix(w1, w2)
    x = _wide(x)
    if x.is_complex() != mat.is_complex():
        x, mat = x.to(torch.complex128), mat.to(torch.complex128)
    return x @ mat.T


def butterfly_per_factor(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool = True) -> torch.Tensor:
    """The pure-PyTorch butterfly as torch_butterfly's reference computes it: per factor, the
    twiddle viewed (nstacks, n/2s, 2, 2, s) times x viewed (batch, nstacks, n/2s, 1, 2, s),
    summed over the input pair axis."""
    batch, nstacks, n = x.shape
    nblocks, log_n = twiddle.shape[1], twiddle.shape[2]
    out, increasing = x, increasing_stride
    for block in range(nblocks):
        for idx in range(log_n):
            stride = 1 << (idx if increasing else log_n - 1 - idx)
            t = twiddle[:, block, idx].view(nstacks, n // (2 * stride), stride, 2, 2).permute(0, 1, 3, 4, 2)
            out = (t * out.reshape(batch, nstacks, n // (2 * stride), 1, 2, stride)).sum(dim=4)
        increasing = not increasing
    return out.reshape(batch, nstacks, n)


def monarch_two_bmm(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """fly's BlockdiagButterflyMultiply forward: bmm into a fresh buffer, the permutation as a
    reshape of the transposed result, bmm, the output permutation."""
    batch, n = x.shape
    k, q, p = w1.shape
    l, s, r = w2.shape
    out1 = torch.bmm(x.reshape(batch, k, p).transpose(0, 1), w1.transpose(-1, -2))  # (k, batch, q)
    out1 = out1.transpose(0, 1).reshape(batch, r, l).permute(2, 0, 1)  # (l, batch, r)
    out2 = torch.bmm(out1, w2.transpose(-1, -2))  # (l, batch, s)
    return out2.permute(1, 2, 0).reshape(batch, s * l)
