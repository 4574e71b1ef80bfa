// Fast Walsh-Hadamard transform kernel and launcher (torch-free).
//
// out[r, :] = (x[r, :] @ H_n) * scale, H_n[i, j] = (-1)^popcount(i & j), n = 2^log2n.
//
// ---------------------------------------------------------------------------------
// Design: the transform is one butterfly (a, b) -> (a + b, a - b) per bit of the index
// inside a row, and the bits can be processed in any order. Each thread owns some
// elements; which bit of the index a butterfly works on decides how it is done.
//
// The config (fwht_detail::fwht_config in fwht.h) fixes, per dtype and log2n:
//   lv  : elements per 16-byte vector (2 for float32, 3 for half/bfloat16)
//   lw  : warps per row (0: a row lives inside one warp)
//   lc  : vectors ("chunks") per thread
//   lwi : warps with independent rows per block (only when lw == 0)
// A block works on tiles of 2^(lv + 5 + lw + lc + lwi) consecutive elements of the flat
// (rows * n) array, grid-stride over tiles. Inside a tile the element index is
//
//   layout 1 (load):  bits [0, lv)                  vector element   (registers)
//                     bits [lv, lv+5)               lane             (__shfl_xor_sync)
//                     bits [lv+5, lv+5+lw)          warp in the row  (shared-memory exchange)
//                     bits [lv+5+lw, lv+5+lw+lc)    chunk            (registers)
//                     bits above                    independent warp (no butterflies)
//
// and a row occupies the low log2n bits. Butterflies run only over bits < log2n; bits
// above belong to other rows (packed small rows, or independent warps). Three regimes:
//   small  log2n <= lv + 5: rows are packed, a warp-wide 16-byte load holds 32*2^lv/n
//          rows (n < 2^lv: several rows per vector), 4 such vectors (lc = 2) per thread,
//          4 warps per block; butterflies in vector bits and lane bits only.
//   mid    lv + 5 < log2n <= 10: one warp per row, the bits above
//          the lanes are chunk bits in registers; 4 rows per block; no shared memory.
//   large  log2n >= 11: 2^lw warps per row (lw <= lc), one row per tile.
//          Layout 1 does the vector, lane and chunk butterflies; then ONE transpose through
//          shared memory swaps the lw warp bits with the lw low chunk bits:
//
//   layout 2 (store): bits [0, lv)                  vector element
//                     bits [lv, lv+5)               lane
//                     bits [lv+5, lv+5+lw)          chunk low bits   (were warp bits)
//                     bits [lv+5+lw, lv+5+2lw)      warp             (were chunk low bits)
//                     bits [lv+5+2lw, log2n)        chunk high bits  (unchanged)
//
//          so the remaining lw butterflies are in registers, and the result is stored from
//          layout 2. Both layouts give each lane a whole 16-byte vector and consecutive
//          lanes consecutive vectors: loads and stores are fully coalesced 16-byte accesses.
//          The transpose does not touch the vector bits or the chunk high bits, so it can
//          be done in pieces (a subset of floats of each vector, a subset of the high chunk
//          bits) through one buffer of at most 8192 floats (32 KiB of static shared memory,
//          no opt-in above 48 KiB needed on any architecture). Within a piece, shared
//          memory is indexed in natural order (unit, lane, warp, chunk-low, chunk-high), so
//          both the write and the read of a warp touch 32 consecutive units: no bank
//          conflicts. Pieces: 1 for n <= 8192, 2 for n = 16384, 4 for n = 32768.
//
// In the large regime a block holds one row in registers (up to 255 registers a thread at
// n = 2^15 half), so one or two blocks fit on an SM and nothing would overlap a block's
// loads with its arithmetic. So there the grid is persistent (the blocks resident at once)
// and each block copies its next row into shared memory with cp.async while it transforms
// the current one; each thread copies exactly the vectors it will read back (layout 1),
// so it waits for its own copies only. Up to 64 KiB (half) or 128 KiB (float32) of stage.
//
// Per thread the data is 2^(lv+lc) floats in registers (16..128). Arithmetic is float32;
// half/bfloat16 are converted on load and rounded (nearest even) on store; scale is applied
// once, after the last butterfly. Every element is read once and written once.
//
// Loads/stores: 16-byte vectors when x and out are both 16-byte aligned, else one element at
// a time (same layout, no prefetch). The tail vector (rows * n not a multiple of the
// vector, only when n < 2^lv) and vectors past the end are handled element by element;
// out-of-range lanes carry zeros, which never mix with valid rows because butterflies stay
// inside a row.
// ---------------------------------------------------------------------------------

