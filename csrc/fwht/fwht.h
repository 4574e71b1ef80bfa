// Fast Walsh-Hadamard transform: torch-free CUDA launcher (raw pointers + a stream).
//
//   out[r, :] = (x[r, :] @ H_n) * scale,   H_n[i, j] = (-1)^popcount(i & j)
//
// (Sylvester order, the same matrix as scipy.linalg.hadamard(n)). See fwht.cu for the
// kernel design and csrc/README.md for an overview.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace fastspec {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

constexpr int kFwhtMaxLog2N = 15;

// x, out: contiguous (rows, n) row-major arrays of `dtype`, n = 2^log2n, 0 <= log2n <= 15.
// Any pointer aligned to the element size works; 16-byte aligned x and out take the
// vectorized path. out == x (in place) is allowed; any other overlap is rejected.
// Accumulates in float32, writes the input dtype (round to nearest even).
// Returns cudaSuccess (rows == 0: without launching), cudaErrorInvalidValue for an
// argument it cannot handle (nothing launched), or the error of the launch (for n >= 2048,
// of the first call's kernel attribute and occupancy queries on this device too).
// Uses the current device; for n >= 2048 and 16-byte aligned x and out, 2^log2n * sizeof(dtype)
// bytes of dynamic shared memory a block (the kernel opts in).
cudaError_t fwht_launch(const void* x, void* out, int64_t rows, int log2n, float scale,
                        DType dtype, cudaStream_t stream);

namespace fwht_detail {

// Work split of one template instance (all sizes are log2). An element index inside a
// block's tile is, in the load layout ("layout 1"),
//   idx = vec | lane << lv | w_row << (lv + 5) | chunk << (lv + 5 + lw) | w_ind << (lv + 5 + lw + lc)
// and the low log2n bits of idx are the position inside a row. See fwht.cu.
struct FwhtConfig {
  int lv;   // elements per 16-byte vector: 2 for float32, 3 for float16/bfloat16
  int lw;   // warps that share one row (> 0: the shared-memory exchange is used)
  int lc;   // vectors (chunks) per thread
  int lwi;  // warps with independent rows in a block (lw > 0 implies lwi == 0)
  int la;   // floats per shared-memory access (<= 2, i.e. at most float4)
  int lu;   // such units (of 2^la floats) per exchange piece, per chunk
  int lh;   // high chunk bits covered by one exchange piece
};

constexpr int kLog2SmemFloats = 13;  // exchange buffer: at most 8192 floats = 32 KiB

constexpr FwhtConfig fwht_config(int log2n, int lv) {
  FwhtConfig c{lv, 0, 0, 0, 0, 0, 0};
  const int r = log2n - lv - 5;  // row bits above vector + lane bits
  const int lc_min = 5 - lv;     // 2^lc_min vectors = 32 values per thread
  if (r <= 0) {                  // a row fits in one warp-wide load: rows are packed
    c.lc = 2;                    // 4 vectors (independent rows) per thread,
    c.lwi = 2;                   // 4 warps per block
  } else if (r <= lc_min) {      // one warp per row, chunks in registers, no exchange
    c.lc = r;
    c.lwi = 2;
  } else {                       // 2^lw warps per row, one row per block
    c.lc = lc_min > (r + 1) / 2 ? lc_min : (r + 1) / 2;
    c.lw = r - c.lc;
  }
  if (c.lw > 0) {
    c.la = lv < 2 ? lv : 2;
    c.lu = lv - c.la;
    c.lh = c.lc - c.lw;
    while (c.la + c.lu + 5 + 2 * c.lw + c.lh > kLog2SmemFloats) {
      if (c.lh > 0) {
        --c.lh;
      } else if (c.lu > 0) {
        --c.lu;
      } else {
        --c.la;
      }
    }
  }
  return c;
}

}  // namespace fwht_detail
}  // namespace fastspec
