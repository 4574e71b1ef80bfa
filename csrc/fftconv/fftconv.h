// FFT long convolution, forward: torch-free CUDA launcher (raw pointers + a stream).
//
//   y[r, t] = postgate[r, t] · z[r, t] + D[h] · u[r, t],   t < L,  r = (b, h),
//   z[r] = the first L entries of the circular convolution, over N = 2^log2n points, of
//          v[r] = u[r] · pregate[r] (zero-padded from L to N) with channel h's filter,
//
// the filter given as its prepared spectrum (`records`, below). Every mode of fastspec's
// fft_conv is this with a wrapped filter and an N large enough (fastspec/ops/fftconv.py).
// See fftconv.cu for the kernel design.
//
// Cost per row (b, h), M = N/2 complex points, s = ceil(log2(M)/4) DFT stages each way,
// e = 2 bytes (float16/bfloat16), L ≤ N:
//   global memory  e·L each for u, pregate, postgate, y (+ e·L for u again with D, from L2)
//                  + 16·M bytes of records of the row's channel (shared by the B rows of a
//                  channel, which run next to each other: read from DRAM once per channel);
//   tensor cores   a radix-R stage is M/(8R) column groups × 3·(2R/16)² mma.m16n8k16
//                  (4096 flops each): 384·M flops for R = 16, 192·M for R = 8; forward and
//                  inverse: at N = 32768 (radices 16, 16, 8, 8) 37.7 MFLOP, at N = 2048 1.6 MFLOP;
//   shared memory  8·M bytes read and written per stage, plus the load, the spectrum product
//                  and the epilogue: (4s + 4)·8·M bytes (2.6 MB at N = 32768), free of bank
//                  conflicts in the stages (fftconv.cu: slot);
//   instructions   per column group and lane, sm_90a SASS: 145 for radix 16 (12 HMMA),
//                  53 for radix 8 (3 HMMA); with the other passes about 170 K warp
//                  instructions a row at N = 32768 and 8 K at N = 2048.
// Floor on an H100 SXM (3.35 TB/s HBM, ~31 TB/s shared memory, ~990 TFLOPS dense bf16,
// 132 SMs x 4 warp instructions a clock at 1.755 GHz; predicted, not measured), gated
// float16, L = N/2: N = 32768: HBM 128 KiB → 39 ns a row, tensor 38 ns, shared memory 84 ns,
// instruction issue 183 ns; N = 2048: HBM 8 KiB → 2.4 ns, tensor 1.6 ns, shared memory
// 4.2 ns, issue 8.6 ns. So this design is bound by instruction issue at about 4x the HBM
// floor: the next steps are fewer instructions a point (paired bfloat16 conversions in the
// splits, twiddles from a table instead of __sincosf, pairs of stages kept in registers with
// one mma's D fragment reused as the next one's operand).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace fastspec {

enum class FftConvDType : int { kFloat16 = 1, kBFloat16 = 2 };

constexpr int kFftConvMinLog2N = 7;   // N = 128: two radix-8 stages of M = 64
constexpr int kFftConvMaxLog2N = 15;  // N = 32768: M = 16384 complex float32 = 128 KiB of shared memory

// u, pregate, postgate, y: contiguous (batch, channels, length) arrays of `dtype`; pregate and
// postgate may be null (no gate), D a float32 (channels,) array or null. records: float32
// (channels, M, 4), M = 2^(log2n - 1), 16-byte aligned: per channel and storage position p
// (fftconv_detail::frequency_of(p) = k) the coefficients (α_k, β_k) of the spectrum step
// W[k] = α_k Z[k] + β_k conj(Z[(M - k) mod M]) (fastspec/ops/fftconv.py: cuda_spectrum).
// 1 <= length <= 2^log2n, kFftConvMinLog2N <= log2n <= kFftConvMaxLog2N; y must not overlap
// the inputs. Accumulates in float32, writes `dtype` (round to nearest even).
// Returns cudaSuccess (batch * channels == 0: without launching), cudaErrorInvalidValue for
// an argument it cannot handle (nothing launched), or the error of the launch. Needs sm_80 or
// newer (tensor-core mma of bfloat16); uses 8·M bytes of dynamic shared memory a block (the
// kernel opts in above 48 KiB).
cudaError_t fftconv_forward_launch(const void* u, const void* pregate, const void* postgate, const float* D,
                                   const float* records, void* y, int64_t batch, int64_t channels, int64_t length,
                                   int log2n, FftConvDType dtype, cudaStream_t stream);

namespace fftconv_detail {

// The complex FFT of M = 2^log2m points runs in s = ceil(log2m / 4) stages of radix 16 or 8
// (log2m = 4·a + 3·b: the radix-16 stages first); fastspec/ops/fftconv.py mirrors this.
constexpr int stages(int log2m) { return (log2m + 3) / 4; }
constexpr int log2_radix(int log2m, int stage) {
  return stage < stages(log2m) - (4 * stages(log2m) - log2m) ? 4 : 3;
}
// log2 of the block a stage works in: M for the first, divided by each earlier radix.
constexpr int log2_block(int log2m, int stage) {
  return stage == 0 ? log2m : log2_block(log2m, stage - 1) - log2_radix(log2m, stage - 1);
}
// Warps of a block: 2 up to M = 1024, then one more warp per 512 points, at most 16.
constexpr int warps(int log2m) { return log2m <= 10 ? 2 : (log2m >= 13 ? 16 : 1 << (log2m - 9)); }

// The forward transform leaves frequency k at storage position p with the stage digits
// reversed: stage j's output digit is digit j of k from the bottom and of p from the top.
__host__ __device__ constexpr int frequency_of(int log2m, int p) {
  int k = 0, shift_p = log2m, shift_k = 0;
  for (int j = 0; j < stages(log2m); ++j) {
    const int r = log2_radix(log2m, j);
    shift_p -= r;
    k |= ((p >> shift_p) & ((1 << r) - 1)) << shift_k;
    shift_k += r;
  }
  return k;
}
__host__ __device__ constexpr int storage_of(int log2m, int k) {
  int p = 0, shift_p = log2m, shift_k = 0;
  for (int j = 0; j < stages(log2m); ++j) {
    const int r = log2_radix(log2m, j);
    shift_p -= r;
    p |= ((k >> shift_k) & ((1 << r) - 1)) << shift_p;
    shift_k += r;
  }
  return p;
}

}  // namespace fftconv_detail
}  // namespace fastspec
