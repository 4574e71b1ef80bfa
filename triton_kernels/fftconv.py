"""Triton FFT convolution: the FFT as small dense DFT matrices on the tensor cores.

Every call is a circular convolution of a power-of-two size N = 2^e (``plan``), and two
real rows of the same channel (batch elements 2i and 2i+1) travel as one complex signal
z = v_{2i} + i·v_{2i+1}: the filter is real, so conv(z, k) = conv(v_{2i}, k) + i·conv(v_{2i+1}, k)
and the real and imaginary parts of one N-point complex FFT convolution are the two rows'
results (the "two real FFTs for one complex" form of the real-input trick: half the work of
two complex FFTs, and no post-pass pairing bins f and N−f). An odd batch leaves one
signal with a zero imaginary part.

The M = N-point DFT is a Bailey/Monarch factorisation (FlashFFTConv, Fu et al. 2023, eq. 2;
Bailey 1990): with M = m1·m2·m3, n = n1·m2m3 + n2·m3 + n3 and k = k1 + m1·k2 + m1m2·k3,

    X[k] = Σ_n3 ω_m3^(n3·k3) ω_M^(n3·(k1 + m1·k2)) Σ_n2 ω_m2^(n2·k2) ω_(m1m2)^(n2·k1) Σ_n1 ω_m1^(n1·k1) x[n]

so a tile (R, m2, m3, m1) of R signals in natural order is multiplied along its last axis
by the DFT matrix of m1, twiddled, rotated (the next axis comes last), and so on: three
dense products (two for m1 = 1) leave the spectrum in the tile in digit-reversed order.
The filter's spectrum is computed by the same code, so it sits in the same order, and the
inverse runs the stages backwards (conjugate matrices and twiddles), returning natural
order: no permutation is ever applied to the data. A complex axis of m is one real
product by the (2m, 2m) matrix [[Re F, Im F], [−Im F, Re F]] interleaved, on data that
keeps real and imaginary parts interleaved (…, 2); m ∈ {8, 16, 32} (2m ≥ 16 for tl.dot).

Sizes: M ≤ MAX_TILE (4096) is one register tile: one kernel from load to store, several
signals a program for small M (each axis matrix is loaded once for all of them). Above,
M = P·Q (the four-step FFT, eq. 2 again with two factors): the P-point DFTs along the
stride-Q axis with the twiddles ω_M^(n_q·k_p) into a float32 scratch (launch A), the
Q-point FFTs of its rows with the product and the inverse (launch B), the inverse P-point
DFTs into the output (launch C); the rows are done in chunks whose scratch stays under
SCRATCH_BYTES, so at most a few hundred MiB are allocated and, for L ≤ 32K, a chunk's
scratch is still in the L2 cache when the next launch reads it.

Modes (``plan``): causal N ≥ L + Lk − 1, the signal at positions 0..L−1, the filter at
0..Lk−1; bidirectional N ≥ L + c (c = (Lk−1)/2), the filter's lag s at s mod N;
circular N = L for a power of two L ≥ MIN_N, otherwise N ≥ L + Lk − 1 with the signal
loaded wrapped (position n holds v[(n − W) mod L], W = Lk − 1) and the result read at
positions W..W+L−1, which is the circular convolution exactly, for any L.

Precision (tests/test_fftconv.py holds every dtype to the repo's rule): the DFT matrices
are not exact in any dot type, so data and matrix are both split in two and three
products are summed (hi·hi + hi·lo + lo·hi, the lo·lo term dropped). float32 input: parts
of TF32 (11 significant bits each, rounded to nearest in software so the hardware's
conversion is exact), about 2e-7 relative after the whole convolution, as good as
torch.fft in float32; float16/bfloat16 input: bfloat16 parts (8 + 8 bits, twice the
tensor-core rate of TF32), about 3e-5, below half precision's own rounding (5e-4 and 4e-3).
A single TF32 product would cost 5e-4..3e-3 (tried). Data between the products, the
twiddles, the spectrum product and the accumulators are float32; float64 input runs in
float64 throughout (float64 dots).

Floor (per output element, causal, Lk = L, N = 2L rounded up to a power of two):
memory: u, the gates and y once, 2 bytes each in half precision (2–4 tensors: 4–8 bytes;
the filter's spectrum is per channel, 1/B of that); compute: for each signal of two rows,
a forward and an inverse FFT of N points, each Σ_i 8·m_i real flops per point and
product (3 products: the split), so 2·3·8·(16+16+16) = 2304 flops per complex point at
N = 4096 (m = 16, 16, 16), i.e. about 2300·N/L·½ ≈ 2300 flops per output element at
N = 2L. At B·H·L = 2^26 that is 1.5·10^11 flops (tensor cores: TF32 ~ 0.5 PFLOP/s dense on
an H100, bfloat16 twice that) against 0.27–0.54 GB of memory (0.1–0.2 ms at 3 TB/s):
with the split the half-precision kernel is compute-bound by about 2×, float32 by about
4×. No GPU time has been measured for it yet.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import torch
import triton
import triton.language as tl

MIN_N = 512
"""Smallest FFT size: 8·8·8, the smallest order-3 factorisation with 2m ≥ 16 on every axis
(shorter signals are zero-padded: a few rows of a program's tile)."""
MAX_TILE = 4096
"""Largest FFT held in registers by one program (16·16·16 complex: 8192 float32 values,
the size of fwht's tile, which fits 16 warps without spills on sm_90)."""
MAX_N = MAX_TILE
"""Largest FFT size (one tile so far)."""
SCRATCH_BYTES = 256 << 20
"""Largest float32 scratch of the two-level path; rows are processed in chunks under it."""
_PREC = {torch.float64: 0, torch.float32: 1, torch.float16: 2, torch.bfloat16: 2}
"""How a dot is done: 0 float64; 1 TF32 parts (float32 input); 2 bfloat16 parts (half input)."""


# ----------------------------------------------------------------------------- device code


@triton.jit
def _tf32(x):
    """x rounded to the nearest TF32 value (11 significant bits), still a float32."""
    return ((x.to(tl.int32, bitcast=True) + 0x1000) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def _cdot(x, g_ptr, K2: tl.constexpr, PREC: tl.constexpr):
    """x (rows, K2) @ the (K2, K2) matrix at g_ptr: one float64 dot (PREC 0), or x and the
    matrix (stored as hi and lo parts) split in two, hi·lo + lo·hi + hi·hi."""
    i = tl.arange(0, K2)
    offs = i[:, None] * K2 + i[None, :]
    if PREC == 0:
        acc = tl.dot(x, tl.load(g_ptr + offs), out_dtype=tl.float64)
    else:
        g_hi = tl.load(g_ptr + offs)
        g_lo = tl.load(g_ptr + K2 * K2 + offs)
        if PREC == 1:
            x_hi = _tf32(x)
            x_lo = _tf32(x - x_hi)
            acc = tl.dot(x_hi, g_lo, input_precision="tf32")
            acc = tl.dot(x_lo, g_hi, acc, input_precision="tf32")
            acc = tl.dot(x_hi, g_hi, acc, input_precision="tf32")
        else:
            x_hi = x.to(tl.bfloat16)
            x_lo = (x - x_hi.to(tl.float32)).to(tl.bfloat16)
            acc = tl.dot(x_hi, g_lo)
            acc = tl.dot(x_lo, g_hi, acc)
            acc = tl.dot(x_hi, g_hi, acc)
    return acc


@triton.jit
def _stage(x, g_ptr, ROWS: tl.constexpr, M: tl.constexpr, INVERSE: tl.constexpr, PREC: tl.constexpr):
    """x (..., M, 2) times the DFT matrix of M (conjugate if INVERSE) along its complex last axis."""
    parts: tl.constexpr = 1 if PREC == 0 else 2
    y = _cdot(tl.reshape(x, (ROWS, 2 * M)), g_ptr + INVERSE * parts * 4 * M * M, 2 * M, PREC)
    return tl.reshape(y, x.shape)


@triton.jit
def _twiddle(x, w_ptr, offs, CONJ: tl.constexpr):
    """x (..., 2) times the complex numbers stored interleaved at w_ptr + 2·offs (conjugated)."""
    wr = tl.load(w_ptr + 2 * offs)[None]
    wi = tl.load(w_ptr + 2 * offs + 1)[None]
    if CONJ:
        wi = -wi
    xr, xi = tl.split(x)
    return tl.join(xr * wr - xi * wi, xr * wi + xi * wr)


@triton.jit
def _rotl(x, R: tl.constexpr, A: tl.constexpr, B: tl.constexpr, C: tl.constexpr):
    """(R, A, B, C, 2) -> (R, B, C, A, 2); size-1 axes move by reshapes."""
    if A == 1 or B * C == 1:
        y = tl.reshape(x, (R, B, C, A, 2))
    elif B == 1 or C == 1:
        y = tl.permute(tl.reshape(x, (R, A, B * C, 2)), (0, 2, 1, 3))
        y = tl.reshape(y, (R, B, C, A, 2))
    else:
        y = tl.permute(x, (0, 2, 3, 1, 4))
    return y


@triton.jit
def _rotr(x, R: tl.constexpr, A: tl.constexpr, B: tl.constexpr, C: tl.constexpr):
    """(R, A, B, C, 2) -> (R, C, A, B, 2); size-1 axes move by reshapes."""
    if C == 1 or A * B == 1:
        y = tl.reshape(x, (R, C, A, B, 2))
    elif A == 1 or B == 1:
        y = tl.permute(tl.reshape(x, (R, A * B, C, 2)), (0, 2, 1, 3))
        y = tl.reshape(y, (R, C, A, B, 2))
    else:
        y = tl.permute(x, (0, 3, 1, 2, 4))
    return y


@triton.jit
def _fft(x, g1, g2, g3, tw, R: tl.constexpr, M1: tl.constexpr, M2: tl.constexpr, M3: tl.constexpr,
         PREC: tl.constexpr):
    """Forward DFT of R signals of M = M1·M2·M3 points: x (R, M2, M3, M1, 2) in natural order
    (position [r, a, b, c] holds point c·M2·M3 + a·M3 + b) -> (R, M1, M2, M3, 2), position
    [r, k1, k2, k3] holding frequency k1 + M1·k2 + M1·M2·k3. g1..g3: the axes' matrices; tw:
    the twiddles ω_(M1·M2)^(n2·k1) as (M2, M1), then ω_M^(n3·(k1 + M1·k2)) as (M3, M1, M2)."""
    a2 = tl.arange(0, M2)
    a1 = tl.arange(0, M1)
    if M1 > 1:
        x = _stage(x, g1, R * M2 * M3, M1, False, PREC)  # (R, n2, n3, k1)
        x = _twiddle(x, tw, a2[:, None, None] * M1 + a1[None, None, :], False)
    x = _rotl(x, R, M2, M3, M1)  # (R, n3, k1, n2)
    x = _stage(x, g2, R * M3 * M1, M2, False, PREC)  # (R, n3, k1, k2)
    a3 = tl.arange(0, M3)
    x = _twiddle(x, tw + 2 * M2 * M1, (a3[:, None, None] * M1 + a1[None, :, None]) * M2 + a2[None, None, :], False)
    x = _rotl(x, R, M3, M1, M2)  # (R, k1, k2, n3)
    return _stage(x, g3, R * M1 * M2, M3, False, PREC)  # (R, k1, k2, k3)


@triton.jit
def _ifft(x, g1, g2, g3, tw, R: tl.constexpr, M1: tl.constexpr, M2: tl.constexpr, M3: tl.constexpr,
          PREC: tl.constexpr):
    """The unnormalised inverse of ``_fft``: (R, M1, M2, M3, 2) -> (R, M2, M3, M1, 2)."""
    a1 = tl.arange(0, M1)
    a2 = tl.arange(0, M2)
    a3 = tl.arange(0, M3)
    x = _stage(x, g3, R * M1 * M2, M3, True, PREC)  # (R, k1, k2, n3)
    x = _rotr(x, R, M1, M2, M3)  # (R, n3, k1, k2)
    x = _twiddle(x, tw + 2 * M2 * M1, (a3[:, None, None] * M1 + a1[None, :, None]) * M2 + a2[None, None, :], True)
    x = _stage(x, g2, R * M3 * M1, M2, True, PREC)  # (R, n3, k1, n2)
    x = _rotr(x, R, M3, M1, M2)  # (R, n2, n3, k1)
    if M1 > 1:
        x = _twiddle(x, tw, a2[:, None, None] * M1 + a1[None, None, :], True)
        x = _stage(x, g1, R * M2 * M3, M1, True, PREC)  # (R, n2, n3, n1)
    return x


@triton.jit
def _natural(M1: tl.constexpr, M2: tl.constexpr, M3: tl.constexpr):
    """(1, M2, M3, M1): the point each position of a natural-order tile holds."""
    a = tl.arange(0, M2)[:, None, None]
    b = tl.arange(0, M3)[None, :, None]
    c = tl.arange(0, M1)[None, None, :]
    return (c * (M2 * M3) + a * M3 + b)[None]


@triton.jit
def _spectral(M1: tl.constexpr, M2: tl.constexpr, M3: tl.constexpr):
    """(1, M1, M2, M3): each position's offset in a stored spectrum (row-major)."""
    a = tl.arange(0, M1)[:, None, None]
    b = tl.arange(0, M2)[None, :, None]
    c = tl.arange(0, M3)[None, None, :]
    return ((a * M2 + b) * M3 + c)[None]


@triton.jit
def _frame(n, L, SHIFT, COUNT, WRAP: tl.constexpr):
    """Point n of a signal holds t = n − SHIFT of a row of L (mod L if WRAP, for n < COUNT;
    else only 0 ≤ t < L): (t, valid)."""
    t = n - SHIFT
    if WRAP:
        t = tl.where(t < 0, t + L, t)
        t = tl.where(t >= L, t - L, t)
        ok = n < COUNT
    else:
        ok = (t >= 0) & (t < L)
    return t, ok


@triton.jit
def _load_pair(ptr, base, s_b, s_t, t, ok, second, ACC: tl.constexpr):
    """Rows at base (R, 1, 1, 1) and base + s_b (where ``second``), entries t: two tiles in ACC."""
    p = ptr + base + t.to(tl.int64) * s_t
    return (tl.load(p, mask=ok, other=0.0).to(ACC), tl.load(p + s_b, mask=ok & second, other=0.0).to(ACC))


@triton.jit
def _rows(pid, R: tl.constexpr, pairs, H, B):
    """The R signals of program pid: (h, the offset unit of row b0 = 2·(signal // H),
    whether the signal exists, whether its second row exists), each (R, 1, 1, 1)."""
    s = pid * R + tl.arange(0, R)[:, None, None, None]
    h = s % H
    b0 = 2 * (s // H)
    return h, b0.to(tl.int64), s < pairs, (s < pairs) & (b0 + 1 < B)


@triton.jit
def fftconv_fwd_kernel(
    u_ptr, pre_ptr, post_ptr, d_ptr, spec_ptr, y_ptr, g1, g2, g3, tw,
    B, H, L, pairs, W,
    su_b, su_h, su_t, sp_b, sp_h, sp_t, sq_b, sq_h, sq_t,
    R: tl.constexpr, M1: tl.constexpr, M2: tl.constexpr, M3: tl.constexpr, PREC: tl.constexpr,
    HAS_PRE: tl.constexpr, HAS_POST: tl.constexpr, HAS_D: tl.constexpr, WRAP: tl.constexpr,
):
    """y = postgate·conv(u·pregate, k) + D·u for R signals (row pairs) a program, whole in
    registers: load (wrapped by W for WRAP), FFT, times the spectrum, inverse, store."""
    M: tl.constexpr = M1 * M2 * M3
    acc: tl.constexpr = tl.float64 if PREC == 0 else tl.float32
    h, b0, ok_row, second = _rows(tl.program_id(0), R, pairs, H, B)
    n = _natural(M1, M2, M3)
    t, ok = _frame(n, L, W, L + W, WRAP)
    ok = ok & ok_row
    v0, v1 = _load_pair(u_ptr, b0 * su_b + h * su_h, su_b, su_t, t, ok, second, acc)
    if HAS_PRE:
        p0, p1 = _load_pair(pre_ptr, b0 * sp_b + h * sp_h, sp_b, sp_t, t, ok, second, acc)
        v0 *= p0
        v1 *= p1
    x = _fft(tl.join(v0, v1), g1, g2, g3, tw, R, M1, M2, M3, PREC)
    s = spec_ptr + (h.to(tl.int64) * M + _spectral(M1, M2, M3)) * 2
    kr = tl.load(s, mask=ok_row, other=0.0)
    ki = tl.load(s + 1, mask=ok_row, other=0.0)
    xr, xi = tl.split(x)
    x = _ifft(tl.join(xr * kr - xi * ki, xr * ki + xi * kr), g1, g2, g3, tw, R, M1, M2, M3, PREC)
    z0, z1 = tl.split(x)
    t, ok = _frame(n, L, W, L + W, False)
    ok = ok & ok_row
    if HAS_POST:
        q0, q1 = _load_pair(post_ptr, b0 * sq_b + h * sq_h, sq_b, sq_t, t, ok, second, acc)
        z0 *= q0
        z1 *= q1
    if HAS_D:
        d = tl.load(d_ptr + h, mask=ok_row, other=0.0).to(acc)
        u0, u1 = _load_pair(u_ptr, b0 * su_b + h * su_h, su_b, su_t, t, ok, second, acc)
        z0 += d * u0
        z1 += d * u1
    out = y_ptr + (b0 * H + h) * L + t
    tl.store(out, z0.to(y_ptr.dtype.element_ty), mask=ok)
    tl.store(out + H * L, z1.to(y_ptr.dtype.element_ty), mask=ok & second)


@triton.jit
def fftconv_spectrum_kernel(
    k_ptr, spec_ptr, g1, g2, g3, tw, H, Lk, N, C, s_h, s_t, scale,
    R: tl.constexpr, M1: tl.constexpr, M2: tl.constexpr, M3: tl.constexpr, PREC: tl.constexpr,
):
    """The spectrum (H, M, 2) of k (H, Lk) wrapped to N points (lag s = j − C at s mod N),
    times ``scale`` (1/N), in the order the convolution kernels read it."""
    M: tl.constexpr = M1 * M2 * M3
    acc: tl.constexpr = tl.float64 if PREC == 0 else tl.float32
    h = tl.program_id(0) * R + tl.arange(0, R)[:, None, None, None]
    j = _natural(M1, M2, M3) + C
    j = tl.where(j >= N, j - N, j)
    ok = (j < Lk) & (h < H)
    taps = tl.load(k_ptr + h.to(tl.int64) * s_h + j * s_t, mask=ok, other=0.0).to(acc)
    x = _fft(tl.join(taps, tl.zeros_like(taps)), g1, g2, g3, tw, R, M1, M2, M3, PREC) * scale
    xr, xi = tl.split(x)
    s = spec_ptr + (h.to(tl.int64) * M + _spectral(M1, M2, M3)) * 2
    tl.store(s, xr, mask=h < H)
    tl.store(s + 1, xi, mask=h < H)


@triton.jit
def _cmul(x, yr, yi, CONJ: tl.constexpr):
    """x (..., 2) times y = yr + i·yi (conjugated if CONJ), broadcast."""
    xr, xi = tl.split(x)
    if CONJ:
        yi = -yi
    return tl.join(xr * yr - xi * yi, xr * yi + xi * yr)


@triton.jit
def fftconv_bwd_kernel(
    gy_ptr, u_ptr, pre_ptr, post_ptr, d_ptr, spec_ptr, du_ptr, dpre_ptr, dpost_ptr, dk_ptr, dd_ptr,
    g1, g2, g3, tw,
    B, H, L, Lk, N, C, W, iters,
    sg_b, sg_h, sg_t, su_b, su_h, su_t, sp_b, sp_h, sp_t, sq_b, sq_h, sq_t,
    R: tl.constexpr, M1: tl.constexpr, M2: tl.constexpr, M3: tl.constexpr, PREC: tl.constexpr,
    HAS_PRE: tl.constexpr, HAS_POST: tl.constexpr, HAS_D: tl.constexpr, WRAP: tl.constexpr,
    NEED_DU: tl.constexpr, NEED_DK: tl.constexpr, NEED_DPRE: tl.constexpr, NEED_DPOST: tl.constexpr,
    NEED_DD: tl.constexpr,
):
    """The gradients for channel h = pid % H and the batch group pid // H (``iters`` tiles of
    R signals), with v = u·pregate, gz = grad_y·postgate (frames as in the forward):
    dpostgate = grad_y·conv(v, k); dv = corr(gz, k) (the product with conj K), du = pregate·dv
    + D·grad_y, dpregate = u·dv; this group's share of dk = Σ corr(gz, v) (the products
    Gz·conj V summed over the group in frequency, one inverse at the end) into dk_ptr (groups,
    H, Lk), and of dD = Σ grad_y·u into dd_ptr (groups, H)."""
    M: tl.constexpr = M1 * M2 * M3
    acc: tl.constexpr = tl.float64 if PREC == 0 else tl.float32
    NEED_DV: tl.constexpr = NEED_DU or NEED_DPRE
    NEED_X: tl.constexpr = NEED_DPOST or NEED_DK
    NEED_G: tl.constexpr = NEED_DV or NEED_DK
    pid = tl.program_id(0)
    h = pid % H
    group = pid // H
    n = _natural(M1, M2, M3)
    t_in, ok_in = _frame(n, L, W, L + W, WRAP)  # where v enters (wrapped for circular)
    t_out, ok_out = _frame(n, L, W, L + W, False)  # where y leaves
    t_dv, ok_dv = _frame(n, L, 0, L + W, WRAP)  # where gz enters for dv
    t, ok = _frame(n, L, 0, L, False)  # natural positions
    s = spec_ptr + (h.to(tl.int64) * M + _spectral(M1, M2, M3)) * 2
    kr = tl.load(s)
    ki = tl.load(s + 1)
    cross = tl.zeros((R, M1, M2, M3, 2), acc)
    dd = tl.zeros((R, 1, 1, 1), acc)
    if HAS_D:
        d = tl.load(d_ptr + h).to(acc)
    half = (B + 1) // 2
    for it in range(iters):
        pair = (group * iters + it) * R + tl.arange(0, R)[:, None, None, None]
        row = pair < half
        second = row & (2 * pair + 1 < B)
        b0 = 2 * pair.to(tl.int64)
        bu = b0 * su_b + h * su_h
        bg = b0 * sg_b + h * sg_h
        bp = b0 * sp_b + h * sp_h
        bq = b0 * sq_b + h * sq_h
        out = (b0 * H + h) * L + t
        if NEED_X:
            v0, v1 = _load_pair(u_ptr, bu, su_b, su_t, t_in, ok_in & row, second, acc)
            if HAS_PRE:
                p0, p1 = _load_pair(pre_ptr, bp, sp_b, sp_t, t_in, ok_in & row, second, acc)
                v0 *= p0
                v1 *= p1
            x = _fft(tl.join(v0, v1), g1, g2, g3, tw, R, M1, M2, M3, PREC)
        if NEED_G:
            z0, z1 = _load_pair(gy_ptr, bg, sg_b, sg_t, t_dv, ok_dv & row, second, acc)
            if HAS_POST:
                q0, q1 = _load_pair(post_ptr, bq, sq_b, sq_t, t_dv, ok_dv & row, second, acc)
                z0 *= q0
                z1 *= q1
            gd = _fft(tl.join(z0, z1), g1, g2, g3, tw, R, M1, M2, M3, PREC)
            gk = gd
            if WRAP and NEED_DK:  # dk needs gz where y leaves, dv where v enters
                z0, z1 = _load_pair(gy_ptr, bg, sg_b, sg_t, t_out, ok_out & row, second, acc)
                if HAS_POST:
                    q0, q1 = _load_pair(post_ptr, bq, sq_b, sq_t, t_out, ok_out & row, second, acc)
                    z0 *= q0
                    z1 *= q1
                gk = _fft(tl.join(z0, z1), g1, g2, g3, tw, R, M1, M2, M3, PREC)
        if NEED_DK:
            xr, xi = tl.split(x)
            cross += _cmul(gk, xr, xi, True)
        if NEED_DPOST:
            z0, z1 = tl.split(_ifft(_cmul(x, kr, ki, False), g1, g2, g3, tw, R, M1, M2, M3, PREC))
            y0, y1 = _load_pair(gy_ptr, bg, sg_b, sg_t, t_out, ok_out & row, second, acc)
            dst = dpost_ptr + (b0 * H + h) * L + t_out
            tl.store(dst, (z0 * y0).to(dpost_ptr.dtype.element_ty), mask=ok_out & row)
            tl.store(dst + H * L, (z1 * y1).to(dpost_ptr.dtype.element_ty), mask=ok_out & second)
        if NEED_DV:
            z0, z1 = tl.split(_ifft(_cmul(gd, kr, ki, True), g1, g2, g3, tw, R, M1, M2, M3, PREC))
            if NEED_DPRE:
                u0, u1 = _load_pair(u_ptr, bu, su_b, su_t, t, ok & row, second, acc)
                tl.store(dpre_ptr + out, (z0 * u0).to(dpre_ptr.dtype.element_ty), mask=ok & row)
                tl.store(dpre_ptr + out + H * L, (z1 * u1).to(dpre_ptr.dtype.element_ty), mask=ok & second)
            if NEED_DU:
                if HAS_PRE:
                    p0, p1 = _load_pair(pre_ptr, bp, sp_b, sp_t, t, ok & row, second, acc)
                    z0 *= p0
                    z1 *= p1
                if HAS_D:
                    y0, y1 = _load_pair(gy_ptr, bg, sg_b, sg_t, t, ok & row, second, acc)
                    z0 += d * y0
                    z1 += d * y1
                tl.store(du_ptr + out, z0.to(du_ptr.dtype.element_ty), mask=ok & row)
                tl.store(du_ptr + out + H * L, z1.to(du_ptr.dtype.element_ty), mask=ok & second)
        if NEED_DD:
            u0, u1 = _load_pair(u_ptr, bu, su_b, su_t, t, ok & row, second, acc)
            y0, y1 = _load_pair(gy_ptr, bg, sg_b, sg_t, t, ok & row, second, acc)
            dd += tl.sum(tl.sum(tl.sum(u0 * y0 + u1 * y1, 3, keep_dims=True), 2, keep_dims=True), 1, keep_dims=True)
    if NEED_DK:
        c, _ = tl.split(_ifft(tl.sum(cross, 0, keep_dims=True), g1, g2, g3, tw, 1, M1, M2, M3, PREC))
        j = n + C
        j = tl.where(j >= N, j - N, j)
        tl.store(dk_ptr + (group * H + h).to(tl.int64) * Lk + j, c / N, mask=j < Lk)
    if NEED_DD:
        tl.store(dd_ptr + group * H + h, tl.sum(dd))


# ----------------------------------------------------------------------------- planning


def _factors(m: int) -> tuple[int, int, int]:
    """(m1, m2, m3) with m1·m2·m3 = m (a power of two, 64 ≤ m ≤ 32768), each axis 8..32,
    m1 = 1 for m ≤ 256 (two stages), as even as possible."""
    e = m.bit_length() - 1
    if e <= 8:
        return 1, 2 ** (e // 2), 2 ** (e - e // 2)
    e1 = e // 3
    e2 = (e - e1) // 2
    return 2**e1, 2**e2, 2 ** (e - e1 - e2)


@dataclasses.dataclass(frozen=True)
class Plan:
    """One call's FFT: size n (= the complex size, two rows a signal), the signal's wrap W,
    the filter's centre c (lag 0 at index c), and the tile factors (one level: ``inner``
    only; two levels: ``outer`` P-point and ``inner`` Q-point)."""

    n: int
    wrap: int
    centre: int
    inner: tuple[int, int, int]
    outer: tuple[int, int, int] | None = None


@functools.lru_cache(maxsize=256)
def plan(mode: str, length: int, taps: int) -> Plan:
    """The power-of-two circular convolution that computes ``mode`` for a row of ``length``
    and a filter of ``taps`` (module docstring)."""
    centre = (taps - 1) // 2 if mode == "bidirectional" else 0
    wrap = 0
    if mode == "circular" and length >= MIN_N and length & (length - 1) == 0:
        need = length
    elif mode == "circular":
        need, wrap = length + taps - 1, taps - 1
    else:
        need = length + max(centre, taps - 1 - centre)
    n = max(MIN_N, 1 << (need - 1).bit_length())
    if n <= MAX_TILE:
        return Plan(n, wrap, centre, _factors(n))
    e = n.bit_length() - 1
    q = 2 ** min(12, (e + 1) // 2)
    return Plan(n, wrap, centre, _factors(q), _factors(n // q))


def supports(mode: str, length: int, taps: int) -> bool:
    return plan(mode, length, taps).n <= MAX_N


# ----------------------------------------------------------------------------- constants


def _real_form(f: torch.Tensor) -> torch.Tensor:
    """The (2m, 2m) real matrix of x ↦ x·F on interleaved (re, im) rows."""
    m = f.shape[0]
    g = torch.empty(2 * m, 2 * m, dtype=torch.float64)
    g[0::2, 0::2], g[0::2, 1::2] = f.real, f.imag
    g[1::2, 0::2], g[1::2, 1::2] = -f.imag, f.real
    return g


def _omega(order: int, exponent: torch.Tensor) -> torch.Tensor:
    """e^(−2πi·exponent/order), exact in float64 for integer exponents (reduced mod order)."""
    return torch.polar(torch.ones((), dtype=torch.float64), -2 * math.pi * (exponent % order).double() / order)


def _parts(g: torch.Tensor, prec: int) -> torch.Tensor:
    """(parts, *g.shape): g itself (prec 0), or a hi and a lo part exact in TF32 (1) or bfloat16 (2)."""
    if prec == 0:
        return g[None]
    if prec == 1:
        def tf32(x):
            bits = x.float().view(torch.int32)
            return ((bits + 0x1000) & -8192).view(torch.float32)
        hi = tf32(g)
        return torch.stack([hi, tf32(g - hi.double())])
    hi = g.to(torch.bfloat16)
    return torch.stack([hi, (g - hi.double()).to(torch.bfloat16)])


@functools.lru_cache(maxsize=64)
def _matrix(m: int, prec: int, device: torch.device) -> torch.Tensor:
    """(2 [forward, inverse], parts, 2m, 2m): the DFT of m in real form, split for ``prec``."""
    if m == 1:
        return torch.zeros(1, device=device)
    i = torch.arange(m)
    f = _omega(m, i[:, None] * i[None, :])
    dtype = {0: torch.float64, 1: torch.float32, 2: torch.bfloat16}[prec]
    return torch.stack([_parts(_real_form(f), prec), _parts(_real_form(f.conj()), prec)]).to(device, dtype)


@functools.lru_cache(maxsize=64)
def _twiddles(factors: tuple[int, int, int], acc: torch.dtype, device: torch.device) -> torch.Tensor:
    """ω_(m1m2)^(n2·k1) as (m2, m1), then ω_M^(n3·(k1 + m1·k2)) as (m3, m1, m2), complex
    interleaved in ``acc`` (``_fft``)."""
    m1, m2, m3 = factors
    n2, k1 = torch.arange(m2)[:, None], torch.arange(m1)[None, :]
    first = _omega(m1 * m2, n2 * k1)
    n3 = torch.arange(m3)[:, None, None]
    second = _omega(m1 * m2 * m3, n3 * (torch.arange(m1)[None, :, None] + m1 * torch.arange(m2)[None, None, :]))
    both = torch.cat([torch.view_as_real(first).flatten(), torch.view_as_real(second).flatten()])
    return both.to(device, acc)


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _consts(factors, prec: int, device):
    """(g1, g2, g3, tw) for a tile of ``factors`` and dot precision ``prec`` (_PREC)."""
    return (*(_matrix(m, prec, device) for m in factors), _twiddles(factors, torch.float64 if prec == 0 else torch.float32, device))


def _warps(elements: int) -> int:
    return min(16, max(4, elements // 512))


def _tile_rows(p: Plan, signals: int) -> int:
    """Signals a program transforms together: a tile of up to MAX_TILE points, no more than there are."""
    return max(1, min(MAX_TILE // p.n, triton.next_power_of_2(max(signals, 1))))


# ----------------------------------------------------------------------------- launches


def spectrum_calls(k: torch.Tensor, p: Plan, dtype: torch.dtype, spec: torch.Tensor):
    """Launches writing the spectrum of k (H, Lk) for plan p and input dtype into spec (H, n, 2)."""
    H, Lk = k.shape
    R = _tile_rows(p, H)
    m1, m2, m3 = p.inner
    args = (k, spec, *_consts(p.inner, _PREC[dtype], k.device), H, Lk, p.n, p.centre, k.stride(0), k.stride(1), 1.0 / p.n)
    meta = {"R": R, "M1": m1, "M2": m2, "M3": m3, "PREC": _PREC[dtype], "num_warps": _warps(R * p.n)}
    return [(fftconv_spectrum_kernel, (triton.cdiv(H, R),), args, meta)]


def spectrum(k: torch.Tensor, p: Plan, dtype: torch.dtype) -> torch.Tensor:
    """k's spectrum for plan p and input ``dtype``: (H, n, 2) in float32 (float64 for float64)."""
    spec = torch.empty(k.shape[0], p.n, 2, dtype=_acc(dtype), device=k.device)
    for kernel, grid, args, meta in spectrum_calls(k, p, dtype, spec):
        kernel[grid](*args, **meta)
    return spec


def forward_calls(u, spec, pregate, postgate, D, p: Plan, y):
    """Launches computing y (B, H, L) contiguous from u (B, H, L) and the spectrum."""
    B, H, L = u.shape
    pairs = (B + 1) // 2 * H
    R = _tile_rows(p, pairs)
    m1, m2, m3 = p.inner
    pre = pregate if pregate is not None else u
    post = postgate if postgate is not None else u
    args = (u, pre, post, D.contiguous() if D is not None else u, spec, y, *_consts(p.inner, _PREC[u.dtype], u.device),
            B, H, L, pairs, p.wrap, *u.stride(), *pre.stride(), *post.stride())
    meta = {"R": R, "M1": m1, "M2": m2, "M3": m3, "PREC": _PREC[u.dtype], "HAS_PRE": pregate is not None,
            "HAS_POST": postgate is not None, "HAS_D": D is not None, "WRAP": p.wrap > 0,
            "num_warps": _warps(R * p.n)}
    return [(fftconv_fwd_kernel, (triton.cdiv(pairs, R),), args, meta)]


def forward(u, spec, pregate, postgate, D, p: Plan) -> torch.Tensor:
    """y = postgate·conv(u·pregate, k) + D·u, (B, H, L) contiguous in u's dtype; spec from ``spectrum``."""
    y = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    if y.numel():
        for kernel, grid, args, meta in forward_calls(u, spec, pregate, postgate, D, p, y):
            kernel[grid](*args, **meta)
    return y


TARGET_PROGRAMS = 1024
"""The backward splits each channel's batch into groups until about this many programs run."""


def backward_calls(grad_y, u, spec, pregate, postgate, D, p: Plan, taps: int, needs, outs, prec: int):
    """Launches of the backward: ``outs`` = (du, dpre, dpost, dk_parts (groups, H, taps),
    dd_parts (groups, H)) with None where not needed; dots of precision ``prec`` (_PREC)."""
    B, H, L = u.shape
    R = _tile_rows(p, (B + 1) // 2)
    m1, m2, m3 = p.inner
    tiles = triton.cdiv((B + 1) // 2, R)
    groups = _groups(B, H, p)
    iters = triton.cdiv(tiles, groups)
    pre = pregate if pregate is not None else u
    post = postgate if postgate is not None else u
    du, dpre, dpost, dk, dd = (t if t is not None else u for t in outs)
    args = (grad_y, u, pre, post, D.contiguous() if D is not None else u, spec, du, dpre, dpost, dk, dd,
            *_consts(p.inner, prec, u.device), B, H, L, taps, p.n, p.centre, p.wrap, iters,
            *grad_y.stride(), *u.stride(), *pre.stride(), *post.stride())
    need_du, need_dk, need_dpre, need_dpost, need_dd = needs
    meta = {"R": R, "M1": m1, "M2": m2, "M3": m3, "PREC": prec, "HAS_PRE": pregate is not None,
            "HAS_POST": postgate is not None, "HAS_D": D is not None, "WRAP": p.wrap > 0,
            "NEED_DU": need_du, "NEED_DK": need_dk, "NEED_DPRE": need_dpre, "NEED_DPOST": need_dpost,
            "NEED_DD": need_dd, "num_warps": _warps(R * p.n)}
    return [(fftconv_bwd_kernel, (groups * H,), args, meta)]


def _groups(B: int, H: int, p: Plan) -> int:
    """Batch groups a channel's backward is split into: about TARGET_PROGRAMS programs in all."""
    tiles = triton.cdiv((B + 1) // 2, _tile_rows(p, (B + 1) // 2))
    return max(1, min(tiles, TARGET_PROGRAMS // max(H, 1)))


def backward(grad_y, u, spec, pregate, postgate, D, p: Plan, taps: int, needs, k_dtype: torch.dtype):
    """(du, dk, dpregate, dpostgate, dD) for the five ``needs`` (None where not needed): du and
    the gates' gradients in u's dtype, dk (H, taps) and dD (H,) in float32 (float64 for
    float64), the batch summed in a fixed order (no atomics). A float32 filter under half
    precision u gets a float32-accurate dk: the dots are then those of float32 input."""
    B, H, L = u.shape
    need_du, need_dk, need_dpre, need_dpost, need_dd = needs
    groups = _groups(B, H, p)
    acc = _acc(u.dtype)
    new = lambda need: torch.empty(u.shape, dtype=u.dtype, device=u.device) if need else None  # noqa: E731
    outs = (new(need_du), new(need_dpre), new(need_dpost),
            torch.empty(groups, H, taps, dtype=acc, device=u.device) if need_dk else None,
            torch.empty(groups, H, dtype=acc, device=u.device) if need_dd else None)
    if B == 0:
        for t in outs[3:]:
            if t is not None:
                t.zero_()
    elif any(needs):
        prec = min(_PREC[u.dtype], _PREC[k_dtype]) if need_dk else _PREC[u.dtype]
        for kernel, grid, args, meta in backward_calls(grad_y, u, spec, pregate, postgate, D, p, taps, needs, outs, prec):
            kernel[grid](*args, **meta)
    du, dpre, dpost, dk, dd = outs
    return (du, dk.sum(0) if need_dk else None, dpre, dpost, dd.sum(0) if need_dd else None)
