// Butterfly multiply (torch_butterfly's layout), forward: torch-free CUDA launcher (raw
// pointers + a stream).
//
//   out[b, h, :] = M_h x[b, h, :],   M_h = F_last ⋯ F_first   (per stack h)
//
// twiddle (nstacks, nblocks, log2n, n/2, 2, 2): block k runs its log2n factors with
// increasing strides when `increasing_stride` XOR (k odd), else decreasing; factor idx has
// stride s = 2^idx (increasing) or 2^(log2n - 1 - idx). Pair p of a factor is a = (p / s)·2s +
// p % s and b = a + s, and (x_a, x_b) ← T (x_a, x_b) with T = twiddle[h, k, idx, p] (row-major
// 2×2). The same product as fastspec/reference/butterfly.py. See butterfly.cu for the kernel.
//
// Cost per row (b, h), n = 2^log2n, F = nblocks·log2n factors, e = bytes of the dtype, a tile
// of R rows of one stack per block (butterfly.cu: R·n = 2^14 floats for n <= 2^13, 2^15 above):
//   DRAM         x read once, y written once: 2·n·e; the twiddles 2·F·n·e per stack, read from
//                DRAM once (they stay in L2: 1.8 MB at n = 2^14, F = 14, float32);
//   L2 -> SM     every tile reads all of its stack's twiddles: 2·F·n·e / R per row;
//   arithmetic   a pair is 4 multiplies and 2 adds: 3·F·n flops, 2·F·n FP32 instructions
//                (FMUL + FFMA per output) per row;
//   shared mem.  the tile goes in and out once, and once more per change of register group
//                (5 index bits at a time): 8·n·(P + 1) bytes, P = passes (butterfly.cu).
// The floor on an H100 SXM (3.35 TB/s HBM, 132 SMs × 128 FP32 lanes at 1.755 GHz = 29.6 T
// instructions/s, 128 B/clock/SM of shared memory = 29.6 TB/s; predicted, not measured),
// float32, nblocks = 1:
//   n = 1024  (R = 16): DRAM 8 KiB → 2.4 ns a row; L2 twiddles 5 KiB; FP 0.7 ns; shared 0.8 ns
//   n = 4096  (R = 4):  DRAM 32 KiB → 9.8 ns; L2 twiddles 96 KiB (3× DRAM); FP 3.3 ns; shared 4.4 ns
//   n = 16384 (R = 2):  DRAM 128 KiB → 39 ns; L2 twiddles 896 KiB (7× DRAM); FP 15 ns; shared 18 ns
// So up to n ≈ 2^11 the kernel can be DRAM-bound; above, the twiddle stream from L2 (each tile
// reads the whole twiddle set; R is bounded by the shared memory that holds the tile) is the
// limit, by a factor of about log2n / R over DRAM in bytes. Half precision halves both streams.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace fastspec {

enum class ButterflyDType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

constexpr int kButterflyMaxLog2N = 14;  // butterfly.cu: a row of 2^15 would need 1024 threads of <= 64 registers

// twiddle: contiguous (nstacks, nblocks, log2n, 2^(log2n-1), 2, 2), x and out: contiguous
// (batch, nstacks, 2^log2n), all three of `dtype`; 1 <= log2n <= 15, nblocks >= 1. x and out
// aligned to the element size, twiddle to 4 elements (one 2×2 matrix: 16 bytes for float32).
// out == x (in place) is allowed; any other overlap of out with x or twiddle is rejected.
// Accumulates in float32, writes `dtype` (round to nearest even).
// Returns cudaSuccess (batch * nstacks == 0: without launching), cudaErrorInvalidValue for an
// argument it cannot handle (nothing launched), or the error of the launch (or of the first
// call's shared-memory opt-in on this device). Uses the current device and up to 128 KiB of
// dynamic shared memory a block (the kernel opts in).
cudaError_t butterfly_forward_launch(const void* twiddle, const void* x, void* out, int64_t batch, int64_t nstacks,
                                     int nblocks, int log2n, bool increasing_stride, ButterflyDType dtype,
                                     cudaStream_t stream);

}  // namespace fastspec