#include "fwht.h"  // same directory: compiles with or without -Icsrc

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_pipeline_primitives.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "../common/elements.h"

namespace fastspec {
namespace {

using fwht_detail::FwhtConfig;
using fwht_detail::fwht_config;

// ------------------------------------------------------------------ element conversions: common/elements.h

// log2 of the elements in one 16-byte vector: 4 floats or 8 halves.
template <typename T>
constexpr int kLogVec = sizeof(T) == 4 ? 2 : 3;

// The kVec elements of one 16-byte vector, as floats.
template <typename T, int kVec>
__device__ __forceinline__ void unpack(const uint4& raw, float (&v)[kVec]) {
  static_assert(kVec * sizeof(T) == 16, "a vector is 16 bytes");
  alignas(16) T elems[kVec];
  *reinterpret_cast<uint4*>(elems) = raw;
#pragma unroll
  for (int i = 0; i < kVec; ++i) v[i] = to_float(elems[i]);
}

// One vector of kVec elements starting at flat element e (e is a multiple of kVec).
template <typename T, int kVec, bool kVecIO>
__device__ __forceinline__ void load_vector(const T* x, int64_t e, int64_t total, float (&v)[kVec]) {
  if (kVecIO && e + kVec <= total) {
    unpack<T>(*reinterpret_cast<const uint4*>(x + e), v);
  } else {
#pragma unroll
    for (int i = 0; i < kVec; ++i) v[i] = (e + i < total) ? to_float(x[e + i]) : 0.0f;
  }
}

// kInBounds: the caller knows the vector lies inside the array (whole tiles).
template <typename T, int kVec, bool kVecIO, bool kInBounds>
__device__ __forceinline__ void store_vector(T* out, int64_t e, int64_t total, const float (&v)[kVec]) {
  if (kVecIO && (kInBounds || e + kVec <= total)) {
    alignas(16) T elems[kVec];
#pragma unroll
    for (int i = 0; i < kVec; ++i) elems[i] = from_float<T>(v[i]);
    *reinterpret_cast<uint4*>(out + e) = *reinterpret_cast<const uint4*>(elems);
  } else {
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      if (e + i < total) out[e + i] = from_float<T>(v[i]);
    }
  }
}

// Butterflies on chunk-index bits 0 .. kBits-1: pairs of chunks in this thread's registers.
template <int kBits, int kChunks, int kVec>
__device__ __forceinline__ void chunk_butterflies(float (&v)[kChunks][kVec]) {
#pragma unroll
  for (int j = 0; j < kBits; ++j) {
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      if ((c & (1 << j)) == 0) {
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          const float a = v[c][i];
          const float b = v[c | (1 << j)][i];
          v[c][i] = a + b;
          v[c | (1 << j)][i] = a - b;
        }
      }
    }
  }
}

// Shared-memory unit of 2^kLa floats (float, float2 or float4).
template <int kLa>
__device__ __forceinline__ void smem_put(float* s, const float* v) {
  if constexpr (kLa == 2) {
    *reinterpret_cast<float4*>(s) = make_float4(v[0], v[1], v[2], v[3]);
  } else if constexpr (kLa == 1) {
    *reinterpret_cast<float2*>(s) = make_float2(v[0], v[1]);
  } else {
    static_assert(kLa == 0, "unit of 1, 2 or 4 floats");
    *s = v[0];
  }
}

