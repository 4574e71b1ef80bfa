"""Triton butterfly and Monarch multiplies.

Butterfly (``butterfly_forward``/``butterfly_backward``), layout and semantics as in
:mod:`fastspec.reference.butterfly`. Bytes and flops: a factor is 6 flops an element and
reads 2 twiddle values an element (shared by every row of a stack); one pass per factor
would move the row log2 n times, so a program holds a tile of rows in registers through
every factor and reads x once and writes y once. A tile is (R, L): R sub-rows of L
entries at stride SUB in the row. Rows up to ``TILE_MAX`` entries are one sub-row
(SUB = 1, L = n, R rows of one stack): a single launch runs every factor of every block.
Longer rows take two launches per block: the factors of stride < L1 on contiguous
sub-rows of L1 entries, then those of stride ≥ L1 on sub-rows at stride L1 (R
neighbouring sub-rows a tile, so the loads stay coalesced).

A factor on a tile: the tile reshaped to (R, L/2S, 2, S), split into the pair halves
(R, L/2S, S), the 2×2 maps with the twiddles gathered at pair p = (e // 2s)·s + e % s of
the lower entry e (s = S·SUB), joined back. Arithmetic in float32; output in x's dtype.

The backward recomputes: for the factors in reverse, the input of factor f is recomputed
from the tile of x (f factor applications in registers), the twiddle gradient is its
pairs times the gradient's, summed over the tile's rows and added atomically (float32),
and the gradient goes back through Tᵀ. No per-factor intermediates in memory; the cost is
F(F+1)/2 factor applications for F factors a launch (with more than one launch the
input of each launch is kept, one tensor per launch).

Monarch (``monarch_forward``/``monarch_backward``): a program takes BM rows, computes
blockdiag(w1) as one batched ``tl.dot`` (k, BM, p) @ (k, p, q), permutes the (BM, k·q)
intermediate to (l, BM, r) in registers (the (r, l) → (l, r) permutation of fly's
reshape), the second batched dot (l, BM, r) @ (l, r, s), and stores (BM, s, l) as rows
of l·s: x read once, y written once, no intermediate in memory. The backward recomputes
the intermediate the same way; dx in one pass, dw1 and dw2 summed over the program's rows
and added atomically. Block sizes must be powers of two with q, p, s, r ≥ 16 (``tl.dot``);
float32 dots in IEEE precision (``input_precision="ieee"``), half precision on the tensor
cores with float32 accumulation.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

TILE_MAX = 2**14
"""Largest tile (R·L entries) a forward program holds; rows up to this are one launch (the
tests lower it to reach the two-launch path at small n)."""
BACKWARD_TILE_MAX = 2**12
"""The same for the backward, which holds three tiles (x, the recomputed input, the gradient):
16 rows of 1024 spill 200 bytes on sm_90 at 16 warps (tests/test_butterfly_triton_sm90.py)."""
MONARCH_TILE_MAX = 2**16
"""Largest intermediate (BM·k·q entries, BM >= 16 rows) a Monarch program holds: n = 4096 with
64 × 64 blocks at 16 rows (untuned: no GPU has run it yet)."""


# ----------------------------------------------------------------------------- butterfly


@triton.jit
def _factor(y, tw_ptr, tw_base, within0, half_n, f: tl.constexpr, LOG_N: tl.constexpr, LOG_L: tl.constexpr,
            LOG_SUB: tl.constexpr, INCREASING: tl.constexpr, BLOCK0: tl.constexpr, R: tl.constexpr,
            L: tl.constexpr, SUB: tl.constexpr, TILES: tl.constexpr, MODE: tl.constexpr, g=None):
    """Factor f of the launch (block f // LOG_L) on the tile y (R, L).

    MODE 0: y ← T y. MODE 1: y ← Tᵀ y. MODE 2: the twiddle gradient of this factor for the
    input y and output gradient g (both (R, L)) added at tw_ptr (the float32 gradient
    buffer), summed over the rows where they are whole rows (TILES == 1, one stack);
    returns y unchanged."""
    BLOCK: tl.constexpr = f // LOG_L
    INC: tl.constexpr = INCREASING != (BLOCK % 2 == 1)
    LS: tl.constexpr = (f % LOG_L) if INC else (LOG_L - 1 - f % LOG_L)  # log2 stride in the sub-row
    S: tl.constexpr = 1 << LS
    LOG_S_ROW: tl.constexpr = LS + LOG_SUB  # log2 stride in the row
    IDX: tl.constexpr = LOG_S_ROW if INC else LOG_N - 1 - LOG_S_ROW  # the factor's index in its block
    G: tl.constexpr = L // (2 * S)
    e = (tl.arange(0, G)[None, :, None] * (2 * S) + tl.arange(0, S)[None, None, :]) * SUB  # lower entry of a pair
    if TILES > 1:
        e = within0[:, None, None] + e  # (R, G, S): the sub-rows sit at different places of the row
    p = (e >> (LOG_S_ROW + 1) << LOG_S_ROW) + (e & ((1 << LOG_S_ROW) - 1))
    off = tw_base + ((BLOCK0 + BLOCK) * LOG_N + IDX) * half_n * 4 + p.to(tl.int64) * 4
    y0, y1 = tl.split(tl.permute(tl.reshape(y, (R, G, 2, S)), (0, 1, 3, 2)))
    if MODE == 2:
        g0, g1 = tl.split(tl.permute(tl.reshape(g, (R, G, 2, S)), (0, 1, 3, 2)))
        if TILES == 1:
            tl.atomic_add(tw_ptr + off, tl.sum(g0 * y0, 0)[None, :, :])
            tl.atomic_add(tw_ptr + off + 1, tl.sum(g0 * y1, 0)[None, :, :])
            tl.atomic_add(tw_ptr + off + 2, tl.sum(g1 * y0, 0)[None, :, :])
            tl.atomic_add(tw_ptr + off + 3, tl.sum(g1 * y1, 0)[None, :, :])
        else:
            tl.atomic_add(tw_ptr + off, g0 * y0)
            tl.atomic_add(tw_ptr + off + 1, g0 * y1)
            tl.atomic_add(tw_ptr + off + 2, g1 * y0)
            tl.atomic_add(tw_ptr + off + 3, g1 * y1)
        out = y
    else:
        t00 = tl.load(tw_ptr + off).to(tl.float32)
        t01 = tl.load(tw_ptr + off + 1).to(tl.float32)
        t10 = tl.load(tw_ptr + off + 2).to(tl.float32)
        t11 = tl.load(tw_ptr + off + 3).to(tl.float32)
        if MODE == 0:
            z0, z1 = t00 * y0 + t01 * y1, t10 * y0 + t11 * y1
        else:
            z0, z1 = t00 * y0 + t10 * y1, t01 * y0 + t11 * y1
        out = tl.reshape(tl.permute(tl.join(z0, z1), (0, 1, 3, 2)), (R, L))
    return out


@triton.jit
def _tile_offsets(batch, nstacks, n, R: tl.constexpr, L: tl.constexpr, SUB: tl.constexpr, TILES: tl.constexpr):
    """(offsets (R, L) of the tile's entries, their rows' validity (R,), each sub-row's
    first entry's place in the row (R,)). Grid: (batch tiles · TILES, nstacks)."""
    pid = tl.program_id(0)
    h = tl.program_id(1)
    q = tl.arange(0, R)
    j = tl.arange(0, L)
    if TILES == 1:  # whole rows: R batch entries of stack h
        b = pid * R + q
        within0 = q * 0
    else:  # one batch entry, R sub-rows of tile pid % TILES
        b = pid // TILES + q * 0
        QSTRIDE: tl.constexpr = L if SUB == 1 else 1
        within0 = (pid % TILES) * (R * QSTRIDE) + q * QSTRIDE
    row_ok = b < batch
    row = b.to(tl.int64) * nstacks + h
    offs = row[:, None] * n + within0[:, None] + j[None, :] * SUB
    return offs, row_ok, within0


@triton.jit
def butterfly_kernel(x_ptr, tw_ptr, out_ptr, batch, nstacks, n, half_n,
                     LOG_N: tl.constexpr, NBLOCKS_TOTAL: tl.constexpr, BLOCK0: tl.constexpr, NBLOCKS: tl.constexpr,
                     INCREASING: tl.constexpr, R: tl.constexpr, L: tl.constexpr, LOG_L: tl.constexpr,
                     SUB: tl.constexpr, LOG_SUB: tl.constexpr, TILES: tl.constexpr):
    """NBLOCKS blocks (from BLOCK0, the first of direction INCREASING) of the factors of
    stride SUB·(1 .. L/2) on the tiles: x → out."""
    offs, row_ok, within0 = _tile_offsets(batch, nstacks, n, R, L, SUB, TILES)
    mask = row_ok[:, None]
    y = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tw_base = tl.program_id(1).to(tl.int64) * (NBLOCKS_TOTAL * LOG_N) * half_n * 4
    for f in tl.static_range(NBLOCKS * LOG_L):
        y = _factor(y, tw_ptr, tw_base, within0, half_n, f, LOG_N, LOG_L, LOG_SUB, INCREASING, BLOCK0, R, L, SUB,
                    TILES, 0)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def butterfly_backward_kernel(x_ptr, grad_ptr, tw_ptr, dtw_ptr, dx_ptr, batch, nstacks, n, half_n,
                              LOG_N: tl.constexpr, NBLOCKS_TOTAL: tl.constexpr, BLOCK0: tl.constexpr,
                              NBLOCKS: tl.constexpr, INCREASING: tl.constexpr, R: tl.constexpr, L: tl.constexpr,
                              LOG_L: tl.constexpr, SUB: tl.constexpr, LOG_SUB: tl.constexpr, TILES: tl.constexpr):
    """The backward of butterfly_kernel with the same arguments: dx (the gradient of this
    launch's input) and the float32 twiddle gradient at dtw_ptr (added atomically)."""
    offs, row_ok, within0 = _tile_offsets(batch, nstacks, n, R, L, SUB, TILES)
    mask = row_ok[:, None]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tw_base = tl.program_id(1).to(tl.int64) * (NBLOCKS_TOTAL * LOG_N) * half_n * 4
    F: tl.constexpr = NBLOCKS * LOG_L
    for back in tl.static_range(F):  # factor F - 1 - back (a constexpr may not be reassigned in the loop)
        y = x
        for before in tl.static_range(F - 1 - back):  # recompute the factor's input
            y = _factor(y, tw_ptr, tw_base, within0, half_n, before, LOG_N, LOG_L, LOG_SUB, INCREASING, BLOCK0, R,
                        L, SUB, TILES, 0)
        _factor(y, dtw_ptr, tw_base, within0, half_n, F - 1 - back, LOG_N, LOG_L, LOG_SUB, INCREASING, BLOCK0, R, L,
                SUB, TILES, 2, g)
        g = _factor(g, tw_ptr, tw_base, within0, half_n, F - 1 - back, LOG_N, LOG_L, LOG_SUB, INCREASING, BLOCK0, R,
                    L, SUB, TILES, 1)
    tl.store(dx_ptr + offs, g.to(dx_ptr.dtype.element_ty), mask=mask)


def _launches(log_n: int, nblocks: int, increasing_stride: bool, tile_max: int) -> list[dict]:
    """The launches of one product in order: the constexpr arguments of each."""
    n = 1 << log_n
    if n <= tile_max:
        return [dict(BLOCK0=0, NBLOCKS=nblocks, INCREASING=increasing_stride, L=n, LOG_L=log_n, SUB=1, LOG_SUB=0)]
    log_l1 = (tile_max.bit_length() - 1)
    low = dict(L=1 << log_l1, LOG_L=log_l1, SUB=1, LOG_SUB=0)
    high = dict(L=n >> log_l1, LOG_L=log_n - log_l1, SUB=1 << log_l1, LOG_SUB=log_l1)
    launches, increasing = [], increasing_stride
    for block in range(nblocks):
        for part in ((low, high) if increasing else (high, low)):
            launches.append(dict(BLOCK0=block, NBLOCKS=1, INCREASING=increasing, **part))
        increasing = not increasing
    return launches


def _grid_args(batch: int, n: int, launch: dict, tile_max: int) -> tuple[int, int, int]:
    """(R, TILES, programs along the batch) of a launch."""
    L = launch["L"]
    if L == n:  # whole rows; at most 16 (their twiddle gradients are summed in registers)
        R = min(max(1, tile_max // L), 16, triton.next_power_of_2(max(batch, 1)))
        return R, 1, triton.cdiv(batch, R)
    subrows = n // L
    R = min(max(1, tile_max // L), subrows)
    return R, subrows // R, batch * (subrows // R)


def butterfly_plan(batch: int, nstacks: int, n: int, nblocks: int, increasing_stride: bool,
                   backward: bool = False) -> list[tuple]:
    """The launches of one product in order, each (grid, meta) (``meta`` holds num_warps);
    ``backward``: the plan whose launches the backward kernel runs in reverse (smaller tiles)."""
    plan = []
    tile_max = BACKWARD_TILE_MAX if backward else TILE_MAX
    for launch in _launches(n.bit_length() - 1, nblocks, increasing_stride, tile_max):
        R, tiles, programs = _grid_args(batch, n, launch, tile_max)
        meta = dict(LOG_N=n.bit_length() - 1, NBLOCKS_TOTAL=nblocks, R=R, TILES=tiles, **launch,
                    num_warps=min(16, max(1, R * launch["L"] // 1024)))
        plan.append(((programs, nstacks), meta))
    return plan


def butterfly_forward(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool) -> torch.Tensor:
    """y = M x. twiddle (nstacks, nblocks, log2 n, n/2, 2, 2), x (batch, nstacks, n),
    contiguous, float16/bfloat16/float32, the same dtype."""
    batch, nstacks, n = x.shape
    out = torch.empty_like(x)
    if batch == 0:
        return out
    src = x
    for grid, meta in butterfly_plan(batch, nstacks, n, twiddle.shape[1], increasing_stride):
        butterfly_kernel[grid](src, twiddle, out, batch, nstacks, n, n // 2, **meta)
        src = out  # later launches work in place
    return out


def butterfly_backward(grad: torch.Tensor, twiddle: torch.Tensor, x: torch.Tensor,
                       increasing_stride: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(d twiddle, d x) for the output gradient; contiguous inputs as butterfly_forward's."""
    batch, nstacks, n = x.shape
    dtw = torch.zeros(twiddle.shape, dtype=torch.float32, device=x.device)
    if batch == 0:
        return dtw.to(twiddle.dtype), torch.empty_like(x)
    plan = butterfly_plan(batch, nstacks, n, twiddle.shape[1], increasing_stride, backward=True)
    inputs = [x]  # each launch's input: the forward again, one tensor a launch
    for grid, meta in plan[:-1]:
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        butterfly_kernel[grid](inputs[-1], twiddle, out, batch, nstacks, n, n // 2, **meta)
        inputs.append(out)
    g = grad
    for (grid, meta), src in zip(reversed(plan), reversed(inputs)):
        dx = torch.empty(x.shape, dtype=x.dtype if src is x else torch.float32, device=x.device)
        butterfly_backward_kernel[grid](src, g, twiddle, dtw, dx, batch, nstacks, n, n // 2, **meta)
        g = dx
    return dtw.to(twiddle.dtype), g


# ----------------------------------------------------------------------------- monarch


@triton.jit
def _monarch_rows(x_ptr, w1_ptr, rows, row0, K: tl.constexpr, Q: tl.constexpr, P: tl.constexpr,
                  BM: tl.constexpr):
    """(the tile's x as (K, BM, P) float32, w1 as (K, Q, P), blockdiag(w1)·x as (K, BM, Q))."""
    kk = tl.arange(0, K)[:, None, None]
    b = row0 + tl.arange(0, BM)[None, :, None]
    pp = tl.arange(0, P)[None, None, :]
    x = tl.load(x_ptr + b.to(tl.int64) * (K * P) + kk * P + pp, mask=b < rows, other=0.0)
    w1 = tl.load(w1_ptr + kk * (Q * P) + tl.arange(0, Q)[None, :, None] * P + pp)
    h = tl.dot(x, tl.permute(w1, (0, 2, 1)), input_precision="ieee", out_dtype=tl.float32)
    return x, w1, h


@triton.jit
def _to_stage2(h, K: tl.constexpr, Q: tl.constexpr, L: tl.constexpr, R: tl.constexpr, BM: tl.constexpr):
    """(K, BM, Q) → (L, BM, R): entry e = r·L + l of a row's k·q intermediate to block l, column r."""
    return tl.permute(tl.reshape(tl.permute(h, (1, 0, 2)), (BM, R, L)), (2, 0, 1))


@triton.jit
def _to_stage1(g, K: tl.constexpr, Q: tl.constexpr, L: tl.constexpr, R: tl.constexpr, BM: tl.constexpr):
    """The inverse of _to_stage2: (L, BM, R) → (K, BM, Q)."""
    return tl.permute(tl.reshape(tl.permute(g, (1, 2, 0)), (BM, K, Q)), (1, 0, 2))


@triton.jit
def monarch_kernel(x_ptr, w1_ptr, w2_ptr, out_ptr, rows, K: tl.constexpr, Q: tl.constexpr, P: tl.constexpr,
                   L: tl.constexpr, S: tl.constexpr, R: tl.constexpr, BM: tl.constexpr):
    """BM rows: y = P₂·blockdiag(w2)·P₁·blockdiag(w1)·x, stored as (BM, S, L)."""
    row0 = tl.program_id(0) * BM
    x, w1, h = _monarch_rows(x_ptr, w1_ptr, rows, row0, K, Q, P, BM)
    h2 = _to_stage2(h, K, Q, L, R, BM).to(x.dtype)
    ll = tl.arange(0, L)[:, None, None]
    w2 = tl.load(w2_ptr + ll * (S * R) + tl.arange(0, S)[None, :, None] * R + tl.arange(0, R)[None, None, :])
    y = tl.dot(h2, tl.permute(w2, (0, 2, 1)), input_precision="ieee", out_dtype=tl.float32)  # (L, BM, S)
    b = row0 + tl.arange(0, BM)[None, :, None]
    out_off = b.to(tl.int64) * (L * S) + tl.arange(0, S)[None, None, :] * L + ll
    tl.store(out_ptr + out_off, y.to(out_ptr.dtype.element_ty), mask=b < rows)


@triton.jit
def monarch_backward_kernel(x_ptr, w1_ptr, w2_ptr, grad_ptr, dx_ptr, dw1_ptr, dw2_ptr, rows, K: tl.constexpr,
                            Q: tl.constexpr, P: tl.constexpr, L: tl.constexpr, S: tl.constexpr, R: tl.constexpr,
                            BM: tl.constexpr):
    """BM rows of the backward: dx stored, dw1 and dw2 (float32) summed over the rows and added."""
    row0 = tl.program_id(0) * BM
    x, w1, h = _monarch_rows(x_ptr, w1_ptr, rows, row0, K, Q, P, BM)
    h2 = _to_stage2(h, K, Q, L, R, BM).to(x.dtype)  # (L, BM, R)
    ll = tl.arange(0, L)[:, None, None]
    ss = tl.arange(0, S)[None, :, None]
    rr = tl.arange(0, R)[None, None, :]
    w2 = tl.load(w2_ptr + ll * (S * R) + ss * R + rr)
    b = row0 + tl.arange(0, BM)[None, :, None]
    g = tl.load(grad_ptr + b.to(tl.int64) * (L * S) + tl.arange(0, S)[None, None, :] * L + ll, mask=b < rows,
                other=0.0)  # (L, BM, S)
    tl.atomic_add(dw2_ptr + ll * (S * R) + ss * R + rr,
                  tl.dot(tl.permute(g, (0, 2, 1)), h2, input_precision="ieee", out_dtype=tl.float32))
    dh = _to_stage1(tl.dot(g, w2, input_precision="ieee", out_dtype=tl.float32), K, Q, L, R, BM).to(x.dtype)
    kk = tl.arange(0, K)[:, None, None]
    tl.atomic_add(dw1_ptr + kk * (Q * P) + tl.arange(0, Q)[None, :, None] * P + tl.arange(0, P)[None, None, :],
                  tl.dot(tl.permute(dh, (0, 2, 1)), x, input_precision="ieee", out_dtype=tl.float32))
    dx = tl.dot(dh, w1, input_precision="ieee", out_dtype=tl.float32)  # (K, BM, P)
    tl.store(dx_ptr + b.to(tl.int64) * (K * P) + kk * P + tl.arange(0, P)[None, None, :],
             dx.to(dx_ptr.dtype.element_ty), mask=b < rows)


def monarch_unsupported(w1_shape, w2_shape) -> str | None:
    """None if the Triton kernel takes these block shapes, else why not."""
    k, q, p = w1_shape
    l, s, r = w2_shape
    dims = (k, q, p, l, s, r)
    if any(d & (d - 1) for d in dims) or min(q, p, s, r) < 16:
        return f"the triton backend takes power-of-two block counts and block sizes q, p, s, r >= 16, got " \
               f"w1 {tuple(w1_shape)}, w2 {tuple(w2_shape)}"
    if 16 * max(k * q, l * s) > MONARCH_TILE_MAX:
        return f"the triton backend holds 16 rows of k·q and l·s entries, up to {MONARCH_TILE_MAX // 16} each, " \
               f"got {k * q} and {l * s}"
    return None


def monarch_plan(rows: int, w1_shape, w2_shape) -> tuple[tuple[int], dict]:
    """(grid, meta) of the forward and the backward kernel: BM rows a program, 16 to 64, as
    many as keep the widest intermediate within MONARCH_TILE_MAX."""
    k, q, p = w1_shape
    l, s, r = w2_shape
    bm = max(16, min(64, MONARCH_TILE_MAX // max(k * q, l * s)))
    meta = dict(K=k, Q=q, P=p, L=l, S=s, R=r, BM=bm, num_warps=min(8, max(4, bm * max(k * q, l * s) // 8192)))
    return (triton.cdiv(rows, bm),), meta


def monarch_forward(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """x (..., k·p), w1 (k, q, p), w2 (l, s, r), contiguous, one dtype → (..., l·s)."""
    k, q, p = w1.shape
    l, s, r = w2.shape
    rows = x.numel() // (k * p)
    out = torch.empty(*x.shape[:-1], l * s, dtype=x.dtype, device=x.device)
    if rows:
        grid, meta = monarch_plan(rows, w1.shape, w2.shape)
        monarch_kernel[grid](x, w1, w2, out, rows, **meta)
    return out


def monarch_backward(grad, x, w1, w2):
    """(d x, d w1, d w2) for the output gradient (..., l·s); contiguous inputs."""
    k, q, p = w1.shape
    l, s, r = w2.shape
    rows = x.numel() // (k * p)
    dx = torch.empty_like(x)
    dw1 = torch.zeros(w1.shape, dtype=torch.float32, device=x.device)
    dw2 = torch.zeros(w2.shape, dtype=torch.float32, device=x.device)
    if rows:
        grid, meta = monarch_plan(rows, w1.shape, w2.shape)
        monarch_backward_kernel[grid](x, w1, w2, grad, dx, dw1, dw2, rows, **meta)
    return dx, dw1.to(w1.dtype), dw2.to(w2.dtype)
