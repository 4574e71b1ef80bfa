"""Triton butterfly and Monarch multiplies.

Butterfly (``butterfly_forward``/``butterfly_backward``), layout and semantics as in
:mod:`fastspec.reference.butterfly`. Bytes and flops: a factor is 6 flops a pair (3 an element) and
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

Monarch (``monarch_forward``/``monarch_backward``): a program takes BM rows and works in
two phases. Phase 1, per block k: (BM, p) @ (p, q) with ``tl.dot``, the result stored into
the program's float32 scratch in the second stage's layout (l, BM, r) (the (r, l) → (l, r)
permutation of fly's reshape is the store's indexing). Phase 2, per block l: the (BM, r)
slice read back, @ (r, s), stored at the output's entries s·l_count + l (fly's output
permutation, also in the indexing). One launch from load to store: x read once, y written
once, the intermediate (4 bytes an entry of a row) written and read once by the program that
made it, so it is mostly still in L2. A program holds one block of weights at a time, not
all of them: holding the whole batched product in registers (the first design) spilled or
failed to compile on sm_90 at every benchmark size. The backward recomputes the
intermediate the same way, then in phases: dw2 += gᵀ·h per block l, the gradient of h written
over h, dw1 += dhᵀ·x and dx = dh·w1 per block k; dw1 and dw2 summed over the program's rows
and added atomically (float32). Block sizes must be powers of two from 16 to 128 (``tl.dot``
tiles; any block counts); float32 dots in IEEE precision (``input_precision="ieee"``), half
precision on the tensor cores with float32 accumulation (the intermediate rounded to the
input's dtype before the second product).
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
BACKWARD_ROW_MAX = 2**10
"""Longest (sub-)row of a backward launch: its F factors are recomputed F(F+1)/2 times, and
one 4096-entry row (12 factors) spilled 400–2500 bytes on sm_90 at 4–16 warps where four
rows of 1024 (10 factors) spill nothing. Rows up to 2^20 take at most two launches a block."""


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


def _launches(log_n: int, nblocks: int, increasing_stride: bool, row_max: int) -> list[dict]:
    """The launches of one product in order (sub-rows of at most ``row_max`` entries): the
    constexpr arguments of each."""
    n = 1 << log_n
    if n <= row_max:
        return [dict(BLOCK0=0, NBLOCKS=nblocks, INCREASING=increasing_stride, L=n, LOG_L=log_n, SUB=1, LOG_SUB=0)]
    log_l1 = (row_max.bit_length() - 1)
    low = dict(L=1 << log_l1, LOG_L=log_l1, SUB=1, LOG_SUB=0)
    high = dict(L=n >> log_l1, LOG_L=log_n - log_l1, SUB=1 << log_l1, LOG_SUB=log_l1)
    launches, increasing = [], increasing_stride
    for block in range(nblocks):
        for part in ((low, high) if increasing else (high, low)):
            launches.append(dict(BLOCK0=block, NBLOCKS=1, INCREASING=increasing, **part))
        increasing = not increasing
    return launches


def _grid_args(batch: int, n: int, launch: dict, tile_max: int) -> tuple[int, int, int]:
    """(R, TILES, programs along the batch) of a launch. Sub-rows of one row need their own
    twiddles (R·L/2 pairs a factor, not L/2), so their tiles are half as long and at least two
    a row (TILES > 1 marks them)."""
    L = launch["L"]
    if L == n:  # whole rows; at most 16 (their twiddle gradients are summed in registers)
        R = min(max(1, tile_max // L), 16, triton.next_power_of_2(max(batch, 1)))
        return R, 1, triton.cdiv(batch, R)
    subrows = n // L
    R = min(max(1, tile_max // (2 * L)), subrows // 2)
    return R, subrows // R, batch * (subrows // R)


def butterfly_plan(batch: int, nstacks: int, n: int, nblocks: int, increasing_stride: bool,
                   backward: bool = False) -> list[tuple]:
    """The launches of one product in order, each (grid, meta) (``meta`` holds num_warps);
    ``backward``: the plan whose launches the backward kernel runs in reverse (smaller tiles,
    and a warp for every 256 entries of a sub-row tile: sm_90 spills with fewer)."""
    plan = []
    tile_max, row_max = (BACKWARD_TILE_MAX, BACKWARD_ROW_MAX) if backward else (TILE_MAX, TILE_MAX)
    for launch in _launches(n.bit_length() - 1, nblocks, increasing_stride, row_max):
        R, tiles, programs = _grid_args(batch, n, launch, tile_max)
        per_warp = 256 if backward and tiles > 1 else 1024
        meta = dict(LOG_N=n.bit_length() - 1, NBLOCKS_TOTAL=nblocks, R=R, TILES=tiles, **launch,
                    num_warps=min(16, max(1, R * launch["L"] // per_warp)))
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
def _monarch_stage1(x_ptr, w1_ptr, rows, row0, kk, K: tl.constexpr, Q: tl.constexpr,
                    P: tl.constexpr, L: tl.constexpr, R: tl.constexpr, BM: tl.constexpr):
    """Block kk of blockdiag(w1) on the program's BM rows: (BM, P) @ (P, Q), stored to the
    scratch in stage 2's layout. Returns the x block (BM, P) and the entries' scratch offsets."""
    bl = tl.arange(0, BM)[:, None]
    b = row0 + bl
    xb = tl.load(x_ptr + b.to(tl.int64) * (K * P) + kk * P + tl.arange(0, P)[None, :], mask=b < rows, other=0.0)
    w = tl.load(w1_ptr + kk * (Q * P) + tl.arange(0, Q)[:, None] * P + tl.arange(0, P)[None, :])
    e = kk * Q + tl.arange(0, Q)[None, :]  # the entries' index in the row's k·q intermediate
    return xb, w, (e % L) * (BM * R) + bl * R + e // L


@triton.jit
def _monarch_out_offsets(row0, ll, L: tl.constexpr, S: tl.constexpr, BM: tl.constexpr):
    """Offsets of output block ll, (BM, S): entry s·L + l of each row (fly's output permutation)."""
    b = row0 + tl.arange(0, BM)[:, None]
    return b, b.to(tl.int64) * (L * S) + tl.arange(0, S)[None, :] * L + ll


@triton.jit
def monarch_kernel(x_ptr, w1_ptr, w2_ptr, out_ptr, scratch_ptr, rows, K: tl.constexpr, Q: tl.constexpr,
                   P: tl.constexpr, L: tl.constexpr, S: tl.constexpr, R: tl.constexpr, BM: tl.constexpr):
    """BM rows: y = P₂·blockdiag(w2)·P₁·blockdiag(w1)·x. Phase 1 writes blockdiag(w1)·x into
    the program's scratch (L, BM, R) float32, phase 2 reads it back block by block."""
    pid = tl.program_id(0)
    row0 = pid * BM
    scratch_ptr += pid.to(tl.int64) * (BM * L * R)
    for kk in range(K):
        xb, w, offs = _monarch_stage1(x_ptr, w1_ptr, rows, row0, kk, K, Q, P, L, R, BM)
        tl.store(scratch_ptr + offs, tl.dot(xb, tl.trans(w), input_precision="ieee", out_dtype=tl.float32))
    tl.debug_barrier()  # phase 2 reads what other threads of the program wrote
    rr = tl.arange(0, R)
    for ll in range(L):
        h = tl.load(scratch_ptr + ll * (BM * R) + tl.arange(0, BM)[:, None] * R + rr[None, :]).to(x_ptr.dtype.element_ty)
        w = tl.load(w2_ptr + ll * (S * R) + tl.arange(0, S)[:, None] * R + rr[None, :])
        b, out_offs = _monarch_out_offsets(row0, ll, L, S, BM)
        y = tl.dot(h, tl.trans(w), input_precision="ieee", out_dtype=tl.float32)
        tl.store(out_ptr + out_offs, y.to(out_ptr.dtype.element_ty), mask=b < rows)


@triton.jit
def monarch_backward_kernel(x_ptr, w1_ptr, w2_ptr, grad_ptr, dx_ptr, dw1_ptr, dw2_ptr, scratch_ptr, rows,
                            K: tl.constexpr, Q: tl.constexpr, P: tl.constexpr, L: tl.constexpr, S: tl.constexpr,
                            R: tl.constexpr, BM: tl.constexpr):
    """BM rows of the backward, in phases through the program's scratch: the forward's phase 1
    (the intermediate h recomputed); per block l, dw2[l] += gᵀ·h; per block l, the gradient
    of h, g·w2[l], written over h; per block k, dw1[k] += dhᵀ·x; per block k, dx = dh·w1[k].
    One product a loop keeps the registers of one product live. dw1 and dw2 (float32) are
    summed over the program's rows and added atomically."""
    pid = tl.program_id(0)
    row0 = pid * BM
    scratch_ptr += pid.to(tl.int64) * (BM * L * R)
    for kk in range(K):
        xb, w, offs = _monarch_stage1(x_ptr, w1_ptr, rows, row0, kk, K, Q, P, L, R, BM)
        tl.store(scratch_ptr + offs, tl.dot(xb, tl.trans(w), input_precision="ieee", out_dtype=tl.float32))
    tl.debug_barrier()
    h_offs = tl.arange(0, BM)[:, None] * R + tl.arange(0, R)[None, :]
    w2_offs = tl.arange(0, S)[:, None] * R + tl.arange(0, R)[None, :]
    for ll in range(L):
        h = tl.load(scratch_ptr + ll * (BM * R) + h_offs).to(x_ptr.dtype.element_ty)
        b, out_offs = _monarch_out_offsets(row0, ll, L, S, BM)
        g = tl.load(grad_ptr + out_offs, mask=b < rows, other=0.0)  # (BM, S)
        tl.atomic_add(dw2_ptr + ll * (S * R) + w2_offs,
                      tl.dot(tl.trans(g), h, input_precision="ieee", out_dtype=tl.float32))
    tl.debug_barrier()  # every h is read before the gradients overwrite it
    for ll in range(L):
        b, out_offs = _monarch_out_offsets(row0, ll, L, S, BM)
        g = tl.load(grad_ptr + out_offs, mask=b < rows, other=0.0)
        dh = tl.dot(g, tl.load(w2_ptr + ll * (S * R) + w2_offs), input_precision="ieee", out_dtype=tl.float32)
        tl.store(scratch_ptr + ll * (BM * R) + h_offs, dh)
    tl.debug_barrier()
    w1_offs = tl.arange(0, Q)[:, None] * P + tl.arange(0, P)[None, :]
    for kk in range(K):
        xb, w, offs = _monarch_stage1(x_ptr, w1_ptr, rows, row0, kk, K, Q, P, L, R, BM)
        dh = tl.load(scratch_ptr + offs).to(x_ptr.dtype.element_ty)  # (BM, Q)
        tl.atomic_add(dw1_ptr + kk * (Q * P) + w1_offs,
                      tl.dot(tl.trans(dh), xb, input_precision="ieee", out_dtype=tl.float32))
    for kk in range(K):
        xb, w, offs = _monarch_stage1(x_ptr, w1_ptr, rows, row0, kk, K, Q, P, L, R, BM)
        dh = tl.load(scratch_ptr + offs).to(x_ptr.dtype.element_ty)
        b = row0 + tl.arange(0, BM)[:, None]
        tl.store(dx_ptr + b.to(tl.int64) * (K * P) + kk * P + tl.arange(0, P)[None, :],
                 tl.dot(dh, w, input_precision="ieee", out_dtype=tl.float32).to(dx_ptr.dtype.element_ty),
                 mask=b < rows)


MONARCH_BLOCK_MAX = 128
"""Largest block side q, p, s, r: a program holds a (q, p) block of w1 and a (BM, p) block of x."""


def monarch_unsupported(w1_shape, w2_shape) -> str | None:
    """None if the Triton kernel takes these block shapes, else why not."""
    k, q, p = w1_shape
    l, s, r = w2_shape
    sides = (q, p, s, r)
    if any(d & (d - 1) for d in sides) or min(sides) < 16 or max(sides) > MONARCH_BLOCK_MAX:
        return f"the triton backend takes block sizes q, p, s, r that are powers of two from 16 to " \
               f"{MONARCH_BLOCK_MAX}, got w1 {tuple(w1_shape)}, w2 {tuple(w2_shape)}"
    return None


def monarch_plan(rows: int, w1_shape, w2_shape) -> tuple[tuple[int], dict]:
    """(grid, meta) of the forward and the backward kernel: BM rows a program, fewer for wider
    blocks, so that one product's blocks stay in registers (float32 products run on the FMA
    units: sm_90 compiles of the benchmark shapes spill with twice these rows,
    tests/test_butterfly_triton_sm90.py)."""
    k, q, p = w1_shape
    l, s, r = w2_shape
    side = max(q, p, s, r)
    bm = 64 if side <= 32 else 32 if side <= 64 else 16
    meta = dict(K=k, Q=q, P=p, L=l, S=s, R=r, BM=bm, num_warps=4 if side <= 32 else 8)
    return (triton.cdiv(rows, bm),), meta


def _monarch_scratch(grid, meta, device) -> torch.Tensor:
    """Each program's intermediate, float32 (L, BM, R): one row of k·q entries a row."""
    return torch.empty(grid[0] * meta["BM"] * meta["L"] * meta["R"], dtype=torch.float32, device=device)


def monarch_forward(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """x (..., k·p), w1 (k, q, p), w2 (l, s, r), contiguous, one dtype → (..., l·s)."""
    k, q, p = w1.shape
    l, s, r = w2.shape
    rows = x.numel() // (k * p)
    out = torch.empty(*x.shape[:-1], l * s, dtype=x.dtype, device=x.device)
    if rows:
        grid, meta = monarch_plan(rows, w1.shape, w2.shape)
        monarch_kernel[grid](x, w1, w2, out, _monarch_scratch(grid, meta, x.device), rows, **meta)
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
        monarch_backward_kernel[grid](x, w1, w2, grad, dx, dw1, dw2, _monarch_scratch(grid, meta, x.device), rows,
                                      **meta)
    return dx, dw1.to(w1.dtype), dw2.to(w2.dtype)