template <int kLa>
__device__ __forceinline__ void smem_get(const float* s, float* v) {
  if constexpr (kLa == 2) {
    const float4 f = *reinterpret_cast<const float4*>(s);
    v[0] = f.x;
    v[1] = f.y;
    v[2] = f.z;
    v[3] = f.w;
  } else if constexpr (kLa == 1) {
    const float2 f = *reinterpret_cast<const float2*>(s);
    v[0] = f.x;
    v[1] = f.y;
  } else {
    static_assert(kLa == 0, "unit of 1, 2 or 4 floats");
    v[0] = *s;
  }
}

// ------------------------------------------------------------------ kernel

template <typename T, int kLog2N>
struct Traits {
  static constexpr FwhtConfig kCfg = fwht_config(kLog2N, kLogVec<T>);
  static constexpr int kLv = kCfg.lv, kLw = kCfg.lw, kLc = kCfg.lc, kLwi = kCfg.lwi;
  static constexpr int kThreads = 32 << (kLw + kLwi);
  static constexpr int kLogTile = kLv + 5 + kLw + kLc + kLwi;
  static constexpr int kLogPiece = kCfg.la + kCfg.lu + 5 + 2 * kLw + kCfg.lh;
  static constexpr int kSmemFloats = kLw > 0 ? (1 << kLogPiece) : 1;
  // One row per block (lw > 0): few blocks fit on an SM, so the block is persistent and
  // copies its next row into shared memory (cp.async) while it transforms this one.
  static constexpr bool kPrefetch = kLw > 0;
  static constexpr int kStageBytes = kPrefetch ? int{sizeof(T)} << kLog2N : 0;

  static_assert(kLog2N >= 0 && kLog2N <= kFwhtMaxLog2N, "log2n out of range");
  static_assert(kLw == 0 ? kLog2N <= kLv + 5 + kLc : (kLwi == 0 && kLog2N == kLogTile),
                "a row is inside a warp, or a tile is one row");
  static_assert(kLw <= kLc, "the transpose swaps the warp bits with low chunk bits");
  static_assert(kThreads <= 512, "block size");
  static_assert(kLw == 0 || kLogPiece <= fwht_detail::kLog2SmemFloats, "exchange buffer size");
  static_assert(kStageBytes + 4 * kSmemFloats <= 227 * 1024, "shared memory of a block on sm_90");
  static_assert(kCfg.la >= 0 && kCfg.la <= 2 && kCfg.la + kCfg.lu <= kLv, "exchange unit");
};

// Butterflies over register index bit `bit` of an array of N floats.
template <int N>
__device__ __forceinline__ void butterfly_regs(float* v, int bit) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
    if ((i & (1 << bit)) == 0) {
      const float a = v[i];
      const float b = v[i | (1 << bit)];
      v[i] = a + b;
      v[i | (1 << bit)] = a - b;
    }
  }
}

// Start copying this thread's vectors of the tile at `base` (layout 1: chunk c at
// off1 + c * kChunkStride) into its own slots of the stage, slot c * kThreads + thread.
template <typename T, int kChunks, int kChunkStride, int kThreads>
__device__ __forceinline__ void prefetch_tile(uint4* stage, const T* x, int64_t base, int off1) {
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    __pipeline_memcpy_async(&stage[c * kThreads + threadIdx.x], x + base + off1 + c * kChunkStride, 16);
  }
  __pipeline_commit();
}

