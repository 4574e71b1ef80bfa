"""Triton FFT convolution: the FFT as small dense DFT matrices on the tensor cores.

Every call is a circular convolution of a power-of-two size N (``plan``), and two real rows
of the same channel (batch elements 2i and 2i+1) travel as one complex signal
z = v_2i + i·v_2i+1: the filter is real, so conv(z, k) = conv(v_2i, k) + i·conv(v_2i+1, k),
and the real and imaginary parts of one N-point complex FFT convolution are the two rows'
results. That is the real-input trick in its "two real FFTs for one complex" form: half
the work of two complex FFTs, and no post-pass pairing the bins f and N−f (which would
need a reversal of the tile). An odd batch leaves one signal with a zero imaginary part.

The N-point DFT is a Bailey/Monarch factorisation (FlashFFTConv, Fu et al. 2023, eq. 2;
Bailey 1990): with N = m1·m2·m3, n = n1·m2m3 + n2·m3 + n3 and k = k1 + m1·k2 + m1m2·k3,

    X[k] = Σ_n3 ω_m3^(n3·k3) ω_N^(n3·(k1 + m1·k2)) Σ_n2 ω_m2^(n2·k2) ω_(m1m2)^(n2·k1) Σ_n1 ω_m1^(n1·k1) x[n]

so a tile (R, m2, m3, m1) of R signals in natural order is multiplied along its last axis
by the DFT matrix of m1, twiddled, rotated (the next axis comes last), and so on: three
dense products (two for m1 = 1) leave the spectrum in the tile in digit-reversed order.
The filter's spectrum comes from the same code, so it is in the same order, and the
inverse runs the stages backwards (conjugate matrices and twiddles) back to natural
order: no permutation of the data is ever needed. A complex axis of m is one real product
by the (2m, 2m) matrix [[Re F, Im F], [−Im F, Re F]] interleaved, on data that keeps real
and imaginary parts interleaved (…, 2); m ∈ {8, 16} (2m ≥ 16 for tl.dot).

Sizes. N ≤ MAX_TILE (4096) is one register tile: one kernel from load to store, several
signals a program below 4096 (the matrices are loaded once for all). Above, N = P·Q
(the four-step FFT: eq. 2 with two factors, n = n_p·Q + n_q, k = k_p + P·k_q, P =
max(64, N/4096)), in three phases on a float32 row a signal: A, the P-point DFTs along the stride-Q
axis (tiles of T columns) times the twiddles ω_N^(n_q·k_p) (from two tables of about √N
entries); B, the Q-point FFTs of its rows (tiles of R rows), the product, the inverse; C,
the inverse of A into the output, gates and D in its epilogue.

Up to N = MAX_ONE_LAUNCH (32768) the forward is one launch from load to store
(fftconv_fwd_l2_kernel), and so is the backward (fftconv_bwd_l2_kernel; two for wrapped
circular, as for one tile): a program walks its signals (its batch groups) one after the
other through the three phases on its own scratch rows, a barrier between the phases (the
backward's rows: gz, and v and the running dk spectrum for dk), and all programs' rows
together stay under L2_SCRATCH_BYTES (32 MiB), so that they live in the L2 cache (50 MB on
an H100) and only u, the gates, y and the spectrum travel to and from HBM. Why not on chip:
a signal of 32768 complex points is 256 KiB in float32 (or as bfloat16 hi/lo pairs), more
than a block's shared memory (227 KiB) and the whole register file of an SM (64K registers);
FlashFFTConv fits its 32K kernel in shared memory by keeping the intermediates in fp16/bf16,
rounding each to 11 or 8 bits (unit roundoffs 5e-4 and 4e-3, not measured here), far above
the float32 contract below (2e-7) and 15–130 times the half-precision one (3e-5); and a
Triton program addresses no shared memory of its own. Cost per signal (two rows) of N points
against the three-launch path: the same flops; the same 32N bytes of scratch traffic (write
8N in A, read and write 16N in B, read 8N in C), through L2 where the three launches' chunks
(up to 256 MiB) go to HBM; so HBM sees the floor only (u, the gates and y, 2·L·(2..4)
elements, and the spectrum's 8N bytes a channel, from L2 when a channel's signals run
together). Its tiles are L2_TILE (1024) points, L2_BWD_TILE (256) in the backward, not 4096:
looping over the tiles of a phase keeps the phase's tile-invariant index tensors live, and
with larger tiles ptxas spills (tests/test_fftconv_triton_sm90.py). Above 32768 (up to N =
2^24 = 4096 · 4096), and for the filter's spectrum above 4096, the phases are three launches
through a scratch of one row a signal, in row chunks under SCRATCH_BYTES (256 MiB): bounded
memory, and the chunk is still in the L2 cache for the next launch when it is small. At
65536 one launch would hold 512 KiB a program: 64 programs in 32 MiB, half an H100's SMs.

Modes (``plan``): causal N ≥ L + Lk − 1, the signal at positions 0..L−1, the filter at
0..Lk−1; bidirectional N ≥ L + c (c = (Lk−1)/2), the filter's lag s at s mod N; circular:
N = L for a power of two L ≥ MIN_N, otherwise N ≥ L + Lk − 1 with the signal loaded
wrapped (position n holds v[(n − W) mod L], W = Lk − 1) and the result read at positions
W..W+L−1, which is the circular convolution for any L. Every load and store is masked
(odd L, short filters) and strided (inputs need not be contiguous).

Backward (``backward``), v = u·pregate, gz = grad_y·postgate: dv = corr(gz, k) (the product
with conj K), du = pregate·dv + D·grad_y, dpregate = u·dv, dk = Σ_batch corr(gz, v) (Gz·conj
V summed over a group of the batch in frequency, one inverse per group, the groups' partial
filters summed after: no atomics), dD = Σ grad_y·u (in float64 on the host above one tile);
dpostgate = grad_y·conv(v, k) is the forward kernel with grad_y as postgate. V is
recomputed, not stored. One tile: one kernel for everything but dpostgate, or two (dk; the
rest) where three spectra would not fit the registers (wrapped circular, where dk and dv
need gz in different places, and 16·16·16 tiles).

Precision (tests/test_fftconv.py holds every dtype to the repo's rule): the DFT matrices
are not exact in any dot type, so data and matrix are both split in two and three
products are summed (hi·lo + lo·hi + hi·hi, the lo·lo term dropped). float32 input: parts
of TF32 (11 significant bits each, rounded to nearest in software, so the hardware's
conversion is exact), about 2e-7 relative after the whole convolution, as good as
torch.fft in float32; float16/bfloat16 input: bfloat16 parts (8 + 8 bits, twice the
tensor-core rate of TF32), about 3e-5, below half precision's own rounding (5e-4 and 4e-3);
the backward of half input with a float32 filter uses TF32 parts (dk is float32). A single
TF32 product would cost 5e-4..3e-3 (tried). Data between the products, the twiddles, the
spectrum product and the accumulators are float32; float64 input runs in float64
throughout (float64 dots).

Floor (per output element; causal, Lk = L, N = 2L rounded up to a power of two):
memory, u, the gates and y once: 2 bytes each in half precision, 4–8 bytes with 0–2 gates
(the filter's spectrum is per channel: 1/B of that); compute, per signal of two rows, a
forward and an inverse N-point FFT of Σ_i 8·m_i real flops per point and product, three
products (the split): 2·3·8·(16 + 16 + 16) = 2304 flops per complex point at N = 4096
(m = 16, 16, 16), so about 2300·N/(2L) ≈ 2300 flops per output element at N = 2L, or
1.5·10^11 flops at B·H·L = 2^26. At an H100's dense peaks (about 1 PFLOP/s bfloat16, 0.5
TF32; 3.35 TB/s) that is 0.15 ms (half input) or 0.3 ms (float32) of tensor-core time
against 0.08–0.16 ms (half) or 0.16–0.32 ms (float32) of memory: at peak rates the two
floors are about equal, and the dots of K = 16..32 run below peak, so the kernels are
compute-bound. No GPU time has been measured for them yet.
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
"""Largest FFT held in registers by one program (16·16·16 complex: 8192 float32 values, as
fwht's tile); 8 warps hold it without spills on sm_90 (tests/test_fftconv_triton_sm90.py)."""
MAX_N = 2**24
"""Largest FFT size (4096 × 4096 in two levels): causal L + Lk − 1 ≤ 2^24."""
SCRATCH_BYTES = 256 << 20
"""Largest float32 scratch of the two-level path; rows are processed in chunks under it.
Smaller chunks stay in the L2 cache between the launches (50 MB on an H100) but take more
launches: a value to set from GPU measurements (none yet)."""
MAX_ONE_LAUNCH = 32768
"""Largest FFT whose forward is one launch from load to store (fftconv_fwd_l2_kernel: the
two levels in one program through a scratch row that stays in the L2 cache); larger ones
take three launches."""
L2_SCRATCH_BYTES = 32 << 20
"""The one-launch forward's scratch, all programs together: under the L2 cache of an H100
(50 MB) with room for the spectra and the streamed rows; a value to set from GPU
measurements (none yet)."""
L2_TILE = 1024
"""Points the one-launch forward transforms at a time (T columns of P, R rows of Q). Index
tensors that do not change between a phase's tiles are computed once, before its loop, and
stay live through it: with tiles of 4096 (MAX_TILE) ptxas spills at every N, with 2048 at
N = 16384 float32; 1024 leaves 176–242 registers a thread (tests/test_fftconv_triton_sm90.py)."""
L2_BWD_TILE = 256
"""The same for the one-launch backward, which holds two spectra and the sum of their
products: tiles of 1024 spill at N = 8192 and 16384, of 512 for wrapped circular at 16384
float32; 256 (the 512 points of one inner row at N = 32768) do not."""
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
def _cmul(x, yr, yi, CONJ: tl.constexpr):
    """x (..., 2) times y = yr + i·yi (conjugated if CONJ), broadcast."""
    xr, xi = tl.split(x)
    if CONJ:
        yi = -yi
    return tl.join(xr * yr - xi * yi, xr * yi + xi * yr)


@triton.jit
def _omega_mul(x, lo_ptr, hi_ptr, e, MASK, G_BITS: tl.constexpr, CONJ: tl.constexpr):
    """x (..., 2) times ω_M^e (conjugated if CONJ) for integer exponents e, MASK = M − 1: the
    product of ω_M^(e mod G) and ω_M^(G·(e div G)) from two tables of G and M/G entries,
    G = 2^G_BITS (the twiddles of the two-level FFT, M of them, are never stored whole)."""
    e = e & MASK
    lo = 2 * (e & ((1 << G_BITS) - 1))
    hi = 2 * (e >> G_BITS)
    ar = tl.load(lo_ptr + lo)
    ai = tl.load(lo_ptr + lo + 1)
    br = tl.load(hi_ptr + hi)
    bi = tl.load(hi_ptr + hi + 1)
    return _cmul(x, ar * br - ai * bi, ar * bi + ai * br, CONJ)


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
def _frequency(M1: tl.constexpr, M2: tl.constexpr, M3: tl.constexpr):
    """(1, M1, M2, M3): the frequency each position of ``_fft``'s output holds."""
    a = tl.arange(0, M1)[:, None, None]
    b = tl.arange(0, M2)[None, :, None]
    c = tl.arange(0, M3)[None, None, :]
    return (a + M1 * b + (M1 * M2) * c)[None]


@triton.jit
def _kept(f, N, KEEP):
    """Whether frequency f of N survives keep_frequencies = KEEP (0: all)."""
    return (KEEP == 0) | (tl.minimum(f, N - f) < KEEP)


@triton.jit
def _row_tile(pid, kept_tiles, lo_tiles, hi_first):
    """(scratch row c, row tile) of a phase-B program: the row tiles holding kept frequencies
    are lo_tiles from 0 and the rest from hi_first (all of them without keep_frequencies)."""
    j = pid % kept_tiles
    return pid // kept_tiles, tl.where(j < lo_tiles, j, j - lo_tiles + hi_first)


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
def _load_gated(src_ptr, gate_ptr, base, gate_base, s_b, s_t, gs_b, gs_t, t, ok, second, ACC: tl.constexpr,
                HAS_GATE: tl.constexpr):
    """``_load_pair`` of src at base times that of gate at gate_base (if HAS_GATE)."""
    x0, x1 = _load_pair(src_ptr, base, s_b, s_t, t, ok, second, ACC)
    if HAS_GATE:
        y0, y1 = _load_pair(gate_ptr, gate_base, gs_b, gs_t, t, ok, second, ACC)
        x0 *= y0
        x1 *= y1
    return x0, x1


@triton.jit
def _rows(pid, R: tl.constexpr, pairs, H, B):
    """The R signals of program pid: (h, the offset unit of row b0 = 2·(signal // H),
    whether the signal exists, whether its second row exists), each (R, 1, 1, 1)."""
    s = pid * R + tl.arange(0, R)[:, None, None, None]
    h = s % H
    b0 = 2 * (s // H)
    return h, b0.to(tl.int64), s < pairs, (s < pairs) & (b0 + 1 < B)


@triton.jit
def _store_gated(z0, z1, out_ptr, a_ptr, b_ptr, d_ptr, b0, h, second, t, ok, H, L,
                 sa_b, sa_h, sa_t, sb_b, sb_h, sb_t, HAS_A: tl.constexpr, HAS_D: tl.constexpr):
    """out = z·a + D·b (a if HAS_A, D·b if HAS_D) for rows b0 and b0 + 1 (where ``second``) of
    channel h at entries t (where ok): out (B, H, L) contiguous, a and b strided, z0 and z1
    their two tiles."""
    acc = z0.dtype
    if HAS_A:
        a0, a1 = _load_pair(a_ptr, b0 * sa_b + h * sa_h, sa_b, sa_t, t, ok, second, acc)
        z0 *= a0
        z1 *= a1
    if HAS_D:
        d = tl.load(d_ptr + h).to(acc)
        y0, y1 = _load_pair(b_ptr, b0 * sb_b + h * sb_h, sb_b, sb_t, t, ok, second, acc)
        z0 += d * y0
        z1 += d * y1
    dst = out_ptr + (b0 * H + h) * L + t
    tl.store(dst, z0.to(out_ptr.dtype.element_ty), mask=ok)
    tl.store(dst + H * L, z1.to(out_ptr.dtype.element_ty), mask=ok & second)


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
    v0, v1 = _load_gated(u_ptr, pre_ptr, b0 * su_b + h * su_h, b0 * sp_b + h * sp_h, su_b, su_t, sp_b, sp_t,
                         t, ok, second, acc, HAS_PRE)
    x = _fft(tl.join(v0, v1), g1, g2, g3, tw, R, M1, M2, M3, PREC)
    s = spec_ptr + (h.to(tl.int64) * M + _spectral(M1, M2, M3)) * 2
    kr = tl.load(s, mask=ok_row, other=0.0)
    ki = tl.load(s + 1, mask=ok_row, other=0.0)
    xr, xi = tl.split(x)
    x = _ifft(tl.join(xr * kr - xi * ki, xr * ki + xi * kr), g1, g2, g3, tw, R, M1, M2, M3, PREC)
    z0, z1 = tl.split(x)
    t, ok = _frame(n, L, W, L + W, False)
    _store_gated(z0, z1, y_ptr, post_ptr, u_ptr, d_ptr, b0, h, second, t, ok & ok_row, H, L,
                 sq_b, sq_h, sq_t, su_b, su_h, su_t, HAS_POST, HAS_D)


@triton.jit
def fftconv_spectrum_kernel(
    k_ptr, spec_ptr, g1, g2, g3, tw, H, Lk, N, C, s_h, s_t, scale, KEEP,
    R: tl.constexpr, M1: tl.constexpr, M2: tl.constexpr, M3: tl.constexpr, PREC: tl.constexpr,
):
    """The spectrum (H, M, 2) of k (H, Lk) wrapped to N points (lag s = j − C at s mod N),
    times ``scale`` (1/N), zero at the frequencies keep_frequencies = KEEP drops, in the order
    the convolution kernels read it."""
    M: tl.constexpr = M1 * M2 * M3
    acc: tl.constexpr = tl.float64 if PREC == 0 else tl.float32
    h = tl.program_id(0) * R + tl.arange(0, R)[:, None, None, None]
    j = _natural(M1, M2, M3) + C
    j = tl.where(j >= N, j - N, j)
    ok = (j < Lk) & (h < H)
    taps = tl.load(k_ptr + h.to(tl.int64) * s_h + j * s_t, mask=ok, other=0.0).to(acc)
    x = _fft(tl.join(taps, tl.zeros_like(taps)), g1, g2, g3, tw, R, M1, M2, M3, PREC) * scale
    xr, xi = tl.split(tl.where(_kept(_frequency(M1, M2, M3), N, KEEP)[:, :, :, :, None], x, 0.0))
    s = spec_ptr + (h.to(tl.int64) * M + _spectral(M1, M2, M3)) * 2
    tl.store(s, xr, mask=h < H)
    tl.store(s + 1, xi, mask=h < H)


@triton.jit
def _gz_spectrum(gy_ptr, post_ptr, bg, bq, sg_b, sg_t, sq_b, sq_t, t, ok, second, g1, g2, g3, tw,
                 R: tl.constexpr, M1: tl.constexpr, M2: tl.constexpr, M3: tl.constexpr, PREC: tl.constexpr,
                 HAS_POST: tl.constexpr):
    """The spectrum of the signal gz = grad_y·postgate placed at entries t (where ok)."""
    acc: tl.constexpr = tl.float64 if PREC == 0 else tl.float32
    z0, z1 = _load_gated(gy_ptr, post_ptr, bg, bq, sg_b, sg_t, sq_b, sq_t, t, ok, second, acc, HAS_POST)
    return _fft(tl.join(z0, z1), g1, g2, g3, tw, R, M1, M2, M3, PREC)


@triton.jit
def fftconv_bwd_kernel(
    gy_ptr, u_ptr, pre_ptr, post_ptr, d_ptr, spec_ptr, du_ptr, dpre_ptr, dk_ptr, dd_ptr,
    g1, g2, g3, tw,
    B, H, L, Lk, N, C, W, iters, KEEP,
    sg_b, sg_h, sg_t, su_b, su_h, su_t, sp_b, sp_h, sp_t, sq_b, sq_h, sq_t,
    R: tl.constexpr, M1: tl.constexpr, M2: tl.constexpr, M3: tl.constexpr, PREC: tl.constexpr,
    HAS_PRE: tl.constexpr, HAS_POST: tl.constexpr, HAS_D: tl.constexpr, WRAP: tl.constexpr,
    NEED_DU: tl.constexpr, NEED_DK: tl.constexpr, NEED_DPRE: tl.constexpr, NEED_DD: tl.constexpr,
):
    """The gradients for channel h = pid % H and the batch group pid // H (``iters`` tiles of
    R signals), with v = u·pregate, gz = grad_y·postgate (frames as in the forward):
    dv = corr(gz, k) (the product with conj K), du = pregate·dv + D·grad_y, dpregate = u·dv;
    this group's share of dk = Σ corr(gz, v) (the products Gz·conj V summed over the group
    in frequency, zero where keep_frequencies = KEEP drops, one inverse at the end) into
    dk_ptr (groups, H, Lk), and of dD = Σ grad_y·u
    into dd_ptr (groups, H). At most two spectra and the sum are live at a time."""
    M: tl.constexpr = M1 * M2 * M3
    acc: tl.constexpr = tl.float64 if PREC == 0 else tl.float32
    NEED_DV: tl.constexpr = NEED_DU or NEED_DPRE
    pid = tl.program_id(0)
    h = pid % H
    group = pid // H
    n = _natural(M1, M2, M3)
    t_in, ok_in = _frame(n, L, W, L + W, WRAP)  # where v enters (wrapped for circular)
    t_out, ok_out = _frame(n, L, W, L + W, False)  # where y leaves: gz for dk
    t_dv, ok_dv = _frame(n, L, 0, L + W, WRAP)  # gz for dv (wrapped the other way)
    t, ok = _frame(n, L, 0, L, False)  # natural positions
    k = spec_ptr + (h.to(tl.int64) * M + _spectral(M1, M2, M3)) * 2
    cross = tl.zeros((1, M1, M2, M3, 2), acc)
    dd = tl.zeros((R, 1, 1, 1), acc)
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
        if NEED_DK:
            v0, v1 = _load_gated(u_ptr, pre_ptr, bu, bp, su_b, su_t, sp_b, sp_t, t_in, ok_in & row, second, acc,
                                 HAS_PRE)
            xr, xi = tl.split(_fft(tl.join(v0, v1), g1, g2, g3, tw, R, M1, M2, M3, PREC))
            gk = _gz_spectrum(gy_ptr, post_ptr, bg, bq, sg_b, sg_t, sq_b, sq_t, t_out, ok_out & row, second,
                              g1, g2, g3, tw, R, M1, M2, M3, PREC, HAS_POST)
            cross += tl.sum(_cmul(gk, xr, xi, True), 0, keep_dims=True)
        if NEED_DV:
            if NEED_DK and not WRAP:
                gd = gk  # the same frame
            else:
                gd = _gz_spectrum(gy_ptr, post_ptr, bg, bq, sg_b, sg_t, sq_b, sq_t, t_dv, ok_dv & row, second,
                                  g1, g2, g3, tw, R, M1, M2, M3, PREC, HAS_POST)
            z0, z1 = tl.split(_ifft(_cmul(gd, tl.load(k), tl.load(k + 1), True), g1, g2, g3, tw, R, M1, M2, M3, PREC))
            out = (b0 * H + h) * L + t
            if NEED_DPRE:
                u0, u1 = _load_pair(u_ptr, bu, su_b, su_t, t, ok & row, second, acc)
                tl.store(dpre_ptr + out, (z0 * u0).to(dpre_ptr.dtype.element_ty), mask=ok & row)
                tl.store(dpre_ptr + out + H * L, (z1 * u1).to(dpre_ptr.dtype.element_ty), mask=ok & second)
            if NEED_DU:
                _store_gated(z0, z1, du_ptr, pre_ptr, gy_ptr, d_ptr, b0, h, second, t, ok & row, H, L,
                             sp_b, sp_h, sp_t, sg_b, sg_h, sg_t, HAS_PRE, HAS_D)
        if NEED_DD:
            u0, u1 = _load_pair(u_ptr, bu, su_b, su_t, t, ok & row, second, acc)
            y0, y1 = _load_pair(gy_ptr, bg, sg_b, sg_t, t, ok & row, second, acc)
            dd += tl.sum(tl.sum(tl.sum(u0 * y0 + u1 * y1, 3, keep_dims=True), 2, keep_dims=True), 1, keep_dims=True)
    if NEED_DK:
        cross = tl.where(_kept(_frequency(M1, M2, M3), N, KEEP)[:, :, :, :, None], cross, 0.0)
        c, _ = tl.split(_ifft(cross, g1, g2, g3, tw, 1, M1, M2, M3, PREC))
        j = n + C
        j = tl.where(j >= N, j - N, j)
        tl.store(dk_ptr + (group * H + h).to(tl.int64) * Lk + j, c / N, mask=j < Lk)
    if NEED_DD:
        tl.store(dd_ptr + group * H + h, tl.sum(dd))


# Two levels, M = P·Q: point n = n_p·Q + n_q, frequency k = k_p + P·k_q (module docstring).
# Scratch rows hold one signal each, complex interleaved: after phase A, position k_p·Q + n_q.
# The phases are jit helpers on one scratch row: a launch each (fftconv_outer_kernel,
# fftconv_inner_kernel, fftconv_outer_inv_kernel) or all three in one (fftconv_fwd_l2_kernel).


@triton.jit
def _columns(nq, P1: tl.constexpr, P2: tl.constexpr, P3: tl.constexpr, Q: tl.constexpr):
    """(T, P2, P3, P1): the point n = n_p·Q + n_q each position of a natural-order tile of the
    columns nq (T, 1, 1, 1) holds."""
    return _natural(P1, P2, P3) * Q + nq


@triton.jit
def _phase_a(x0, x1, row_ptr, nq, g1, g2, g3, tw, tw_lo, tw_hi,
             T: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr, P3: tl.constexpr, Q: tl.constexpr,
             G_BITS: tl.constexpr, PREC: tl.constexpr):
    """Columns nq (T, 1, 1, 1) of a signal x0 + i·x1 (T, P2, P3, P1): P-point DFTs, times
    ω_M^(n_q·k_p), into the scratch row at row_ptr at k_p·Q + n_q."""
    M: tl.constexpr = P1 * P2 * P3 * Q
    kp = _frequency(P1, P2, P3)
    x = _fft(tl.join(x0, x1), g1, g2, g3, tw, T, P1, P2, P3, PREC)
    xr, xi = tl.split(_omega_mul(x, tw_lo, tw_hi, nq * kp, M - 1, G_BITS, False))
    dst = row_ptr + (kp * Q + nq) * 2
    tl.store(dst, xr)
    tl.store(dst + 1, xi)


@triton.jit
def _phase_b_fft(row_ptr, kp, g1, g2, g3, tw, R: tl.constexpr, Q1: tl.constexpr, Q2: tl.constexpr,
                 Q3: tl.constexpr, PREC: tl.constexpr):
    """Rows kp (R, 1, 1, 1) of the scratch row at row_ptr, Q-point DFTs: (the spectra
    (R, Q1, Q2, Q3, 2), the rows' offsets (R, Q2, Q3, Q1) in the scratch row)."""
    Q: tl.constexpr = Q1 * Q2 * Q3
    offs = (kp * Q + _natural(Q1, Q2, Q3)) * 2
    x = tl.join(tl.load(row_ptr + offs), tl.load(row_ptr + offs + 1))
    return _fft(x, g1, g2, g3, tw, R, Q1, Q2, Q3, PREC), offs


@triton.jit
def _phase_b(src_ptr, dst_ptr, spec_ptr, kp, g1, g2, g3, tw, R: tl.constexpr, Q1: tl.constexpr,
             Q2: tl.constexpr, Q3: tl.constexpr, PREC: tl.constexpr, CONJ: tl.constexpr):
    """Rows kp of the scratch row at src_ptr: Q-point DFTs, times the spectrum (M, 2) at
    spec_ptr (conjugated if CONJ: a correlation), inverse DFTs, into dst_ptr at the same offsets."""
    Q: tl.constexpr = Q1 * Q2 * Q3
    x, offs = _phase_b_fft(src_ptr, kp, g1, g2, g3, tw, R, Q1, Q2, Q3, PREC)
    k = spec_ptr + (kp * Q + _spectral(Q1, Q2, Q3)) * 2
    xr, xi = tl.split(_ifft(_cmul(x, tl.load(k), tl.load(k + 1), CONJ), g1, g2, g3, tw, R, Q1, Q2, Q3, PREC))
    tl.store(dst_ptr + offs, xr)
    tl.store(dst_ptr + offs + 1, xi)


@triton.jit
def _phase_c(row_ptr, nq, keep, g1, g2, g3, tw, tw_lo, tw_hi,
             T: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr, P3: tl.constexpr, Q: tl.constexpr,
             G_BITS: tl.constexpr, PREC: tl.constexpr):
    """The inverse of ``_phase_a`` for columns nq of the scratch row at row_ptr (the rows k_p
    without a frequency that keep_frequencies = ``keep`` keeps read as zero): the two real
    tiles (T, P2, P3, P1) of the columns in natural order."""
    P: tl.constexpr = P1 * P2 * P3
    M: tl.constexpr = P * Q
    kp = _frequency(P1, P2, P3)
    src = row_ptr + (kp * Q + nq) * 2
    row = _kept(kp, P, keep)
    x = tl.join(tl.load(src, mask=row, other=0.0), tl.load(src + 1, mask=row, other=0.0))
    x = _omega_mul(x, tw_lo, tw_hi, nq * kp, M - 1, G_BITS, True)
    return tl.split(_ifft(x, g1, g2, g3, tw, T, P1, P2, P3, PREC))


@triton.jit
def fftconv_outer_kernel(
    src_ptr, gate_ptr, buf_ptr, g1, g2, g3, tw, tw_lo, tw_hi,
    B, H, L, SHIFT, COUNT, Lk, N, C, bp0, h0, nh,
    s_b, s_h, s_t, gs_b, gs_h, gs_t,
    T: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr, P3: tl.constexpr, Q: tl.constexpr,
    G_BITS: tl.constexpr, PREC: tl.constexpr, WRAP: tl.constexpr, HAS_GATE: tl.constexpr, FILTER: tl.constexpr,
):
    """Phase A: signal c = pid // (Q/T) of the chunk (batch pairs from bp0 × channels h0..h0+nh,
    or the filter rows h0 + c if FILTER, taps wrapped by C as in the spectrum kernel), its T
    columns n_q from (pid % (Q/T))·T (``_phase_a``) into buf row c."""
    M: tl.constexpr = P1 * P2 * P3 * Q
    acc: tl.constexpr = tl.float64 if PREC == 0 else tl.float32
    pid = tl.program_id(0)
    c = pid // (Q // T)
    nq = (pid % (Q // T)) * T + tl.arange(0, T)[:, None, None, None]
    n = _columns(nq, P1, P2, P3, Q)
    if FILTER:
        j = n + C
        j = tl.where(j >= N, j - N, j)
        x0 = tl.load(src_ptr + (h0 + c).to(tl.int64) * s_h + j * s_t, mask=j < Lk, other=0.0).to(acc)
        x1 = tl.zeros_like(x0)
    else:
        h = h0 + c % nh
        b0 = 2 * (bp0 + c // nh).to(tl.int64)
        t, ok = _frame(n, L, SHIFT, COUNT, WRAP)
        x0, x1 = _load_gated(src_ptr, gate_ptr, b0 * s_b + h * s_h, b0 * gs_b + h * gs_h, s_b, s_t, gs_b, gs_t,
                             t, ok, b0 + 1 < B, acc, HAS_GATE)
    _phase_a(x0, x1, buf_ptr + c.to(tl.int64) * M * 2, nq, g1, g2, g3, tw, tw_lo, tw_hi, T, P1, P2, P3, Q,
             G_BITS, PREC)


@triton.jit
def fftconv_inner_kernel(
    src_ptr, dst_ptr, spec_ptr, g1, g2, g3, tw, h0, nh, scale, keep, kept_tiles, lo_tiles, hi_first,
    R: tl.constexpr, Q1: tl.constexpr, Q2: tl.constexpr, Q3: tl.constexpr, P: tl.constexpr,
    PREC: tl.constexpr, MODE: tl.constexpr,
):
    """Phase B: R rows k_p of scratch row c of src (``_row_tile``: only tiles holding
    frequencies that keep_frequencies = ``keep`` keeps), Q-point DFTs, then by MODE: 0, times
    the spectrum of channel h0 + c % nh and the inverse DFTs into dst; 1, scaled by ``scale``
    (zero where ``keep`` drops) into the spectrum of filter row h0 + c; 2, as 0 with the
    conjugate spectrum (a correlation); 3, the spectrum itself into dst (k_p·Q + the tile's
    spectral offset)."""
    Q: tl.constexpr = Q1 * Q2 * Q3
    M: tl.constexpr = P * Q
    c, tile = _row_tile(tl.program_id(0), kept_tiles, lo_tiles, hi_first)
    kp = tile * R + tl.arange(0, R)[:, None, None, None]
    src = src_ptr + c.to(tl.int64) * M * 2
    if MODE == 0 or MODE == 2:
        _phase_b(src, dst_ptr + c.to(tl.int64) * M * 2, spec_ptr + (h0 + c % nh).to(tl.int64) * M * 2, kp,
                 g1, g2, g3, tw, R, Q1, Q2, Q3, PREC, MODE == 2)
    else:
        x, _ = _phase_b_fft(src, kp, g1, g2, g3, tw, R, Q1, Q2, Q3, PREC)
        pos = kp * Q + _spectral(Q1, Q2, Q3)
        if MODE == 1:
            x = tl.where(_kept(kp + P * _frequency(Q1, Q2, Q3), M, keep)[:, :, :, :, None], x * scale, 0.0)
            dst = spec_ptr + ((h0 + c).to(tl.int64) * M + pos) * 2
        else:
            dst = dst_ptr + (c.to(tl.int64) * M + pos) * 2
        xr, xi = tl.split(x)
        tl.store(dst, xr)
        tl.store(dst + 1, xi)


@triton.jit
def fftconv_fwd_l2_kernel(
    u_ptr, pre_ptr, post_ptr, d_ptr, spec_ptr, y_ptr, buf_ptr,
    og1, og2, og3, otw, ig1, ig2, ig3, itw, tw_lo, tw_hi,
    B, H, L, pairs, W, keep, kept_tiles, lo_tiles, hi_first,
    su_b, su_h, su_t, sp_b, sp_h, sp_t, sq_b, sq_h, sq_t,
    T: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr, P3: tl.constexpr,
    R: tl.constexpr, Q1: tl.constexpr, Q2: tl.constexpr, Q3: tl.constexpr,
    G_BITS: tl.constexpr, PREC: tl.constexpr,
    HAS_PRE: tl.constexpr, HAS_POST: tl.constexpr, HAS_D: tl.constexpr, WRAP: tl.constexpr,
):
    """The forward of ``fftconv_fwd_kernel`` for M = P·Q in one launch: each program takes
    the signals pid, pid + programs, ... and walks each through its own scratch row (M, 2)
    of buf, which the launcher keeps small enough to stay in the L2 cache: phase A over the
    Q/T column tiles (load, pregate), phase B over the row tiles ``keep`` needs (times the
    spectrum of channel h), phase C over the column tiles (postgate, D, store). A barrier
    between the phases orders the program's own global writes before its reads (row tiles
    read what every column tile wrote, and the other way round)."""
    P: tl.constexpr = P1 * P2 * P3
    Q: tl.constexpr = Q1 * Q2 * Q3
    M: tl.constexpr = P * Q
    acc: tl.constexpr = tl.float64 if PREC == 0 else tl.float32
    pid = tl.program_id(0)
    row = buf_ptr + pid.to(tl.int64) * M * 2
    for s in range(pid, pairs, tl.num_programs(0)):
        h = s % H
        b0 = 2 * (s // H).to(tl.int64)
        second = b0 + 1 < B
        for i in range(Q // T):
            nq = i * T + tl.arange(0, T)[:, None, None, None]
            t, ok = _frame(_columns(nq, P1, P2, P3, Q), L, W, L + W, WRAP)
            x0, x1 = _load_gated(u_ptr, pre_ptr, b0 * su_b + h * su_h, b0 * sp_b + h * sp_h, su_b, su_t, sp_b, sp_t,
                                 t, ok, second, acc, HAS_PRE)
            _phase_a(x0, x1, row, nq, og1, og2, og3, otw, tw_lo, tw_hi, T, P1, P2, P3, Q, G_BITS, PREC)
        tl.debug_barrier()
        for j in range(kept_tiles):
            _, tile = _row_tile(j, kept_tiles, lo_tiles, hi_first)
            kp = tile * R + tl.arange(0, R)[:, None, None, None]
            _phase_b(row, row, spec_ptr + h.to(tl.int64) * M * 2, kp, ig1, ig2, ig3, itw, R, Q1, Q2, Q3, PREC, False)
        tl.debug_barrier()
        for i in range(Q // T):
            nq = i * T + tl.arange(0, T)[:, None, None, None]
            z0, z1 = _phase_c(row, nq, keep, og1, og2, og3, otw, tw_lo, tw_hi, T, P1, P2, P3, Q, G_BITS, PREC)
            t, ok = _frame(_columns(nq, P1, P2, P3, Q), L, W, L + W, False)
            _store_gated(z0, z1, y_ptr, post_ptr, u_ptr, d_ptr, b0, h, second, t, ok, H, L,
                         sq_b, sq_h, sq_t, su_b, su_h, su_t, HAS_POST, HAS_D)
        tl.debug_barrier()  # the next signal's phase A overwrites what phase C reads


@triton.jit
def fftconv_bwd_l2_kernel(
    gy_ptr, u_ptr, pre_ptr, post_ptr, d_ptr, spec_ptr, du_ptr, dpre_ptr, dk_ptr, buf_ptr,
    og1, og2, og3, otw, ig1, ig2, ig3, itw, tw_lo, tw_hi,
    B, H, L, Lk, N, C, W, iters, items, keep, kept_tiles, lo_tiles, hi_first,
    sg_b, sg_h, sg_t, su_b, su_h, su_t, sp_b, sp_h, sp_t, sq_b, sq_h, sq_t,
    T: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr, P3: tl.constexpr,
    R: tl.constexpr, Q1: tl.constexpr, Q2: tl.constexpr, Q3: tl.constexpr,
    G_BITS: tl.constexpr, PREC: tl.constexpr,
    HAS_PRE: tl.constexpr, HAS_POST: tl.constexpr, HAS_D: tl.constexpr, WRAP: tl.constexpr,
    NEED_DU: tl.constexpr, NEED_DK: tl.constexpr, NEED_DPRE: tl.constexpr,
):
    """The backward of ``fftconv_bwd_kernel`` for M = P·Q in one launch. Each program takes the
    items pid, pid + programs, ... of ``items`` = groups · H (channel h = item % H, batch
    group item // H of ``iters`` signals) with its own scratch rows, kept small enough by
    the launcher to stay in the L2 cache: G (gz), and X (v) and K (the sum of Gz·conj V) for
    dk. A signal: phase A of gz into G (and of v into X); phase B on the row tiles, Gz·conj
    V added to K and Gz·conj S inverted in G (dv); phase C on G: du and dpregate. After the
    group: K inverted (rows, then columns) into dk_ptr (groups, H, Lk). Barriers order the
    phases' writes before the next phase's reads. Where dk and dv need gz in different
    places (WRAP) the launcher asks for one of them a launch."""
    P: tl.constexpr = P1 * P2 * P3
    Q: tl.constexpr = Q1 * Q2 * Q3
    M: tl.constexpr = P * Q
    acc: tl.constexpr = tl.float64 if PREC == 0 else tl.float32
    NEED_DV: tl.constexpr = NEED_DU or NEED_DPRE
    pid = tl.program_id(0)
    g_row = buf_ptr + pid.to(tl.int64) * ((3 if NEED_DK else 1) * M * 2)
    x_row = g_row + M * 2
    k_row = x_row + M * 2
    half = (B + 1) // 2
    for item in range(pid, items, tl.num_programs(0)):
        h = item % H
        group = item // H
        for it in range(iters):
            pair = group * iters + it
            row = pair < half
            b0 = 2 * pair.to(tl.int64)
            second = row & (b0 + 1 < B)
            for i in range(Q // T):
                nq = i * T + tl.arange(0, T)[:, None, None, None]
                n = _columns(nq, P1, P2, P3, Q)
                if NEED_DK:
                    t, ok = _frame(n, L, W, L + W, WRAP)  # where v enters
                    x0, x1 = _load_gated(u_ptr, pre_ptr, b0 * su_b + h * su_h, b0 * sp_b + h * sp_h, su_b, su_t,
                                         sp_b, sp_t, t, ok & row, second, acc, HAS_PRE)
                    _phase_a(x0, x1, x_row, nq, og1, og2, og3, otw, tw_lo, tw_hi, T, P1, P2, P3, Q, G_BITS, PREC)
                    t, ok = _frame(n, L, W, L + W, False)  # where y leaves (dv's place too without WRAP)
                else:
                    t, ok = _frame(n, L, 0, L + W, WRAP)  # gz for dv, wrapped the other way
                z0, z1 = _load_gated(gy_ptr, post_ptr, b0 * sg_b + h * sg_h, b0 * sq_b + h * sq_h, sg_b, sg_t,
                                     sq_b, sq_t, t, ok & row, second, acc, HAS_POST)
                _phase_a(z0, z1, g_row, nq, og1, og2, og3, otw, tw_lo, tw_hi, T, P1, P2, P3, Q, G_BITS, PREC)
            tl.debug_barrier()
            for j in range(kept_tiles):
                _, tile = _row_tile(j, kept_tiles, lo_tiles, hi_first)
                kp = tile * R + tl.arange(0, R)[:, None, None, None]
                gz, offs = _phase_b_fft(g_row, kp, ig1, ig2, ig3, itw, R, Q1, Q2, Q3, PREC)
                pos = (kp * Q + _spectral(Q1, Q2, Q3)) * 2
                if NEED_DK:
                    xr, xi = tl.split(_phase_b_fft(x_row, kp, ig1, ig2, ig3, itw, R, Q1, Q2, Q3, PREC)[0])
                    cr, ci = tl.split(_cmul(gz, xr, xi, True))
                    tl.store(k_row + pos, tl.load(k_row + pos, mask=it > 0, other=0.0) + cr)
                    tl.store(k_row + pos + 1, tl.load(k_row + pos + 1, mask=it > 0, other=0.0) + ci)
                if NEED_DV:
                    s = spec_ptr + h.to(tl.int64) * M * 2 + pos
                    zr, zi = tl.split(_ifft(_cmul(gz, tl.load(s), tl.load(s + 1), True), ig1, ig2, ig3, itw,
                                            R, Q1, Q2, Q3, PREC))
                    tl.store(g_row + offs, zr)
                    tl.store(g_row + offs + 1, zi)
            tl.debug_barrier()
            if NEED_DV:
                for i in range(Q // T):
                    nq = i * T + tl.arange(0, T)[:, None, None, None]
                    t, ok = _frame(_columns(nq, P1, P2, P3, Q), L, 0, L, False)
                    ok = ok & row
                    z0, z1 = _phase_c(g_row, nq, keep, og1, og2, og3, otw, tw_lo, tw_hi, T, P1, P2, P3, Q,
                                      G_BITS, PREC)
                    if NEED_DPRE:
                        u0, u1 = _load_pair(u_ptr, b0 * su_b + h * su_h, su_b, su_t, t, ok, second, acc)
                        dst = dpre_ptr + (b0 * H + h) * L + t
                        tl.store(dst, (z0 * u0).to(dpre_ptr.dtype.element_ty), mask=ok)
                        tl.store(dst + H * L, (z1 * u1).to(dpre_ptr.dtype.element_ty), mask=ok & second)
                    if NEED_DU:
                        _store_gated(z0, z1, du_ptr, pre_ptr, gy_ptr, d_ptr, b0, h, second, t, ok, H, L,
                                     sp_b, sp_h, sp_t, sg_b, sg_h, sg_t, HAS_PRE, HAS_D)
                tl.debug_barrier()  # the next signal's phase A overwrites what phase C reads
        if NEED_DK:
            for j in range(kept_tiles):
                _, tile = _row_tile(j, kept_tiles, lo_tiles, hi_first)
                kp = tile * R + tl.arange(0, R)[:, None, None, None]
                pos = (kp * Q + _spectral(Q1, Q2, Q3)) * 2
                x = tl.join(tl.load(k_row + pos), tl.load(k_row + pos + 1))
                x = tl.where(_kept(kp + P * _frequency(Q1, Q2, Q3), M, keep)[:, :, :, :, None], x, 0.0)
                zr, zi = tl.split(_ifft(x, ig1, ig2, ig3, itw, R, Q1, Q2, Q3, PREC))
                offs = (kp * Q + _natural(Q1, Q2, Q3)) * 2
                tl.store(k_row + offs, zr)
                tl.store(k_row + offs + 1, zi)
            tl.debug_barrier()
            for i in range(Q // T):
                nq = i * T + tl.arange(0, T)[:, None, None, None]
                z0, _ = _phase_c(k_row, nq, keep, og1, og2, og3, otw, tw_lo, tw_hi, T, P1, P2, P3, Q, G_BITS, PREC)
                tap = _columns(nq, P1, P2, P3, Q) + C
                tap = tl.where(tap >= N, tap - N, tap)
                tl.store(dk_ptr + (group * H + h).to(tl.int64) * Lk + tap, z0 / N, mask=tap < Lk)
            tl.debug_barrier()  # the next item's first signal overwrites K


@triton.jit
def fftconv_cross_kernel(
    bx_ptr, bg_ptr, dst_ptr, g1, g2, g3, tw, nh, nbp, scale, keep, kept_tiles, lo_tiles, hi_first,
    R: tl.constexpr, Q1: tl.constexpr, Q2: tl.constexpr, Q3: tl.constexpr, P: tl.constexpr, PREC: tl.constexpr,
):
    """dk's share of a chunk: for channel hl and R rows k_p (``_row_tile``), the sum over its
    nbp batch pairs of G·conj X (spectra stored by mode 3 above), zero where keep_frequencies
    = ``keep`` drops, inverted (Q-point) and scaled by ``scale`` (1/N) into row hl of dst."""
    Q: tl.constexpr = Q1 * Q2 * Q3
    M: tl.constexpr = P * Q
    acc: tl.constexpr = tl.float64 if PREC == 0 else tl.float32
    hl, tile = _row_tile(tl.program_id(0), kept_tiles, lo_tiles, hi_first)
    kp = tile * R + tl.arange(0, R)[:, None, None, None]
    pos = kp * Q + _spectral(Q1, Q2, Q3)
    cross = tl.zeros((R, Q1, Q2, Q3, 2), acc)
    for b in range(nbp):
        offs = ((b * nh + hl).to(tl.int64) * M + pos) * 2
        x = tl.join(tl.load(bg_ptr + offs), tl.load(bg_ptr + offs + 1))
        cross += _cmul(x, tl.load(bx_ptr + offs), tl.load(bx_ptr + offs + 1), True)
    cross = tl.where(_kept(kp + P * _frequency(Q1, Q2, Q3), M, keep)[:, :, :, :, None], cross * scale, 0.0)
    zr, zi = tl.split(_ifft(cross, g1, g2, g3, tw, R, Q1, Q2, Q3, PREC))
    dst = dst_ptr + (hl.to(tl.int64) * M + kp * Q + _natural(Q1, Q2, Q3)) * 2
    tl.store(dst, zr)
    tl.store(dst + 1, zi)


@triton.jit
def fftconv_outer_inv_kernel(
    buf_ptr, out_ptr, out2_ptr, u_ptr, a_ptr, b_ptr, d_ptr, g1, g2, g3, tw, tw_lo, tw_hi,
    B, H, L, SHIFT, Lk, N, C, bp0, h0, nh, keep,
    su_b, su_h, su_t, sa_b, sa_h, sa_t, sb_b, sb_h, sb_t,
    T: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr, P3: tl.constexpr, Q: tl.constexpr,
    G_BITS: tl.constexpr, PREC: tl.constexpr, EPILOGUE: tl.constexpr, HAS_A: tl.constexpr, HAS_D: tl.constexpr,
    NEED_1: tl.constexpr, NEED_2: tl.constexpr,
):
    """Phase C: buf row c = pid // (Q/T), columns n_q from (pid % (Q/T))·T (the rows k_p
    without a frequency that keep_frequencies = ``keep`` keeps read as zero): times
    ω_M^(−n_q·k_p), inverse P-point DFTs, natural order, then the epilogue at t = n − SHIFT:
    0: y = z·a + D·b (a: postgate if HAS_A, b: u);
    2: du = z·a + D·b (a: pregate if HAS_A, b: grad_y) if NEED_1, dpregate = z·u if NEED_2;
    3: the real part's taps (lag of tap j at (j − C) mod N) into out row h0 + c (H, Lk)."""
    P: tl.constexpr = P1 * P2 * P3
    M: tl.constexpr = P * Q
    acc: tl.constexpr = tl.float64 if PREC == 0 else tl.float32
    pid = tl.program_id(0)
    c = pid // (Q // T)
    nq = (pid % (Q // T)) * T + tl.arange(0, T)[:, None, None, None]
    z0, z1 = _phase_c(buf_ptr + c.to(tl.int64) * M * 2, nq, keep, g1, g2, g3, tw, tw_lo, tw_hi, T, P1, P2, P3, Q,
                      G_BITS, PREC)
    n = _columns(nq, P1, P2, P3, Q)
    if EPILOGUE == 3:
        j = n + C
        j = tl.where(j >= N, j - N, j)
        tl.store(out_ptr + (h0 + c).to(tl.int64) * Lk + j, z0, mask=j < Lk)
    else:
        h = h0 + c % nh
        b0 = 2 * (bp0 + c // nh).to(tl.int64)
        second = b0 + 1 < B
        t, ok = _frame(n, L, SHIFT, L + SHIFT, False)
        if EPILOGUE == 2 and NEED_2:
            u0, u1 = _load_pair(u_ptr, b0 * su_b + h * su_h, su_b, su_t, t, ok, second, acc)
            dst = out2_ptr + (b0 * H + h) * L + t
            tl.store(dst, (z0 * u0).to(out2_ptr.dtype.element_ty), mask=ok)
            tl.store(dst + H * L, (z1 * u1).to(out2_ptr.dtype.element_ty), mask=ok & second)
        if EPILOGUE == 0 or NEED_1:
            _store_gated(z0, z1, out_ptr, a_ptr, b_ptr, d_ptr, b0, h, second, t, ok, H, L,
                         sa_b, sa_h, sa_t, sb_b, sb_h, sb_t, HAS_A, HAS_D)


# ----------------------------------------------------------------------------- planning


def _factors(m: int) -> tuple[int, int, int]:
    """(m1, m2, m3) with m1·m2·m3 = m (a power of two, 64 ≤ m ≤ 4096), each axis 8 or 16,
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
    only; two levels: ``outer`` P-point and ``inner`` Q-point, n = P·Q)."""

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
    outer = max(64, n // MAX_TILE)  # the inner level as long as a tile allows; both ≥ 64 (two axes of 8)
    return Plan(n, wrap, centre, _factors(n // outer), _factors(outer))


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


def _acc(prec: int) -> torch.dtype:
    return torch.float64 if prec == 0 else torch.float32


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
def _twiddles(factors: tuple[int, int, int], prec: int, device: torch.device) -> torch.Tensor:
    """ω_(m1m2)^(n2·k1) as (m2, m1), then ω_M^(n3·(k1 + m1·k2)) as (m3, m1, m2), complex
    interleaved (``_fft``)."""
    m1, m2, m3 = factors
    n2, k1 = torch.arange(m2)[:, None], torch.arange(m1)[None, :]
    first = _omega(m1 * m2, n2 * k1)
    n3 = torch.arange(m3)[:, None, None]
    second = _omega(m1 * m2 * m3, n3 * (torch.arange(m1)[None, :, None] + m1 * torch.arange(m2)[None, None, :]))
    both = torch.cat([torch.view_as_real(first).flatten(), torch.view_as_real(second).flatten()])
    return both.to(device, _acc(prec))


@functools.lru_cache(maxsize=64)
def _omega_tables(n: int, prec: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(ω_n^j for j < G, ω_n^(G·j) for j < n/G, log2 G) for ``_omega_mul``, G ≈ √n."""
    bits = (n.bit_length() - 1 + 1) // 2
    lo = _omega(n, torch.arange(1 << bits))
    hi = _omega(n, torch.arange(n >> bits) << bits)
    return torch.view_as_real(lo).to(device, _acc(prec)), torch.view_as_real(hi).to(device, _acc(prec)), bits


def _consts(factors, prec: int, device):
    """(g1, g2, g3, tw) for a tile of ``factors`` and dot precision ``prec`` (_PREC)."""
    return (*(_matrix(m, prec, device) for m in factors), _twiddles(factors, prec, device))


def _warps(elements: int) -> int:
    return min(16, max(4, elements // 512))


def _tile_rows(p: Plan, signals: int) -> int:
    """Signals a program transforms together: a tile of up to MAX_TILE points, no more than there are."""
    return max(1, min(MAX_TILE // p.n, triton.next_power_of_2(max(signals, 1))))


def _tile_meta(prefix: str, factors) -> dict:
    return {f"{prefix}{i + 1}": m for i, m in enumerate(factors)}


@dataclasses.dataclass(frozen=True)
class _Chunk:
    """Signals of batch pairs bp0..bp0+nbp−1 × channels h0..h0+nh−1 (row c = bp_local·nh + h_local)."""

    bp0: int
    nbp: int
    h0: int
    nh: int


def _chunks(pairs: int, channels: int, signal_bytes: int, channel_bytes: int = 0) -> list[_Chunk]:
    """Chunks covering pairs × channels whose scratch (signal_bytes a signal, channel_bytes a
    channel) stays under SCRATCH_BYTES: whole channels if they fit, else one at a time."""
    whole = pairs * signal_bytes + channel_bytes
    if whole <= SCRATCH_BYTES:
        nh = max(1, min(channels, SCRATCH_BYTES // whole))
        return [_Chunk(0, pairs, h, min(nh, channels - h)) for h in range(0, channels, nh)]
    nbp = max(1, (SCRATCH_BYTES - channel_bytes) // signal_bytes)
    return [_Chunk(b, min(nbp, pairs - b), h, 1) for h in range(channels) for b in range(0, pairs, nbp)]


# ----------------------------------------------------------------------------- launches
# Each *_calls function returns the launches as (kernel, grid, args, meta) for
# ``kernel[grid](*args, **meta)`` (tests/test_fftconv_triton_sm90.py compiles them ahead of time).


def _two_level(p: Plan, prec: int, device):
    """Constants of the two levels: outer (g1, g2, g3, tw), inner (g1, g2, g3, tw), ω tables,
    and the meta of the outer and inner tiles."""
    P, Q = math.prod(p.outer), math.prod(p.inner)
    lo, hi, bits = _omega_tables(p.n, prec, device)
    outer_meta = {"T": MAX_TILE // P, **_tile_meta("P", p.outer), "Q": Q, "G_BITS": bits, "PREC": prec,
                  "num_warps": _warps(MAX_TILE)}
    inner_meta = {"R": MAX_TILE // Q, **_tile_meta("Q", p.inner), "P": P, "PREC": prec, "num_warps": _warps(MAX_TILE)}
    return _consts(p.outer, prec, device), _consts(p.inner, prec, device), (lo, hi), outer_meta, inner_meta


def _outer_call(p, prec, src, gate, buf, chunk: _Chunk, frame, B, H, L, filter_taps=None):
    """Phase A over a chunk: src (and gate) rows in ``frame`` (SHIFT, COUNT, WRAP), or filter rows."""
    outer, _, tables, meta, _ = _two_level(p, prec, src.device)
    shift, count, wrap = frame
    src_strides = (0, *src.stride()) if filter_taps is not None else src.stride()
    args = (src, gate if gate is not None else src, buf, *outer, *tables, B, H, L, shift, count, filter_taps or 0,
            p.n, p.centre, chunk.bp0, chunk.h0, chunk.nh, *src_strides,
            *(gate.stride() if gate is not None else (0, 0, 0)))
    meta = {**meta, "WRAP": wrap, "HAS_GATE": gate is not None, "FILTER": filter_taps is not None}
    return fftconv_outer_kernel, (chunk.nbp * chunk.nh * (meta["Q"] // meta["T"]),), args, meta


def _outer_inv_call(p, prec, buf, chunk: _Chunk, epilogue, outs, u, a, b, D, B, H, L, shift, taps=0, keep=0):
    """Phase C over a chunk: ``outs`` (out, out2) of the epilogue (fftconv_outer_inv_kernel)."""
    outer, _, tables, meta, _ = _two_level(p, prec, buf.device)
    out, out2 = (t if t is not None else buf for t in outs)
    ua, aa, ba = (t if t is not None else buf for t in (u, a, b))
    strides = [t.stride() if t is not None and t.dim() == 3 else (0, 0, 0) for t in (u, a, b)]
    args = (buf, out, out2, ua, aa, ba, D.contiguous() if D is not None else buf, *outer, *tables, B, H, L, shift,
            taps, p.n, p.centre, chunk.bp0, chunk.h0, chunk.nh, keep, *strides[0], *strides[1], *strides[2])
    meta = {**meta, "EPILOGUE": epilogue, "HAS_A": a is not None, "HAS_D": D is not None,
            "NEED_1": outs[0] is not None, "NEED_2": outs[1] is not None}
    rows = chunk.nh if epilogue == 3 else chunk.nbp * chunk.nh
    return fftconv_outer_inv_kernel, (rows * (meta["Q"] // meta["T"]),), args, meta


def _kept_tiles(p: Plan, keep: int, tile: int = MAX_TILE) -> tuple[int, int, int]:
    """(row tiles, tiles from 0, first tile of the rest) of phase B, in tiles of ``tile``
    points, that hold a frequency keep_frequencies = ``keep`` keeps: the rows k_p with
    min(k_p, P − k_p) < keep, as frequency k_p + P·k_q with k_q = 0 or the last is then below
    keep or above N − keep."""
    P, R = math.prod(p.outer), tile // math.prod(p.inner)
    tiles = P // R
    lo, hi = triton.cdiv(keep, R), (P - keep + 1) // R
    if not keep or hi < lo:
        return tiles, tiles, 0
    return lo + tiles - hi, lo, hi


def _inner_call(p, prec, src, dst, spec, chunk: _Chunk, mode: int, keep: int):
    """Phase B over a chunk's rows (fftconv_inner_kernel's MODE), the row tiles ``keep`` needs."""
    _, inner, _, _, meta = _two_level(p, prec, src.device)
    tiles = _kept_tiles(p, keep)
    args = (src, dst, spec, *inner, chunk.h0, chunk.nh, 1.0 / p.n, keep, *tiles)
    return fftconv_inner_kernel, (chunk.nbp * chunk.nh * tiles[0],), args, {**meta, "MODE": mode}


def _scratch(rows: int, p: Plan, prec: int, device) -> torch.Tensor:
    return torch.empty(rows, p.n, 2, dtype=_acc(prec), device=device)


def spectrum_calls(k: torch.Tensor, p: Plan, dtype: torch.dtype, spec: torch.Tensor, keep: int = 0):
    """Launches writing the spectrum of k (H, Lk) for plan p into spec (H, n, 2), with the dots
    of ``dtype`` (k's), zero at the frequencies keep_frequencies = ``keep`` drops (n = L)."""
    H, Lk = k.shape
    prec = _PREC[dtype]
    if p.outer is None:
        R = _tile_rows(p, H)
        args = (k, spec, *_consts(p.inner, prec, k.device), H, Lk, p.n, p.centre, k.stride(0), k.stride(1), 1.0 / p.n,
                keep)
        meta = {"R": R, **_tile_meta("M", p.inner), "PREC": prec, "num_warps": _warps(R * p.n)}
        return [(fftconv_spectrum_kernel, (triton.cdiv(H, R),), args, meta)]
    chunks = _chunks(1, H, p.n * spec.element_size() * 2)
    buf = _scratch(chunks[0].nh, p, prec, k.device)
    calls = []
    for chunk in chunks:
        calls.append(_outer_call(p, prec, k, None, buf, chunk, (0, 0, False), 1, H, Lk, filter_taps=Lk))
        calls.append(_inner_call(p, prec, buf, buf, spec, chunk, 1, keep))
    return calls


def spectrum(k: torch.Tensor, p: Plan, dtype: torch.dtype, keep: int = 0) -> torch.Tensor:
    """k's spectrum for plan p, computed with the dots of ``dtype``: (H, n, 2) in float32
    (float64 for float64), in the order the convolution kernels read it; ``keep`` as in
    ``spectrum_calls``. Where ``keep`` drops a row tile of the two-level path entirely, that
    part is never written: the kernels never read it."""
    spec = torch.empty(k.shape[0], p.n, 2, dtype=_acc(_PREC[dtype]), device=k.device)
    if spec.numel():
        for kernel, grid, args, meta in spectrum_calls(k, p, dtype, spec, keep):
            kernel[grid](*args, **meta)
    return spec


def _l2_launch(p: Plan, prec: int, device, tile: int, **flags):
    """The constants (outer g1..tw, inner g1..tw, ω tables) and meta of a one-launch kernel
    of two levels in tiles of ``tile`` points (at least one row of the inner level)."""
    tile = max(tile, math.prod(p.inner))
    outer, inner, tables, outer_meta, _ = _two_level(p, prec, device)
    meta = {**{k: v for k, v in outer_meta.items() if k != "Q"}, "T": tile // math.prod(p.outer),
            "R": tile // math.prod(p.inner), **_tile_meta("Q", p.inner), **flags, "num_stages": 1}
    return (*outer, *inner, *tables), meta


def _l2_programs(work: int, p: Plan, prec: int, rows: int) -> int:
    """Programs of a one-launch kernel: one a work item, at most as many as L2_SCRATCH_BYTES
    holds ``rows`` scratch rows for."""
    return min(work, max(1, L2_SCRATCH_BYTES // (rows * p.n * 2 * _acc(prec).itemsize)))


def _fwd_l2_call(u, spec, pregate, postgate, D, p: Plan, y, keep: int):
    """The one-launch forward of two levels (fftconv_fwd_l2_kernel)."""
    B, H, L = u.shape
    prec = _PREC[u.dtype]
    pairs = (B + 1) // 2 * H
    consts, meta = _l2_launch(p, prec, u.device, L2_TILE, HAS_PRE=pregate is not None, HAS_POST=postgate is not None,
                              HAS_D=D is not None, WRAP=p.wrap > 0)
    programs = _l2_programs(pairs, p, prec, 1)
    pre = pregate if pregate is not None else u
    post = postgate if postgate is not None else u
    args = (u, pre, post, D.contiguous() if D is not None else u, spec, y, _scratch(programs, p, prec, u.device),
            *consts, B, H, L, pairs, p.wrap, keep, *_kept_tiles(p, keep, L2_TILE),
            *u.stride(), *pre.stride(), *post.stride())
    return fftconv_fwd_l2_kernel, (programs,), args, meta


def forward_calls(u, spec, pregate, postgate, D, p: Plan, y, keep: int = 0):
    """Launches computing y (B, H, L) contiguous from u (B, H, L) and the spectrum; with
    keep_frequencies = ``keep`` (n = L) the two-level path skips the rows it drops."""
    B, H, L = u.shape
    prec = _PREC[u.dtype]
    half = (B + 1) // 2
    if p.outer is None:
        pairs = half * H
        R = _tile_rows(p, pairs)
        pre = pregate if pregate is not None else u
        post = postgate if postgate is not None else u
        args = (u, pre, post, D.contiguous() if D is not None else u, spec, y, *_consts(p.inner, prec, u.device),
                B, H, L, pairs, p.wrap, *u.stride(), *pre.stride(), *post.stride())
        meta = {"R": R, **_tile_meta("M", p.inner), "PREC": prec, "HAS_PRE": pregate is not None,
                "HAS_POST": postgate is not None, "HAS_D": D is not None, "WRAP": p.wrap > 0,
                "num_warps": _warps(R * p.n)}
        return [(fftconv_fwd_kernel, (triton.cdiv(pairs, R),), args, meta)]
    if p.n <= MAX_ONE_LAUNCH:
        return [_fwd_l2_call(u, spec, pregate, postgate, D, p, y, keep)]
    chunks = _chunks(half, H, p.n * spec.element_size() * 2)
    buf = _scratch(max(c.nbp * c.nh for c in chunks), p, prec, u.device)
    calls = []
    for chunk in chunks:
        calls.append(_outer_call(p, prec, u, pregate, buf, chunk, (p.wrap, L + p.wrap, p.wrap > 0), B, H, L))
        calls.append(_inner_call(p, prec, buf, buf, spec, chunk, 0, keep))
        calls.append(_outer_inv_call(p, prec, buf, chunk, 0, (y, None), u, postgate, u, D, B, H, L, p.wrap,
                                     keep=keep))
    return calls


def forward(u, spec, pregate, postgate, D, p: Plan, keep: int = 0) -> torch.Tensor:
    """y = postgate·conv(u·pregate, k) + D·u, (B, H, L) contiguous in u's dtype; spec from
    ``spectrum`` (of the same ``keep``)."""
    y = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    if y.numel():
        for kernel, grid, args, meta in forward_calls(u, spec, pregate, postgate, D, p, y, keep):
            kernel[grid](*args, **meta)
    return y


TARGET_PROGRAMS = 1024
"""The backward splits each channel's batch into groups until about this many programs run."""


def _groups(B: int, H: int, p: Plan) -> int:
    """Batch groups a channel's one-tile backward is split into: about TARGET_PROGRAMS programs."""
    half = (B + 1) // 2
    tiles = triton.cdiv(half, _tile_rows(p, half))
    return max(1, min(tiles, TARGET_PROGRAMS // max(H, 1)))


def backward_calls(grad_y, u, spec, pregate, postgate, D, p: Plan, taps: int, needs, outs, prec: int, keep: int = 0):
    """Launches of the backward for du, dk, dpregate and dD (``needs`` as the op's; dpostgate is
    the forward with grad_y as postgate: ``backward``), dots of precision ``prec`` (_PREC).
    One tile: ``outs`` = (du, dpre, dk_parts (groups, H, taps), dd_parts (groups, H)), None
    where not needed. Two levels: (du, dpre, dk), dD left to ``backward`` (summed in float64:
    float32 loses about √(B·L) roundings where the sum cancels); one launch (N ≤
    MAX_ONE_LAUNCH): dk as dk_parts; three launches: dk (H, taps), the dk of each chunk in a
    (channels, taps) buffer that an ``_add`` entry (grid None: a host call) adds to dk, chunk
    by chunk in a fixed order. ``keep``: keep_frequencies (n = L)."""
    B, H, L = u.shape
    need_du, need_dk, need_dpre, _, need_dd = needs
    half = (B + 1) // 2
    if p.outer is None:
        R = _tile_rows(p, half)
        groups = _groups(B, H, p)
        iters = triton.cdiv(triton.cdiv(half, R), groups)
        pre = pregate if pregate is not None else u
        post = postgate if postgate is not None else u
        du, dpre, dk, dd = (t if t is not None else u for t in outs)
        args = (grad_y, u, pre, post, D.contiguous() if D is not None else u, spec, du, dpre, dk, dd,
                *_consts(p.inner, prec, u.device), B, H, L, taps, p.n, p.centre, p.wrap, iters, keep,
                *grad_y.stride(), *u.stride(), *pre.stride(), *post.stride())
        meta = {"R": R, **_tile_meta("M", p.inner), "PREC": prec, "HAS_PRE": pregate is not None,
                "HAS_POST": postgate is not None, "HAS_D": D is not None, "WRAP": p.wrap > 0,
                "NEED_DU": need_du, "NEED_DK": need_dk, "NEED_DPRE": need_dpre, "NEED_DD": need_dd,
                "num_warps": _warps(R * p.n), "num_stages": 1}
        if need_dk and (need_du or need_dpre) and (p.wrap or p.n >= MAX_TILE):
            # Two launches, dk then the rest: for wrapped circular, dk and dv share no spectrum
            # (gz enters at two places); a 16·16·16 tile's matrices leave no registers for a
            # third spectrum (ptxas spills: tests/test_fftconv_triton_sm90.py)
            first = {**meta, "NEED_DU": False, "NEED_DPRE": False, "NEED_DD": False}
            return [(fftconv_bwd_kernel, (groups * H,), args, first),
                    (fftconv_bwd_kernel, (groups * H,), args, {**meta, "NEED_DK": False})]
        return [(fftconv_bwd_kernel, (groups * H,), args, meta)]
    if p.n <= MAX_ONE_LAUNCH:
        return _bwd_l2_calls(grad_y, u, spec, pregate, postgate, D, p, taps, needs, outs, prec, keep)
    du, dpre, dk = outs
    need_dv = need_du or need_dpre
    esize = p.n * 2 * _acc(prec).itemsize
    chunks = _chunks(half, H, (2 * need_dk + need_dv) * esize, esize if need_dk else 0)
    rows = max(c.nbp * c.nh for c in chunks)
    bx, bk = (_scratch(rows, p, prec, u.device) for _ in range(2)) if need_dk else (None, None)
    bg = _scratch(rows, p, prec, u.device) if need_dv else bx
    bdk = _scratch(max(c.nh for c in chunks), p, prec, u.device) if need_dk else None
    dk_chunk = torch.empty(bdk.shape[0], taps, dtype=_acc(prec), device=u.device) if need_dk else None
    _, inner, _, _, inner_meta = _two_level(p, prec, u.device)
    v_in = (p.wrap, L + p.wrap, p.wrap > 0)  # where v enters
    y_out = (p.wrap, L + p.wrap, False)  # where y leaves: gz for dk
    dv_in = (0, L + p.wrap, p.wrap > 0)  # gz for dv, wrapped the other way
    calls = []
    shared = need_dk and need_dv and not p.wrap  # one gz for both: transformed into bk, kept in bg
    for chunk in chunks:
        if need_dv:
            calls.append(_outer_call(p, prec, grad_y, postgate, bg, chunk, dv_in, B, H, L))
        if need_dk:
            calls.append(_outer_call(p, prec, u, pregate, bx, chunk, v_in, B, H, L))
            calls.append(_inner_call(p, prec, bx, bx, spec, chunk, 3, keep))
            if not shared:
                calls.append(_outer_call(p, prec, grad_y, postgate, bk, chunk, y_out, B, H, L))
            calls.append(_inner_call(p, prec, bg if shared else bk, bk, spec, chunk, 3, keep))
            tiles = _kept_tiles(p, keep)
            args = (bx, bk, bdk, *inner, chunk.nh, chunk.nbp, 1.0 / p.n, keep, *tiles)
            calls.append((fftconv_cross_kernel, (chunk.nh * tiles[0],), args, {**inner_meta, "num_stages": 1}))
            calls.append(_outer_inv_call(p, prec, bdk, _Chunk(0, 1, 0, chunk.nh), 3, (dk_chunk, None), None, None,
                                         None, None, B, H, L, 0, taps, keep))
            calls.append((_add, None, (dk, dk_chunk, chunk), None))
        if need_dv:
            calls.append(_inner_call(p, prec, bg, bg, spec, chunk, 2, keep))
            calls.append(_outer_inv_call(p, prec, bg, chunk, 2, (du, dpre), u, pregate, grad_y, D, B, H, L, 0,
                                         keep=keep))
    return calls


def _bwd_l2_calls(grad_y, u, spec, pregate, postgate, D, p: Plan, taps: int, needs, outs, prec: int, keep: int):
    """The one-launch backward of two levels (fftconv_bwd_l2_kernel) into ``outs`` = (du,
    dpre, dk_parts (groups, H, taps)); two launches (dk; the rest) for wrapped circular, where
    dk and dv need gz in two places."""
    B, H, L = u.shape
    need_du, need_dk, need_dpre, _, _ = needs
    groups = _groups(B, H, p)
    iters = triton.cdiv((B + 1) // 2, groups)
    consts, base = _l2_launch(p, prec, u.device, L2_BWD_TILE, HAS_PRE=pregate is not None,
                              HAS_POST=postgate is not None, HAS_D=D is not None, WRAP=p.wrap > 0,
                              NEED_DU=need_du, NEED_DK=need_dk, NEED_DPRE=need_dpre)
    metas = [base]
    if need_dk and (need_du or need_dpre) and p.wrap:
        metas = [{**base, "NEED_DU": False, "NEED_DPRE": False}, {**base, "NEED_DK": False}]
    pre = pregate if pregate is not None else u
    post = postgate if postgate is not None else u
    du, dpre, dk = (t if t is not None else u for t in outs)
    calls = []
    for meta in metas:
        rows = 3 if meta["NEED_DK"] else 1  # G, and X and K for dk
        programs = _l2_programs(groups * H, p, prec, rows)
        args = (grad_y, u, pre, post, D.contiguous() if D is not None else u, spec, du, dpre, dk,
                _scratch(programs * rows, p, prec, u.device), *consts, B, H, L, taps, p.n, p.centre, p.wrap, iters,
                groups * H, keep, *_kept_tiles(p, keep, base["R"] * math.prod(p.inner)),
                *grad_y.stride(), *u.stride(), *pre.stride(), *post.stride())
        calls.append((fftconv_bwd_l2_kernel, (programs,), args, meta))
    return calls


def _add(dk: torch.Tensor, dk_chunk: torch.Tensor, chunk: _Chunk) -> None:
    """dk of a two-level chunk into the total: chunk by chunk, in a fixed order."""
    dk[chunk.h0:chunk.h0 + chunk.nh] += dk_chunk[:chunk.nh]


def _dot_rows(a: torch.Tensor, b: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """Σ_(batch, t) a·b per channel, (H,) in acc: products and sums in float64, one batch
    element at a time (float32 loses about √(B·L) roundings where the sum cancels; no
    (B, H, L) temporary)."""
    total = torch.zeros(a.shape[1], dtype=torch.float64, device=a.device)
    for i in range(a.shape[0]):
        total += (a[i].double() * b[i].double()).sum(-1)
    return total.to(acc)


def backward(grad_y, u, spec, pregate, postgate, D, p: Plan, taps: int, needs, k_dtype: torch.dtype, keep: int = 0):
    """(du, dk, dpregate, dpostgate, dD) for the five ``needs`` (None where not needed): du and
    the gates' gradients in u's dtype, dk (H, taps) and dD (H,) in float32 (float64 for
    float64), the batch summed in a fixed order (no atomics). A float32 filter under half
    precision u gets a float32-accurate dk: the dots are then those of float32 input.
    ``keep``: keep_frequencies where the plan's FFT is the L-point one (spec made with it)."""
    B, H, L = u.shape
    need_du, need_dk, need_dpre, need_dpost, need_dd = needs
    prec = min(_PREC[u.dtype], _PREC[k_dtype]) if need_dk else _PREC[u.dtype]
    acc = _acc(prec)
    new = lambda need: torch.empty(u.shape, dtype=u.dtype, device=u.device) if need else None  # noqa: E731
    du, dpre = new(need_du), new(need_dpre)
    # dpostgate = grad_y·conv(u·pregate, k): the forward, grad_y in the postgate's place
    dpost = forward(u, spec, pregate, grad_y, None, p, keep) if need_dpost else None
    grouped = p.outer is None or p.n <= MAX_ONE_LAUNCH  # dk in parts, a batch group each
    dk_shape = (_groups(B, H, p), H, taps) if grouped else (H, taps)
    dk = torch.zeros(dk_shape, dtype=acc, device=u.device) if need_dk else None
    if p.outer is None:
        dd = torch.zeros(dk_shape[:2], dtype=acc, device=u.device) if need_dd else None
        outs = (du, dpre, dk, dd)
        work = need_du or need_dk or need_dpre or need_dd
    else:
        dd = _dot_rows(grad_y, u, acc) if need_dd else None
        outs = (du, dpre, dk)
        work = need_du or need_dk or need_dpre
    if B and work:
        for kernel, grid, args, meta in backward_calls(grad_y, u, spec, pregate, postgate, D, p, taps, needs, outs, prec,
                                                       keep):
            if grid is None:
                kernel(*args)
            else:
                kernel[grid](*args, **meta)
    if grouped and need_dk:
        dk = dk.sum(0)
    if p.outer is None and need_dd:
        dd = dd.sum(0)
    return du, dk, dpre, dpost, dd
