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
    tile = SCAN_TILE // (2 if tokens.is_complex() else 1)  # complex: four planes in registers
    block_t = min(triton.next_power_of_2(T), SCAN_MAX_T, tile)
    block_r = max(1, min(tile // block_t, triton.next_power_of_2(rows)))
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


# ----------------------------------------------------------------------------- selective scan

SELECTIVE_MAX_N = 256
"""Largest state size N: a program keeps its channels' whole state (N_PAD each) in registers."""
SELECTIVE_TILE = 4096
"""Elements of a (channels × N_PAD × steps) tile at the most."""
SELECTIVE_MAX_D = 4
"""Channels per program at the most (forward)."""
SELECTIVE_BWD_TILE = 1024
"""Elements of a (channels × N_PAD × steps) tile of the backward at the most: it keeps about
ten such tiles live (decays, inputs, states, λ, ...); ptxas spills above this at 4 warps."""


def _n_pad(N: int) -> int:
    return max(2, triton.next_power_of_2(N))


def selective_chunk(N: int, L: int) -> int:
    """Time steps per chunk for state size N and length L (also the spacing of the saved
    chunk states): a power of two, at most L rounded up."""
    return min(256, max(16, SELECTIVE_TILE // (SELECTIVE_MAX_D * _n_pad(N))), triton.next_power_of_2(L))


@triton.jit
def _log1p(y):
    """log(1 + y) for y ≥ 0 to a few ulp (Kahan: log(w)·y/(w − 1) with w = 1 + y rounded)."""
    w = 1.0 + y
    return tl.where(w == 1.0, y, tl.log(w) * (y / (w - 1.0)))


@triton.jit
def _softplus(x):
    """F.softplus: log(1 + exp(x)), the identity above 20."""
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + _log1p(tl.exp(-tl.abs(x))))


@triton.jit
def _load_dt(delta_ptr, off, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, acc: tl.constexpr):
    """(Δ, Δ before softplus) of a (channels, steps) tile."""
    raw = tl.load(delta_ptr + off, mask=mask, other=0.0).to(acc)
    if HAS_BIAS:
        raw += bias[:, None]
    dt = _softplus(raw) if SOFTPLUS else raw
    return dt, raw


@triton.jit
def _load_bc(ptr, fixed, base, n, l, mask, L, VAR: tl.constexpr, acc: tl.constexpr):
    """B or C for a chunk as a (channels or 1, N_PAD, steps or 1) tile."""
    if VAR:
        tile = tl.load(ptr + base + n[:, None] * L + l[None, :], mask=mask, other=0.0).to(acc)[None, :, :]
    else:
        tile = fixed[:, :, None]
    return tile


@triton.jit
def _selective_chunk(u_ptr, delta_ptr, B_ptr, C_ptr, A, Bfix, Cfix, bias, x0, row, l, dmask, n, nmask, L,
                     b_base, c_base, VAR_B: tl.constexpr, VAR_C: tl.constexpr, HAS_BIAS: tl.constexpr,
                     SOFTPLUS: tl.constexpr, acc: tl.constexpr):
    """One chunk of steps l for channels ``row``: the scan from x0 (channels, N_PAD).
    Returns u, Δ, Δ before softplus (channels, steps), B and C tiles, the decays, the
    tokens Δ·B·u and the states x (channels, N_PAD, steps); padded steps are identities."""
    lmask = l < L
    mask = dmask[:, None] & lmask[None, :]
    off = row[:, None] * L + l[None, :]
    u = tl.load(u_ptr + off, mask=mask, other=0.0).to(acc)
    dt, raw = _load_dt(delta_ptr, off, mask, bias, HAS_BIAS, SOFTPLUS, acc)
    nl_mask = nmask[:, None] & lmask[None, :]
    Bt = _load_bc(B_ptr, Bfix, b_base, n, l, nl_mask, L, VAR_B, acc)
    Ct = _load_bc(C_ptr, Cfix, c_base, n, l, nl_mask, L, VAR_C, acc)
    decay = tl.where(lmask[None, None, :], tl.exp(dt[:, None, :] * A[:, :, None]), 1.0)
    tokens = (dt * u)[:, None, :] * Bt
    cum_a, cum_b = tl.associative_scan((decay, tokens), 2, _first_order)
    x = cum_a * x0[:, :, None] + cum_b
    return u, dt, raw, Bt, Ct, decay, tokens, x


@triton.jit
def _selective_setup(A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, D, L, N, b_groups, c_groups,
                     VAR_B: tl.constexpr, VAR_C: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                     acc: tl.constexpr, BLOCK_D: tl.constexpr, N_PAD: tl.constexpr):
    """A program's channels and their parameters: (d, row, dmask, n, nmask, A, fixed B,
    fixed C, D, bias, offsets of this batch's (group's) input-dependent B and C)."""
    first = tl.program_id(0) * BLOCK_D
    b = tl.program_id(1).to(tl.int64)
    d = first + tl.arange(0, BLOCK_D)
    dmask = d < D
    row = b * D + d
    n = tl.arange(0, N_PAD)
    nmask = n < N
    dn_mask = dmask[:, None] & nmask[None, :]
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=dn_mask, other=0.0).to(acc)
    Dv = tl.load(D_ptr + d, mask=dmask, other=0.0).to(acc) if HAS_D else tl.zeros((BLOCK_D,), acc)
    bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(acc) if HAS_BIAS else tl.zeros((BLOCK_D,), acc)
    # input-dependent B/C: the program's channels all read one group (BLOCK_D divides D / G)
    b_base = (b * b_groups + first // (D // b_groups)) * N * L if VAR_B else 0
    c_base = (b * c_groups + first // (D // c_groups)) * N * L if VAR_C else 0
    Bfix = tl.zeros((BLOCK_D, N_PAD), acc) if VAR_B else tl.load(B_ptr + d[:, None] * N + n[None, :], mask=dn_mask,
                                                                 other=0.0).to(acc)
    Cfix = tl.zeros((BLOCK_D, N_PAD), acc) if VAR_C else tl.load(C_ptr + d[:, None] * N + n[None, :], mask=dn_mask,
                                                                 other=0.0).to(acc)
    return d, row, dmask, n, nmask, A, Bfix, Cfix, Dv, bias, b_base, c_base


@triton.jit
def _selective_fwd_kernel(u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, x0_ptr,
                          out_ptr, last_ptr, starts_ptr, D, L, N, b_groups, c_groups, n_chunks,
                          VAR_B: tl.constexpr, VAR_C: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                          HAS_BIAS: tl.constexpr, HAS_X0: tl.constexpr, SOFTPLUS: tl.constexpr, WIDE: tl.constexpr,
                          BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, BLOCK_L: tl.constexpr):
    """Forward over the chunks of one batch element and BLOCK_D channels: writes out, the
    state before each chunk (starts) and the last state; the state stays in registers."""
    acc = tl.float64 if WIDE else tl.float32
    d, row, dmask, n, nmask, A, Bfix, Cfix, Dv, bias, b_base, c_base = _selective_setup(
        A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, D, L, N, b_groups, c_groups, VAR_B, VAR_C, HAS_D, HAS_BIAS, acc,
        BLOCK_D, N_PAD)
    dn_mask = dmask[:, None] & nmask[None, :]
    state_off = row[:, None] * N + n[None, :]
    x = tl.load(x0_ptr + state_off, mask=dn_mask, other=0.0).to(acc) if HAS_X0 else tl.zeros((BLOCK_D, N_PAD), acc)
    for c in range(0, n_chunks):
        l = c * BLOCK_L + tl.arange(0, BLOCK_L)
        tl.store(starts_ptr + state_off * n_chunks + c, x, mask=dn_mask)
        u, dt, raw, Bt, Ct, decay, tokens, xs = _selective_chunk(
            u_ptr, delta_ptr, B_ptr, C_ptr, A, Bfix, Cfix, bias, x, row, l, dmask, n, nmask, L, b_base, c_base,
            VAR_B, VAR_C, HAS_BIAS, SOFTPLUS, acc)
        x = tl.sum(tl.where(l[None, None, :] == c * BLOCK_L + BLOCK_L - 1, xs, 0.0), 2)
        y = tl.sum(xs * Ct, 1) + Dv[:, None] * u
        mask = dmask[:, None] & (l < L)[None, :]
        off = row[:, None] * L + l[None, :]
        if HAS_Z:
            zz = tl.load(z_ptr + off, mask=mask, other=0.0).to(acc)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + off, y.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(last_ptr + state_off, x, mask=dn_mask)


@triton.jit
def _selective_bwd_kernel(gout_ptr, glast_ptr, u_ptr, delta_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr,
                          starts_ptr, du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dx0_ptr,
                          D, L, N, b_groups, c_groups, n_chunks,
                          VAR_B: tl.constexpr, VAR_C: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                          HAS_BIAS: tl.constexpr, HAS_GLAST: tl.constexpr, SOFTPLUS: tl.constexpr,
                          WIDE: tl.constexpr, ATOMIC: tl.constexpr,
                          BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, BLOCK_L: tl.constexpr):
    """Backward over the chunks of one batch element and BLOCK_D channels, last chunk first:
    each chunk's states are recomputed from its saved start, then λ = ∂loss/∂x by a reverse
    scan, λ_l = g_l·C_l + exp(Δ_{l+1}A)·λ_{l+1}, its value entering from the next chunk
    carried as μ = exp(Δ_first·A)·λ_first. Per-channel gradients are stored per batch
    element (dA, dD, dbias, fixed dB/dC: (batch, D, ...), summed by the launcher);
    input-dependent dB/dC sum over the program's channels, then over programs by atomics
    (ATOMIC) or into one slice per program of a partial buffer (deterministic)."""
    acc = tl.float64 if WIDE else tl.float32
    d, row, dmask, n, nmask, A, Bfix, Cfix, Dv, bias, b_base, c_base = _selective_setup(
        A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, D, L, N, b_groups, c_groups, VAR_B, VAR_C, HAS_D, HAS_BIAS, acc,
        BLOCK_D, N_PAD)
    dn_mask = dmask[:, None] & nmask[None, :]
    state_off = row[:, None] * N + n[None, :]
    mu = tl.load(glast_ptr + state_off, mask=dn_mask, other=0.0).to(acc) if HAS_GLAST else tl.zeros(
        (BLOCK_D, N_PAD), acc)
    # sums over time of the parameters' gradients: each chunk's sum added up in float64
    dA = tl.zeros((BLOCK_D, N_PAD), tl.float64)
    dBfix = tl.zeros((BLOCK_D, N_PAD), tl.float64)
    dCfix = tl.zeros((BLOCK_D, N_PAD), tl.float64)
    dD = tl.zeros((BLOCK_D,), tl.float64)
    dbias = tl.zeros((BLOCK_D,), tl.float64)
    # input-dependent dB/dC: a whole (batch, group) slice per program (atomics) or per program's slot
    b_slot = (tl.program_id(0) * BLOCK_D % (D // b_groups)) // BLOCK_D if VAR_B else 0
    c_slot = (tl.program_id(0) * BLOCK_D % (D // c_groups)) // BLOCK_D if VAR_C else 0
    b_out = b_base if ATOMIC else b_base + b_slot * tl.num_programs(1) * b_groups * N * L
    c_out = c_base if ATOMIC else c_base + c_slot * tl.num_programs(1) * c_groups * N * L
    for k in range(0, n_chunks):
        c = n_chunks - 1 - k
        l = c * BLOCK_L + tl.arange(0, BLOCK_L)
        lmask = l < L
        mask = dmask[:, None] & lmask[None, :]
        off = row[:, None] * L + l[None, :]
        x0 = tl.load(starts_ptr + state_off * n_chunks + c, mask=dn_mask, other=0.0)
        u, dt, raw, Bt, Ct, decay, tokens, xs = _selective_chunk(
            u_ptr, delta_ptr, B_ptr, C_ptr, A, Bfix, Cfix, bias, x0, row, l, dmask, n, nmask, L, b_base, c_base,
            VAR_B, VAR_C, HAS_BIAS, SOFTPLUS, acc)
        g = tl.load(gout_ptr + off, mask=mask, other=0.0).to(acc)
        if HAS_Z:
            zz = tl.load(z_ptr + off, mask=mask, other=0.0).to(acc)
            sz = tl.sigmoid(zz)
            pre = tl.sum(xs * Ct, 1) + Dv[:, None] * u
            tl.store(dz_ptr + off, (g * pre * sz * (1.0 + zz * (1.0 - sz))).to(dz_ptr.dtype.element_ty), mask=mask)
            g = g * zz * sz
        dD += tl.sum(g * u, 1).to(tl.float64)
        # the gate of step l in the reverse scan is step l+1's decay; 1 at the chunk's last
        # step, where the carry μ enters
        nxt = l + 1
        nxt_mask = dmask[:, None] & ((nxt < L) & (tl.arange(0, BLOCK_L) < BLOCK_L - 1))[None, :]
        dt_next, _ = _load_dt(delta_ptr, off + 1, nxt_mask, bias, HAS_BIAS, SOFTPLUS, acc)
        gate = tl.where(nxt_mask[:, None, :], tl.exp(dt_next[:, None, :] * A[:, :, None]), 1.0)
        cum_a, cum_b = tl.associative_scan((gate, g[:, None, :] * Ct), 2, _first_order, reverse=True)
        lam = cum_a * mu[:, :, None] + cum_b
        mu = tl.sum(tl.where(l[None, None, :] == c * BLOCK_L, decay * lam, 0.0), 2)
        lam = tl.where(lmask[None, None, :], lam, 0.0)
        before = xs - tokens  # exp(Δ_l A)·x_{l−1}
        dA += tl.sum(lam * before * dt[:, None, :], 2).to(tl.float64)
        ddt = tl.sum(lam * (Bt * u[:, None, :] + before * A[:, :, None]), 1)
        if SOFTPLUS:
            ddt = tl.where(raw > 20.0, ddt, ddt * tl.sigmoid(raw))
        ddt = tl.where(mask, ddt, 0.0)
        dbias += tl.sum(ddt, 1).to(tl.float64)
        du = g * Dv[:, None] + tl.sum(lam * Bt, 1) * dt
        tl.store(du_ptr + off, du.to(du_ptr.dtype.element_ty), mask=mask)
        tl.store(ddelta_ptr + off, ddt.to(ddelta_ptr.dtype.element_ty), mask=mask)
        grad_b = lam * (dt * u)[:, None, :]
        grad_c = g[:, None, :] * xs
        nl = n[:, None] * L + l[None, :]
        nl_mask = nmask[:, None] & lmask[None, :]
        if VAR_B:
            if ATOMIC:
                tl.atomic_add(dB_ptr + b_out + nl, tl.sum(grad_b, 0), mask=nl_mask)
            else:
                tl.store(dB_ptr + b_out + nl, tl.sum(grad_b, 0), mask=nl_mask)
        else:
            dBfix += tl.sum(grad_b, 2).to(tl.float64)
        if VAR_C:
            if ATOMIC:
                tl.atomic_add(dC_ptr + c_out + nl, tl.sum(grad_c, 0), mask=nl_mask)
            else:
                tl.store(dC_ptr + c_out + nl, tl.sum(grad_c, 0), mask=nl_mask)
        else:
            dCfix += tl.sum(grad_c, 2).to(tl.float64)
    tl.store(dx0_ptr + state_off, mu, mask=dn_mask)
    tl.store(dA_ptr + state_off, dA, mask=dn_mask)
    tl.store(dD_ptr + row, dD, mask=dmask)
    tl.store(dbias_ptr + row, dbias, mask=dmask)
    if not VAR_B:
        tl.store(dB_ptr + state_off, dBfix, mask=dn_mask)
    if not VAR_C:
        tl.store(dC_ptr + state_off, dCfix, mask=dn_mask)


def _groups(M: torch.Tensor) -> int:
    """Groups of an input-dependent B or C ((B, N, L): 1); 1 for a fixed one (unused)."""
    return M.shape[1] if M.dim() == 4 else 1


def _selective_plan(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, backward: bool = False) -> dict:
    """Block sizes: BLOCK_D channels per program (a power of two dividing each grouped
    B/C's channels per group; fewer for the backward), N_PAD, BLOCK_L = selective_chunk(N, L)."""
    D, N = A.shape
    n_pad, block_l = _n_pad(N), selective_chunk(N, u.shape[-1])
    block_d = max(1, min(SELECTIVE_MAX_D, (SELECTIVE_BWD_TILE if backward else SELECTIVE_TILE) // (n_pad * block_l)))
    while block_d > 1 and any(D // M.shape[1] % block_d for M in (B, C) if M.dim() == 4):
        block_d //= 2
    warps = 8 if backward and block_d * n_pad * block_l > SELECTIVE_BWD_TILE else 4
    return dict(VAR_B=B.dim() > 2, VAR_C=C.dim() > 2, WIDE=u.dtype == torch.float64, BLOCK_D=block_d,
                N_PAD=n_pad, BLOCK_L=block_l, num_warps=warps)


def _contiguous(*tensors):
    return [None if t is None else t.contiguous() for t in tensors]


def selective_forward_call(u, delta, A, B, C, D, z, delta_bias, x0, softplus, out, last, starts):
    """The launch (kernel, grid, args, meta) of the forward; also used to compile it ahead of time."""
    batch, channels, length = u.shape
    meta = _selective_plan(u, A, B, C)
    meta.update(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, HAS_X0=x0 is not None,
                SOFTPLUS=softplus)
    dummy = A
    args = (u, delta, dummy if z is None else z, A, B, C, dummy if D is None else D,
            dummy if delta_bias is None else delta_bias, dummy if x0 is None else x0, out, last, starts,
            channels, length, A.shape[1], _groups(B), _groups(C), starts.shape[-1])
    return _selective_fwd_kernel, (triton.cdiv(channels, meta["BLOCK_D"]), batch), args, meta


def selective_scan_forward(u, delta, A, B, C, D, z, delta_bias, x0, softplus):
    """(out, last, starts) of the selective scan; see fastspec.ops.ssm.Selective."""
    u, delta, A, B, C, D, z, delta_bias, x0 = _contiguous(u, delta, A, B, C, D, z, delta_bias, x0)
    batch, channels, length = u.shape
    N = A.shape[1]
    out = torch.empty_like(u)
    last = torch.empty(batch, channels, N, dtype=A.dtype, device=u.device)
    starts = torch.empty(batch, channels, N, triton.cdiv(length, selective_chunk(N, length)), dtype=A.dtype,
                         device=u.device)
    if batch * channels:
        kernel, grid, args, meta = selective_forward_call(u, delta, A, B, C, D, z, delta_bias, x0, softplus, out,
                                                          last, starts)
        kernel[grid](*args, **meta)
    return out, last, starts


def selective_backward_call(grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, starts, softplus,
                            deterministic):
    """The backward launch (kernel, grid, args, meta) and the buffers it writes (a dict:
    du, ddelta, dz, per-batch dA, dD, dbias, dx0, and dB, dC: per batch for a fixed B/C, else
    one slot per program (deterministic) or one shared, zeroed slot (atomics))."""
    batch, channels, length = u.shape
    N = A.shape[1]
    meta = _selective_plan(u, A, B, C, backward=True)
    meta.update(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                HAS_GLAST=grad_last is not None, SOFTPLUS=softplus, ATOMIC=not deterministic)
    acc, f64 = A.dtype, torch.float64

    def var_buffer(M):
        if M.dim() == 2:
            return torch.empty(batch, channels, N, dtype=f64, device=u.device)
        slots = 1 if not deterministic else triton.cdiv(channels // _groups(M), meta["BLOCK_D"])
        return torch.zeros(slots, batch, _groups(M), N, length, dtype=acc, device=u.device)

    buffers = dict(du=torch.empty_like(u), ddelta=torch.empty_like(u), dz=torch.empty_like(u) if z is not None else None,
                   dA=torch.empty(batch, channels, N, dtype=f64, device=u.device), dB=var_buffer(B), dC=var_buffer(C),
                   dD=torch.empty(batch, channels, dtype=f64, device=u.device),
                   dbias=torch.empty(batch, channels, dtype=f64, device=u.device),
                   dx0=torch.empty(batch, channels, N, dtype=acc, device=u.device))
    dummy = A
    args = (grad_out, dummy if grad_last is None else grad_last, u, delta, dummy if z is None else z, A, B, C,
            dummy if D is None else D, dummy if delta_bias is None else delta_bias, starts,
            *(dummy if buffers[k] is None else buffers[k] for k in ("du", "ddelta", "dz", "dA", "dB", "dC", "dD",
                                                                   "dbias", "dx0")),
            channels, length, N, _groups(B), _groups(C), starts.shape[-1])
    return _selective_bwd_kernel, (triton.cdiv(channels, meta["BLOCK_D"]), batch), args, meta, buffers


def selective_scan_backward(grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, x0, starts, softplus, needs,
                            deterministic):
    """The nine gradients of the selective scan (None where ``needs`` is False); see
    fastspec.ops.ssm.Selective. ``deterministic``: no float atomics."""
    grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, starts = _contiguous(
        grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, starts)
    kernel, grid, args, meta, b = selective_backward_call(grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias,
                                                         starts, softplus, deterministic)
    if u.shape[0] * u.shape[1]:
        kernel[grid](*args, **meta)
    else:
        for key in ("dA", "dD", "dbias", "dx0") + (("dB",) if B.dim() == 2 else ()) + (("dC",) if C.dim() == 2 else ()):
            b[key].zero_()
    acc, f64 = A.dtype, torch.float64

    def reduce(grad, M):  # the per-batch (fixed) or per-program (slots) parts, added in float64
        return grad.sum(0, dtype=f64).reshape(M.shape).to(M.dtype)

    grads = (b["du"], b["ddelta"], b["dA"].sum(0).to(acc), reduce(b["dB"], B), reduce(b["dC"], C),
             b["dD"].sum(0).to(acc) if D is not None else None, b["dz"],
             b["dbias"].sum(0).to(acc) if delta_bias is not None else None, b["dx0"])
    return tuple(g if need else None for g, need in zip(grads, needs))


# ----------------------------------------------------------------------------- S4D Vandermonde kernel

VANDERMONDE_MAX_N = 1024
"""Largest N: the forward holds every mode of a channel against a block of steps."""
VANDERMONDE_TILE = 2048
"""Elements (modes × steps) of one tile (the float64 phases take two registers each)."""


@triton.jit
def _powers(zr, turns, l, acc: tl.constexpr):
    """exp(l·ζ) for modes ζ (float64 Re ζ and Im ζ / 2π, (modes,)) and steps l: (real,
    imaginary) tiles (modes, steps) in ``acc``. Each power is computed directly: the phase
    in turns, l·Im ζ/2π, is formed and reduced to [−½, ½] in float64, so its error does not
    grow with l; cos, sin and the magnitude exp(l·Re ζ) are then taken in ``acc``."""
    lf = l.to(tl.float64)[None, :]
    t = turns[:, None] * lf
    angle = ((t - tl.floor(t + 0.5)).to(acc)) * 6.283185307179586
    mag = tl.exp((zr[:, None] * lf).to(acc))
    return mag * tl.cos(angle), mag * tl.sin(angle)


@triton.jit
def _vandermonde_kernel(vr_ptr, vi_ptr, zr_ptr, turns_ptr, out_ptr, N, L,
                        WIDE: tl.constexpr, N_PAD: tl.constexpr, BLOCK_L: tl.constexpr):
    """K[h, l] = 2·Re Σ_n v·exp(lζ) for one channel h and a block of steps; memory O(N + L)."""
    acc = tl.float64 if WIDE else tl.float32
    h = tl.program_id(0).to(tl.int64)
    n = tl.arange(0, N_PAD)
    nmask = n < N
    vr = tl.load(vr_ptr + h * N + n, mask=nmask, other=0.0).to(acc)
    vi = tl.load(vi_ptr + h * N + n, mask=nmask, other=0.0).to(acc)
    zr = tl.load(zr_ptr + h * N + n, mask=nmask, other=0.0)
    turns = tl.load(turns_ptr + h * N + n, mask=nmask, other=0.0)
    l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    wr, wi = _powers(zr, turns, l, acc)
    K = 2.0 * tl.sum(vr[:, None] * wr - vi[:, None] * wi, 0)
    tl.store(out_ptr + h * L + l, K.to(out_ptr.dtype.element_ty), mask=l < L)


@triton.jit
def _vandermonde_bwd_kernel(grad_ptr, zr_ptr, turns_ptr, g_ptr, g1_ptr, N, L,
                            BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """G = Σ_l dK_l·exp(lζ) and G' = Σ_l l·dK_l·exp(lζ) for one channel and a block of modes,
    over all steps block by block, in float64: these sums of L terms cancel (a decaying,
    rotating series), and float32 powers left errors up to 3e-6 in the gradients. Written as
    (real, imaginary) pairs. Memory O(N + L)."""
    acc = tl.float64
    h = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    zr = tl.load(zr_ptr + h * N + n, mask=nmask, other=0.0)
    turns = tl.load(turns_ptr + h * N + n, mask=nmask, other=0.0)
    gr = tl.zeros((BLOCK_N,), tl.float64)
    gi = tl.zeros((BLOCK_N,), tl.float64)
    g1r = tl.zeros((BLOCK_N,), tl.float64)
    g1i = tl.zeros((BLOCK_N,), tl.float64)
    for start in range(0, L, BLOCK_L):
        l = start + tl.arange(0, BLOCK_L)
        g = tl.load(grad_ptr + h * L + l, mask=l < L, other=0.0).to(acc)[None, :]
        wr, wi = _powers(zr, turns, l, acc)
        gl = g * l.to(acc)[None, :]
        gr += tl.sum(wr * g, 1)
        gi += tl.sum(wi * g, 1)
        g1r += tl.sum(wr * gl, 1)
        g1i += tl.sum(wi * gl, 1)
    out = (h * N + n) * 2
    tl.store(g_ptr + out, gr, mask=nmask)
    tl.store(g_ptr + out + 1, gi, mask=nmask)
    tl.store(g1_ptr + out, g1r, mask=nmask)
    tl.store(g1_ptr + out + 1, g1i, mask=nmask)


def _modes(zeta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Re ζ, Im ζ / 2π) as contiguous float64 planes."""
    return zeta.real.contiguous(), (zeta.imag / (2 * torch.pi)).contiguous()


def vandermonde_call(v, zeta, out):
    """The forward launch (kernel, grid, args, meta) writing K into ``out`` (H, L)."""
    H, N = v.shape
    L = out.shape[1]
    n_pad = _n_pad(N)
    block_l = min(max(4, VANDERMONDE_TILE // n_pad), triton.next_power_of_2(L))
    zr, turns = _modes(zeta)
    meta = dict(WIDE=out.dtype == torch.float64, N_PAD=n_pad, BLOCK_L=block_l, num_warps=4)
    return _vandermonde_kernel, (H, triton.cdiv(L, block_l)), (v.real.contiguous(), v.imag.contiguous(), zr, turns,
                                                               out, N, L), meta


def vandermonde(v: torch.Tensor, zeta: torch.Tensor, L: int, dtype: torch.dtype) -> torch.Tensor:
    """K (H, L) = 2·Re Σ_n v·exp(lζ) in ``dtype``; v, ζ (H, N) complex128."""
    out = torch.empty(v.shape[0], L, dtype=dtype, device=v.device)
    if out.numel():
        kernel, grid, args, meta = vandermonde_call(v, zeta, out)
        kernel[grid](*args, **meta)
    return out


def vandermonde_backward_call(grad, zeta, G, G1):
    """The backward launch (kernel, grid, args, meta) writing G and G' ((H, N, 2) float64)."""
    H, N = zeta.shape
    L = grad.shape[1]
    block_n = min(_n_pad(N), 64)
    block_l = min(VANDERMONDE_TILE // block_n, triton.next_power_of_2(L))
    zr, turns = _modes(zeta)
    meta = dict(BLOCK_N=block_n, BLOCK_L=block_l, num_warps=4)
    return _vandermonde_bwd_kernel, (H, triton.cdiv(N, block_n)), (grad, zr, turns, G, G1, N, L), meta


def vandermonde_backward(grad: torch.Tensor, v: torch.Tensor, zeta: torch.Tensor):
    """(dv, dζ) = (2·conj(G), 2·conj(v·G')) complex128 for the gradient ``grad`` (H, L) of K."""
    G, G1 = (torch.zeros(*v.shape, 2, dtype=torch.float64, device=v.device) for _ in range(2))
    if v.numel():
        kernel, grid, args, meta = vandermonde_backward_call(grad.contiguous(), zeta, G, G1)
        kernel[grid](*args, **meta)
    G, G1 = torch.view_as_complex(G), torch.view_as_complex(G1)
    return 2 * torch.conj_physical(G), 2 * torch.conj_physical(v * G1)


# ----------------------------------------------------------------------------- decoding step


@triton.jit
def _state_update_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
                         heads, dim, N, groups, s_b, s_h, s_d, s_n, a_h, a_d, a_n,
                         HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                         WIDE: tl.constexpr, BLOCK_D: tl.constexpr, N_PAD: tl.constexpr):
    """One step for BLOCK_D rows of one (batch, head): state ← exp(ΔA)·state + Δ·x·B, y = C·state
    (+ D·x, · silu(z)). state and A by strides (A is often expanded); x, dt, z, out (batch,
    heads, dim), B and C (batch, groups, N), D and the bias (heads, dim) contiguous."""
    acc = tl.float64 if WIDE else tl.float32
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // heads, bh % heads
    d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, N_PAD)
    dmask, nmask = d < dim, n < N
    mask = dmask[:, None] & nmask[None, :]
    row = bh * dim + d
    x = tl.load(x_ptr + row, mask=dmask, other=0.0).to(acc)
    dt = tl.load(dt_ptr + row, mask=dmask, other=0.0).to(acc)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + h * dim + d, mask=dmask, other=0.0).to(acc)
    if SOFTPLUS:
        dt = _softplus(dt)
    bc = (b * groups + h // (heads // groups)) * N + n
    Bv = tl.load(B_ptr + bc, mask=nmask, other=0.0).to(acc)
    Cv = tl.load(C_ptr + bc, mask=nmask, other=0.0).to(acc)
    A = tl.load(A_ptr + h * a_h + d[:, None] * a_d + n[None, :] * a_n, mask=mask, other=0.0).to(acc)
    state_at = state_ptr + b * s_b + h * s_h + d[:, None] * s_d + n[None, :] * s_n
    state = tl.load(state_at, mask=mask, other=0.0).to(acc)
    state = tl.exp(dt[:, None] * A) * state + (dt * x)[:, None] * Bv[None, :]
    tl.store(state_at, state.to(state_ptr.dtype.element_ty), mask=mask)
    y = tl.sum(state * Cv[None, :], 1)
    if HAS_D:
        y += tl.load(D_ptr + h * dim + d, mask=dmask, other=0.0).to(acc) * x
    if HAS_Z:
        z = tl.load(z_ptr + row, mask=dmask, other=0.0).to(acc)
        y = y * z * tl.sigmoid(z)
    tl.store(out_ptr + row, y.to(out_ptr.dtype.element_ty), mask=dmask)


def state_update_call(state, x, dt, A, B, C, D, z, dt_bias, softplus, out):
    """The launch (kernel, grid, args, meta) of one decoding step (x, dt, z, B, C, D, dt_bias
    contiguous; state and A by strides), writing y into ``out``."""
    heads_form = state.dim() == 4
    st = state if heads_form else state[:, None]
    A4 = A if heads_form else A[None]
    batch, heads, dim, N = st.shape
    n_pad = _n_pad(N)
    block_d = max(1, min(triton.next_power_of_2(dim), SELECTIVE_TILE // n_pad // 4))
    dummy = x
    args = (st, x, dt, A4, B, C, dummy if D is None else D, dummy if z is None else z,
            dummy if dt_bias is None else dt_bias, out, heads, dim, N, B.shape[1] if heads_form else 1,
            *st.stride(), *A4.stride())
    meta = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=softplus,
                WIDE=torch.float64 in (state.dtype, x.dtype), BLOCK_D=block_d, N_PAD=n_pad, num_warps=4)
    return _state_update_kernel, (triton.cdiv(dim, block_d), batch * heads), args, meta


def selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, softplus):
    """One step in place on ``state`` (B, [H,] dim, N); returns y in x's dtype. See
    fastspec.selective_state_update."""
    N = state.shape[-1]
    if N > SELECTIVE_MAX_N:
        raise ValueError(f"selective_state_update: the triton backend takes N <= {SELECTIVE_MAX_N}, got N={N}")
    x, dt, z, B, C, D, dt_bias = _contiguous(x, dt, z, B, C, D, dt_bias)
    out = torch.empty_like(x)
    if out.numel():
        kernel, grid, args, meta = state_update_call(state, x, dt, A, B, C, D, z, dt_bias, softplus, out)
        kernel[grid](*args, **meta)
    return out