template <typename T, int kLog2N, bool kVecIO>
__global__ void __launch_bounds__(Traits<T, kLog2N>::kThreads)
    fwht_kernel(const T* x, T* out, int64_t total, int64_t num_tiles, float scale) {
  using Tr = Traits<T, kLog2N>;
  constexpr FwhtConfig kCfg = Tr::kCfg;
  constexpr int kLv = Tr::kLv, kLw = Tr::kLw, kLc = Tr::kLc;
  constexpr int kVec = 1 << kLv;
  constexpr int kChunks = 1 << kLc;
  // Butterfly bit ranges (index bits inside a row), per level of the hierarchy.
  constexpr int kVecBits = kLog2N < kLv ? kLog2N : kLv;
  constexpr int kLaneBits = kLog2N - kLv <= 0 ? 0 : (kLog2N - kLv < 5 ? kLog2N - kLv : 5);
  constexpr int kChunkBits1 = kLog2N - kLv - 5 - kLw > 0 ? kLog2N - kLv - 5 - kLw : 0;

  __shared__ __align__(16) float smem[Tr::kSmemFloats];
  extern __shared__ uint4 stage[];  // Tr::kStageBytes, used when kPrefetch
  constexpr bool kPrefetch = Tr::kPrefetch && kVecIO;
  constexpr int kChunkStride = 1 << (kLv + 5 + kLw);

  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int w_row = warp & ((1 << kLw) - 1);
  const int w_ind = warp >> kLw;
  // Layout 1 offset of chunk 0 inside a tile; chunk c adds c << (lv + 5 + lw).
  const int off1 = (lane << kLv) | (w_row << (kLv + 5)) | (w_ind << (kLv + 5 + kLw + kLc));

  float v[kChunks][kVec];

  if constexpr (kPrefetch) {
    if (blockIdx.x < num_tiles) {
      prefetch_tile<T, kChunks, kChunkStride, Tr::kThreads>(stage, x, int64_t{blockIdx.x} << Tr::kLogTile, off1);
    }
  }

  for (int64_t tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
    const int64_t base = tile << Tr::kLogTile;

    // ---- load (layout 1): all chunks first, so all loads are in flight together
    if constexpr (kPrefetch) {
      // A tile is a whole row here (no bounds to check). Each thread reads back only the
      // slots it filled itself, so waiting for its own copies is enough; then it refills
      // them with the next tile, which lands while this one is transformed.
      __pipeline_wait_prior(0);
#pragma unroll
      for (int c = 0; c < kChunks; ++c) unpack<T>(stage[c * Tr::kThreads + threadIdx.x], v[c]);
      const int64_t next = tile + gridDim.x;
      if (next < num_tiles) prefetch_tile<T, kChunks, kChunkStride, Tr::kThreads>(stage, x, next << Tr::kLogTile, off1);
    } else {
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        load_vector<T, kVec, kVecIO>(x, base + off1 + c * kChunkStride, total, v[c]);
      }
    }

    // ---- vector bits: registers
#pragma unroll
    for (int b = 0; b < kVecBits; ++b) {
#pragma unroll
      for (int c = 0; c < kChunks; ++c) butterfly_regs<kVec>(v[c], b);
    }

    // ---- lane bits: shuffles. The lane with the bit clear holds a, its partner b:
    // a + b = fma(1, a, b), a - b = fma(-1, b, a), one exact instruction either way.
#pragma unroll
    for (int b = 0; b < kLaneBits; ++b) {
      const int m = 1 << b;
      const float sign = (lane & m) != 0 ? -1.0f : 1.0f;
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          const float mine = v[c][i];
          v[c][i] = fmaf(sign, mine, __shfl_xor_sync(0xffffffffu, mine, m));
        }
      }
    }

    // ---- chunk bits above the warp bits: registers
    chunk_butterflies<kChunkBits1>(v);

    int off_store = off1;  // layout 1 (lw == 0) unless the exchange below switches to layout 2

    if constexpr (kLw > 0) {
      // ---- the exchange: transpose warp bits <-> low chunk bits through shared memory,
      // in pieces (unit group ug, high-chunk group hp). Unit u of a vector = floats
      // [u << la, (u + 1) << la). Piece-local smem index, in units:
      //   lane + 32 * (warp_bits + W * (chunk_lo + W * (chunk_hl + H * u_loc)))
      constexpr int kLa = kCfg.la, kLu = kCfg.lu, kLh = kCfg.lh;
      constexpr int kW = 1 << kLw;
      constexpr int kH = 1 << kLh;
      constexpr int kUnitGroups = 1 << (kLv - kLa - kLu);
      constexpr int kHiGroups = 1 << (kLc - kLw - kLh);
#pragma unroll
      for (int hp = 0; hp < kHiGroups; ++hp) {
#pragma unroll
        for (int ug = 0; ug < kUnitGroups; ++ug) {
#pragma unroll
          for (int ul = 0; ul < (1 << kLu); ++ul) {
#pragma unroll
            for (int hl = 0; hl < kH; ++hl) {
#pragma unroll
              for (int lo = 0; lo < kW; ++lo) {
                const int c = lo | ((hl | (hp << kLh)) << kLw);
                const int u = (ug << kLu) | ul;
                const int s = lane + 32 * (w_row + kW * (lo + kW * (hl + kH * ul)));
                smem_put<kLa>(&smem[s << kLa], &v[c][u << kLa]);
              }
            }
          }
          __syncthreads();
#pragma unroll
          for (int ul = 0; ul < (1 << kLu); ++ul) {
#pragma unroll
            for (int hl = 0; hl < kH; ++hl) {
#pragma unroll
              for (int lo = 0; lo < kW; ++lo) {
                // new chunk low bits `lo` = old warp bits; old chunk low bits = my warp
                const int c = lo | ((hl | (hp << kLh)) << kLw);
                const int u = (ug << kLu) | ul;
                const int s = lane + 32 * (lo + kW * (w_row + kW * (hl + kH * ul)));
                smem_get<kLa>(&smem[s << kLa], &v[c][u << kLa]);
              }
            }
          }
          __syncthreads();  // the buffer is rewritten by the next piece / tile
        }
      }

      // ---- layout 2: the former warp bits are chunk bits 0..lw-1 (index bits lv+5+j)
      chunk_butterflies<kLw>(v);
      // Layout 2 offset: lane << lv | chunk_lo << (lv+5) | w_row << (lv+5+lw) | chunk_hi << (lv+5+2lw)
      off_store = (lane << kLv) | (w_row << (kLv + 5 + kLw));
    }

    // ---- scale and store
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
#pragma unroll
      for (int i = 0; i < kVec; ++i) v[c][i] *= scale;
      int chunk_off;
      if constexpr (kLw > 0) {
        const int lo = c & ((1 << kLw) - 1);
        const int hi = c >> kLw;
        chunk_off = (lo << (kLv + 5)) | (hi << (kLv + 5 + 2 * kLw));
      } else {
        chunk_off = c << (kLv + 5);
      }
      store_vector<T, kVec, kVecIO, kPrefetch>(out, base + off_store + chunk_off, total, v[c]);
    }
  }
}

// ------------------------------------------------------------------ launcher

constexpr int64_t kMaxGrid = int64_t{1} << 20;  // grid-stride beyond this many blocks
constexpr int kMaxDevices = 64;                 // devices whose persistent grid is cached

// The blocks of `kernel` resident on the current device at once with `smem` bytes of
// dynamic shared memory (which it opts in to): the grid of a persistent kernel. Worked out
// once per device and kernel; `cache` is that kernel's, zero for "not yet".
template <typename Kernel>
cudaError_t resident_blocks(Kernel kernel, int threads, int smem, std::atomic<int>* cache, int64_t* blocks) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  int known = device < kMaxDevices ? cache[device].load(std::memory_order_relaxed) : 0;
  if (known == 0) {
    int sms = 0, per_sm = 0;
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem);
    if (err != cudaSuccess) return err;
    known = sms * (per_sm > 0 ? per_sm : 1);
    if (device < kMaxDevices) cache[device].store(known, std::memory_order_relaxed);
  }
  *blocks = known;
  return cudaSuccess;
}

template <typename T, int kLog2N, bool kVecIO>
cudaError_t launch_impl(const void* x, void* out, int64_t rows, float scale, cudaStream_t stream) {
  using Tr = Traits<T, kLog2N>;
  constexpr bool kPrefetch = Tr::kPrefetch && kVecIO;
  const int64_t total = rows << kLog2N;
  const int64_t num_tiles = (total + (int64_t{1} << Tr::kLogTile) - 1) >> Tr::kLogTile;
  int64_t max_grid = kMaxGrid;
  if constexpr (kPrefetch) {
    static std::atomic<int> cache[kMaxDevices];
    const cudaError_t err =
        resident_blocks(fwht_kernel<T, kLog2N, kVecIO>, Tr::kThreads, Tr::kStageBytes, cache, &max_grid);
    if (err != cudaSuccess) return err;
  }
  const unsigned grid = static_cast<unsigned>(num_tiles < max_grid ? num_tiles : max_grid);
  fwht_kernel<T, kLog2N, kVecIO><<<grid, Tr::kThreads, kPrefetch ? Tr::kStageBytes : 0, stream>>>(
      static_cast<const T*>(x), static_cast<T*>(out), total, num_tiles, scale);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_dtype(const void* x, void* out, int64_t rows, int log2n, float scale, bool vec_io,
                         cudaStream_t stream) {
  switch (log2n) {
#define FASTSPEC_FWHT_CASE(L)                                            \
  case L:                                                                \
    return vec_io ? launch_impl<T, L, true>(x, out, rows, scale, stream) \
                  : launch_impl<T, L, false>(x, out, rows, scale, stream);
    FASTSPEC_FWHT_CASE(0)
    FASTSPEC_FWHT_CASE(1)
    FASTSPEC_FWHT_CASE(2)
    FASTSPEC_FWHT_CASE(3)
    FASTSPEC_FWHT_CASE(4)
    FASTSPEC_FWHT_CASE(5)
    FASTSPEC_FWHT_CASE(6)
    FASTSPEC_FWHT_CASE(7)
    FASTSPEC_FWHT_CASE(8)
    FASTSPEC_FWHT_CASE(9)
    FASTSPEC_FWHT_CASE(10)
    FASTSPEC_FWHT_CASE(11)
    FASTSPEC_FWHT_CASE(12)
    FASTSPEC_FWHT_CASE(13)
    FASTSPEC_FWHT_CASE(14)
    FASTSPEC_FWHT_CASE(15)
#undef FASTSPEC_FWHT_CASE
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t fwht_launch(const void* x, void* out, int64_t rows, int log2n, float scale, DType dtype,
                        cudaStream_t stream) {
  if (log2n < 0 || log2n > kFwhtMaxLog2N || rows < 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  if (x == nullptr || out == nullptr) return cudaErrorInvalidValue;
  int64_t esize;
  switch (dtype) {
    case DType::kFloat32:
      esize = 4;
      break;
    case DType::kFloat16:
    case DType::kBFloat16:
      esize = 2;
      break;
    default:
      return cudaErrorInvalidValue;
  }
  // rows * n elements, with room for rounding up to a tile: stay far from int64 overflow.
  if (rows > (int64_t{1} << (46 - log2n))) return cudaErrorInvalidValue;
  const uintptr_t xa = reinterpret_cast<uintptr_t>(x);
  const uintptr_t oa = reinterpret_cast<uintptr_t>(out);
  if (xa % static_cast<uintptr_t>(esize) != 0 || oa % static_cast<uintptr_t>(esize) != 0) {
    return cudaErrorInvalidValue;
  }
  const uintptr_t bytes = static_cast<uintptr_t>(rows << log2n) * static_cast<uintptr_t>(esize);
  if (xa != oa && xa < oa + bytes && oa < xa + bytes) return cudaErrorInvalidValue;  // partial overlap
  const bool vec_io = (xa % 16 == 0) && (oa % 16 == 0);
  switch (dtype) {
    case DType::kFloat32:
      return launch_dtype<float>(x, out, rows, log2n, scale, vec_io, stream);
    case DType::kFloat16:
      return launch_dtype<__half>(x, out, rows, log2n, scale, vec_io, stream);
    case DType::kBFloat16:
      return launch_dtype<__nv_bfloat16>(x, out, rows, log2n, scale, vec_io, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastspec
