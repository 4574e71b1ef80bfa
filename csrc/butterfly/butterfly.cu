// Butterfly multiply, forward: kernel and launcher (torch-free). Contract and cost in butterfly.h.
//
// ---------------------------------------------------------------------------------
// Design. A block takes a tile of R rows of one stack (rows b0 .. b0+R-1 of stack h), R·n =
// 2^kLogTile floats in shared memory, and runs every factor of every block of the product on
// it: x is read once, y written once, each twiddle read once per tile (see butterfly.h for
// why R matters: every tile reads its stack's whole twiddle set).
//
// A factor of stride 2^j works on pairs that differ in bit j of the position. The position
// bits are taken kLc = min(5, log2n) at a time ("register groups"): group k holds bits
// [lo_k, lo_k + kLc), lo_k = min(5k, log2n - kLc), and does the factors of bits
// [5k, min(5k + 5, log2n)) (the last group may overlap the one before; it only does the bits
// not done yet). In a group every thread holds, for kRows rows, the 2^kLc elements that differ
// in the group's bits, so the group's factors are register arithmetic: per pair one 2×2
// matrix (one vector load of 4 twiddles, used for the kRows rows) and 4 multiplies and 2 adds
// a row. Between groups the tile goes through shared memory (each thread puts its elements
// back and, after one barrier, gets the next group's). An increasing block runs the groups
// 0, 1, ..., a decreasing one the reverse, each with its bits in order; consecutive blocks
// alternate, so the last group of a block is the first of the next and stays in registers.
// Passes (register groups loaded) per product: P = nblocks·G - (nblocks - 1), G = ceil(log2n/5).
//
// Thread layout in group k: the tile index q (row << log2n | position) is
//   q = t_low | i << lo | t_high << (lo + kLc) | j << (kLogTile - kLogRows)
// with t = t_high << lo | t_low the thread, i the register (0 .. 2^kLc - 1) and j the thread's
// row slot (0 .. kRows - 1; the top bits of q, above every position bit, so a twiddle is
// shared by the kRows rows). Lanes are the 5 lowest bits of q outside the group.
//
// Shared memory holds q at slot(q) = q ^ (((q >> 5) ^ (q >> 10)) & 31): the bank of q is the
// XOR of its three 5-bit digits. A warp's 32 lanes vary 5 bits of q whose positions are
// distinct mod 5 in every group (bits 5..9 in group 0, 0..4 in the middle ones, and
// {0 .. log2n-6} ∪ {log2n .. 9} in the last when log2n < 10), so they hit 32 distinct banks:
// the gets and puts are free of bank conflicts, and so are the stage copies below (32
// consecutive q).
//
// Global memory: the tile is copied in (converted to float32) and out (rounded to the dtype)
// with consecutive threads on consecutive elements: coalesced 4- or 2-byte accesses, 64 or
// 32 independent loads a thread in flight. (16-byte vectors would need a swizzle that keeps
// runs of 4/8 elements together; not done.) Rows past the batch are zeros, never stored.
//
// Configurations (Plan): 256 threads (more for n >= 2^14: one row is 2^(log2n-5) threads),
// kRows = 2 rows a thread (1 at n = 2^15), 64 floats of data a thread; the tile is 2^14 floats
// (64 KiB) for log2n <= 13, 2^15 (128 KiB) above: R = 2^14/n rows (n <= 2^13), 2 at 2^14, 1 at
// 2^15. 2^16 and up would not fit one row in a block's shared memory: rejected. Untuned (no
// GPU was lent when this was written).
//
// Precision: float32 throughout; each output of a factor is fmaf(t_r0, a, t_r1·b): two
// roundings, as the float64 reference's tolerance for F factors allows (tests/conftest.py).
// ---------------------------------------------------------------------------------

#include "butterfly.h"  // same directory: compiles with or without -Icsrc

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "../common/elements.h"

namespace fastspec {
namespace {

template <int kLog2N>
struct Plan {
  static constexpr int kN = 1 << kLog2N;
  static constexpr int kLc = kLog2N < 5 ? kLog2N : 5;  // register bits of a group
  static constexpr int kGroups = (kLog2N + 4) / 5;
  static constexpr int kLogThreads = kLog2N - kLc > 8 ? kLog2N - kLc : 8;
  static constexpr int kLogRows = kLog2N >= 14 ? 0 : 1;  // rows a thread
  static constexpr int kThreads = 1 << kLogThreads;
  static constexpr int kRows = 1 << kLogRows;
  static constexpr int kRegs = 1 << kLc;
  static constexpr int kLogTile = kLogThreads + kLc + kLogRows;  // floats in shared memory
  static constexpr int kTileRows = 1 << (kLogTile - kLog2N);
  static constexpr int kSharedBytes = 4 << kLogTile;
  static constexpr int kRowSlotShift = kLogTile - kLogRows;  // q bit of the row slot j

  static_assert(kLog2N >= 1 && kLog2N <= kButterflyMaxLog2N, "log2n out of range");
  static_assert(kRowSlotShift >= kLog2N, "a row's positions are inside one row slot");
  static_assert(kLogTile <= 15, "slot() folds three 5-bit digits");
  static_assert(kLc == 5 || kGroups == 1, "register bits: 5, or the whole row");
  static_assert(kThreads <= 1024, "block size");

  // First position bit of register group k; its factors are those of bits >= 5k.
  __host__ __device__ static constexpr int lo(int k) { return 5 * k < kLog2N - kLc ? 5 * k : kLog2N - kLc; }
  // Tile index of register 0, row slot 0 of thread t in the group starting at bit lo.
  __device__ static int base(int t, int lo) { return (t & ((1 << lo) - 1)) | ((t >> lo) << (lo + kLc)); }
};

// Shared-memory slot of tile index q < 2^15: the bank is the XOR of q's three 5-bit digits.
// XOR-linear in q: slot(a | b) = slot(a) ^ slot(b) for a and b without common bits.
__host__ __device__ constexpr int slot(int q) { return q ^ (((q >> 5) ^ (q >> 10)) & 31); }

// The 2×2 matrix at p (4 consecutive elements, aligned to their size) as floats.
__device__ __forceinline__ void load_matrix(const float* p, float (&m)[4]) {
  const float4 f = *reinterpret_cast<const float4*>(p);
  m[0] = f.x;
  m[1] = f.y;
  m[2] = f.z;
  m[3] = f.w;
}

template <typename T>
__device__ __forceinline__ void load_matrix(const T* p, float (&m)[4]) {
  static_assert(sizeof(T) == 2, "float16 or bfloat16: 4 elements are 8 bytes");
  alignas(8) T e[4];
  *reinterpret_cast<uint2*>(e) = *reinterpret_cast<const uint2*>(p);
#pragma unroll
  for (int i = 0; i < 4; ++i) m[i] = to_float(e[i]);
}

// This thread's elements of register group kGroup between shared memory and registers.
template <int kLog2N, int kGroup, bool kPut>
__device__ __forceinline__ void exchange(float* smem, float (&v)[Plan<kLog2N>::kRows][Plan<kLog2N>::kRegs], int t) {
  using P = Plan<kLog2N>;
  constexpr int kLo = P::lo(kGroup);
  const int s0 = slot(P::base(t, kLo));
#pragma unroll
  for (int j = 0; j < P::kRows; ++j) {
#pragma unroll
    for (int i = 0; i < P::kRegs; ++i) {
      float& cell = smem[s0 ^ slot((i << kLo) | (j << P::kRowSlotShift))];
      if constexpr (kPut) {
        cell = v[j][i];
      } else {
        v[j][i] = cell;
      }
    }
  }
}

// One factor, of stride 2^bit with bit = lo + kLb (register bit kLb of group kGroup), on this
// thread's registers; tw: the factor's n/2 matrices. The pair of registers (i0, i1 = i0 + 2^kLb)
// has lower position a = base + (i0 << lo) and pair index p(a) = (a >> (bit+1) << bit) |
// (a mod 2^bit): p(base) plus a constant, as base and i0 << lo have no bit in common.
template <typename T, int kLog2N, int kGroup, int kLb>
__device__ __forceinline__ void factor(float (&v)[Plan<kLog2N>::kRows][Plan<kLog2N>::kRegs], const T* tw, int base) {
  using P = Plan<kLog2N>;
  if constexpr (kLb < P::kLc) {
    constexpr int kLo = P::lo(kGroup);
    constexpr int kBit = kLo + kLb;
    const auto pair_of = [](int a) { return ((a >> (kBit + 1)) << kBit) | (a & ((1 << kBit) - 1)); };
    const T* tw_base = tw + 4 * pair_of(base & (P::kN - 1));
#pragma unroll
    for (int i0 = 0; i0 < P::kRegs; ++i0) {
      if ((i0 & (1 << kLb)) != 0) continue;
      const int i1 = i0 | (1 << kLb);
      float m[4];
      load_matrix(tw_base + 4 * pair_of(i0 << kLo), m);
#pragma unroll
      for (int j = 0; j < P::kRows; ++j) {
        const float x0 = v[j][i0], x1 = v[j][i1];
        v[j][i0] = fmaf(m[0], x0, m[1] * x1);
        v[j][i1] = fmaf(m[2], x0, m[3] * x1);
      }
    }
  }
}

// The factors of register group kGroup (position bits from max(lo, 5·kGroup) to lo + kLc - 1,
// in the block's direction) on this thread's registers; tw: this stack's and block's twiddles.
// A loop, not unrolled: ptxas hoists the twiddle loads of unrolled factors to the front (80
// matrices of a group at once: 255 registers, and spills); so one factor's 16 are live at a
// time. The switch gives each register bit its own unrolled code.
template <typename T, int kLog2N, int kGroup, bool kIncreasing>
__device__ __forceinline__ void group_factors(float (&v)[Plan<kLog2N>::kRows][Plan<kLog2N>::kRegs], const T* tw,
                                              int t) {
  using P = Plan<kLog2N>;
  constexpr int kLo = P::lo(kGroup);
  const int base = P::base(t, kLo);
#pragma unroll 1
  for (int s = 0; s < P::kLc; ++s) {
    const int lb = kIncreasing ? s : P::kLc - 1 - s;  // the factor's bit among the registers
    const int bit = kLo + lb;                         // ... and in the position: stride 2^bit
    if (bit < 5 * kGroup) continue;                   // done by the group before
    const T* f = tw + (int64_t{kIncreasing ? bit : kLog2N - 1 - bit} << (kLog2N + 1));  // factor idx
    switch (lb) {
      case 0:
        factor<T, kLog2N, kGroup, 0>(v, f, base);
        break;
      case 1:
        factor<T, kLog2N, kGroup, 1>(v, f, base);
        break;
      case 2:
        factor<T, kLog2N, kGroup, 2>(v, f, base);
        break;
      case 3:
        factor<T, kLog2N, kGroup, 3>(v, f, base);
        break;
      default:
        factor<T, kLog2N, kGroup, 4>(v, f, base);
        break;
    }
  }
}

// One block of the product: its register groups in its direction (kStep: the next one to do);
// the first is in v already unless `load_first`. Returns with the last group in v.
template <typename T, int kLog2N, bool kIncreasing, int kStep = 0>
__device__ __forceinline__ void block_factors(float* smem, float (&v)[Plan<kLog2N>::kRows][Plan<kLog2N>::kRegs],
                                              const T* tw, int t, bool load_first) {
  using P = Plan<kLog2N>;
  if constexpr (kStep < P::kGroups) {
    constexpr int kGroup = kIncreasing ? kStep : P::kGroups - 1 - kStep;
    if constexpr (kStep > 0) {
      constexpr int kPrevious = kIncreasing ? kGroup - 1 : kGroup + 1;
      exchange<kLog2N, kPrevious, true>(smem, v, t);
      __syncthreads();
      exchange<kLog2N, kGroup, false>(smem, v, t);
    } else if (load_first) {
      exchange<kLog2N, kGroup, false>(smem, v, t);
    }
    group_factors<T, kLog2N, kGroup, kIncreasing>(v, tw, t);
    block_factors<T, kLog2N, kIncreasing, kStep + 1>(smem, v, tw, t, load_first);
  }
}

// v, which the compiler cannot see through from here on (no instruction is emitted). The
// stage-out's addresses (global and shared) are the stage-in's; without this ptxas keeps the
// 64 of them live across all the factors (and spills) instead of computing them again.
__device__ __forceinline__ int opaque(int v) {
#ifndef FASTSPEC_CUDA_EMU
  asm volatile("" : "+r"(v));
#endif
  return v;
}
__device__ __forceinline__ int64_t opaque(int64_t v) {
#ifndef FASTSPEC_CUDA_EMU
  asm volatile("" : "+l"(v));
#endif
  return v;
}

// Copy e of thread t in the stages is tile index q = e·kThreads + t: row q >> log2n of the
// tile, position q mod n. Written so that the row is a compile-time constant when a row has
// at least kThreads elements (the loads then share one row pointer).
template <int kLog2N>
__device__ __forceinline__ int stage_row(int e, int t) {
  using P = Plan<kLog2N>;
  if constexpr (P::kThreads <= P::kN) {
    return (e * P::kThreads) >> kLog2N;
  } else {
    return e * (P::kThreads >> kLog2N) + (t >> kLog2N);
  }
}

template <int kLog2N>
__device__ __forceinline__ int stage_position(int e, int t) {
  using P = Plan<kLog2N>;
  if constexpr (P::kThreads <= P::kN) {
    return ((e * P::kThreads) & (P::kN - 1)) + t;
  } else {
    return t & (P::kN - 1);
  }
}

template <typename T, int kLog2N>
__global__ void __launch_bounds__(Plan<kLog2N>::kThreads)
    butterfly_forward_kernel(const T* twiddle, const T* x, T* out, int64_t batch, int64_t nstacks, int nblocks,
                             bool increasing, int tiles_per_stack, int num_tiles) {
  using P = Plan<kLog2N>;
  constexpr int kCopies = (1 << P::kLogTile) / P::kThreads;  // stage elements a thread
  extern __shared__ float smem[];                           // the tile: 2^kLogTile floats
  const int t = static_cast<int>(threadIdx.x);
  const int64_t row_stride = nstacks << kLog2N;
  const int64_t stack_elems = int64_t{nblocks} * kLog2N << (kLog2N + 1);  // nblocks·log2n·(n/2)·4

  for (int tile = static_cast<int>(blockIdx.x); tile < num_tiles; tile += static_cast<int>(gridDim.x)) {
    const int h = tile / tiles_per_stack;  // 32-bit: a 64-bit division is a subroutine call
    const int64_t b0 = int64_t{tile - h * tiles_per_stack} * P::kTileRows;
    const int64_t first = (b0 * nstacks + h) << kLog2N;  // the tile's first element in x and out

    // ---- stage in. Each thread later reads back exactly the slots it writes here, so the
    // next tile's stage-in needs no barrier after this tile's stage-out.
#pragma unroll
    for (int e = 0; e < kCopies; ++e) {
      const int row = stage_row<kLog2N>(e, t);
      smem[slot(e * P::kThreads + t)] =
          b0 + row < batch ? to_float(x[first + row * row_stride + stage_position<kLog2N>(e, t)]) : 0.0f;
    }
    __syncthreads();

    // ---- every factor of every block, a register group at a time; consecutive blocks
    // share a group (the last of one is the first of the next), which stays in registers.
    float v[P::kRows][P::kRegs];
    for (int block = 0; block < nblocks; ++block) {
      const T* tw = twiddle + h * stack_elems + (int64_t{block} * kLog2N << (kLog2N + 1));
      if (increasing != ((block & 1) != 0)) {
        block_factors<T, kLog2N, true>(smem, v, tw, t, block == 0);
      } else {
        block_factors<T, kLog2N, false>(smem, v, tw, t, block == 0);
      }
    }
    const bool last_increasing = increasing != (((nblocks - 1) & 1) != 0);  // ends in group G-1, else 0
    if (last_increasing) {
      exchange<kLog2N, P::kGroups - 1, true>(smem, v, t);
    } else {
      exchange<kLog2N, 0, true>(smem, v, t);
    }
    __syncthreads();

    // ---- stage out
    const int64_t out_b0 = opaque(b0), out_first = opaque(first), out_row_stride = opaque(row_stride);
    const int t_out = opaque(t);
#pragma unroll
    for (int e = 0; e < kCopies; ++e) {
      const int row = stage_row<kLog2N>(e, t_out);
      if (out_b0 + row < batch) {
        out[out_first + row * out_row_stride + stage_position<kLog2N>(e, t_out)] =
            from_float<T>(smem[slot(e * P::kThreads + t_out)]);
      }
    }
  }
}

// ------------------------------------------------------------------ launcher

constexpr int kMaxGrid = 1 << 20;               // grid-stride beyond this many blocks
constexpr int64_t kMaxTiles = int64_t{1} << 31;  // tiles are counted in 32 bits
constexpr int kMaxDevices = 64;                 // devices whose opt-in is remembered

// Opt `kernel` in to `bytes` of dynamic shared memory on the current device, once per device.
template <typename Kernel>
cudaError_t opt_in_shared_memory(Kernel kernel, int bytes, std::atomic<bool>* done) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device < kMaxDevices && done[device].load(std::memory_order_relaxed)) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err == cudaSuccess && device < kMaxDevices) done[device].store(true, std::memory_order_relaxed);
  return err;
}

template <typename T, int kLog2N>
cudaError_t launch_impl(const void* twiddle, const void* x, void* out, int64_t batch, int64_t nstacks, int nblocks,
                        bool increasing, cudaStream_t stream) {
  using P = Plan<kLog2N>;
  static std::atomic<bool> opted_in[kMaxDevices];
  const cudaError_t err = opt_in_shared_memory(butterfly_forward_kernel<T, kLog2N>, P::kSharedBytes, opted_in);
  if (err != cudaSuccess) return err;
  const int64_t tiles_per_stack = (batch + P::kTileRows - 1) / P::kTileRows;
  if (tiles_per_stack * nstacks >= kMaxTiles) return cudaErrorInvalidValue;
  const int num_tiles = static_cast<int>(tiles_per_stack * nstacks);
  const unsigned grid = static_cast<unsigned>(num_tiles < kMaxGrid ? num_tiles : kMaxGrid);
  butterfly_forward_kernel<T, kLog2N><<<grid, P::kThreads, P::kSharedBytes, stream>>>(
      static_cast<const T*>(twiddle), static_cast<const T*>(x), static_cast<T*>(out), batch, nstacks, nblocks,
      increasing, static_cast<int>(tiles_per_stack), num_tiles);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_dtype(const void* twiddle, const void* x, void* out, int64_t batch, int64_t nstacks, int nblocks,
                         int log2n, bool increasing, cudaStream_t stream) {
  switch (log2n) {
#define FASTSPEC_BUTTERFLY_CASE(L) \
  case L:                          \
    return launch_impl<T, L>(twiddle, x, out, batch, nstacks, nblocks, increasing, stream);
    FASTSPEC_BUTTERFLY_CASE(1)
    FASTSPEC_BUTTERFLY_CASE(2)
    FASTSPEC_BUTTERFLY_CASE(3)
    FASTSPEC_BUTTERFLY_CASE(4)
    FASTSPEC_BUTTERFLY_CASE(5)
    FASTSPEC_BUTTERFLY_CASE(6)
    FASTSPEC_BUTTERFLY_CASE(7)
    FASTSPEC_BUTTERFLY_CASE(8)
    FASTSPEC_BUTTERFLY_CASE(9)
    FASTSPEC_BUTTERFLY_CASE(10)
    FASTSPEC_BUTTERFLY_CASE(11)
    FASTSPEC_BUTTERFLY_CASE(12)
    FASTSPEC_BUTTERFLY_CASE(13)
    FASTSPEC_BUTTERFLY_CASE(14)
#undef FASTSPEC_BUTTERFLY_CASE
    default:
      return cudaErrorInvalidValue;
  }
}

bool overlap(uintptr_t a, uintptr_t a_bytes, uintptr_t b, uintptr_t b_bytes) { return a < b + b_bytes && b < a + a_bytes; }

}  // namespace

cudaError_t butterfly_forward_launch(const void* twiddle, const void* x, void* out, int64_t batch, int64_t nstacks,
                                     int nblocks, int log2n, bool increasing_stride, ButterflyDType dtype,
                                     cudaStream_t stream) {
  if (log2n < 1 || log2n > kButterflyMaxLog2N || nblocks < 1 || batch < 0 || nstacks < 0) return cudaErrorInvalidValue;
  if (batch == 0 || nstacks == 0) return cudaSuccess;
  if (twiddle == nullptr || x == nullptr || out == nullptr) return cudaErrorInvalidValue;
  int64_t esize;
  switch (dtype) {
    case ButterflyDType::kFloat32:
      esize = 4;
      break;
    case ButterflyDType::kFloat16:
    case ButterflyDType::kBFloat16:
      esize = 2;
      break;
    default:
      return cudaErrorInvalidValue;
  }
  // batch·nstacks·n elements of x and nstacks·nblocks·log2n·2n of twiddle: far from int64 overflow.
  const int64_t limit = int64_t{1} << (46 - log2n);
  if (batch > limit || nstacks > limit / batch || nstacks > (int64_t{1} << 40) / nblocks) return cudaErrorInvalidValue;
  const uintptr_t ta = reinterpret_cast<uintptr_t>(twiddle);
  const uintptr_t xa = reinterpret_cast<uintptr_t>(x);
  const uintptr_t oa = reinterpret_cast<uintptr_t>(out);
  const uintptr_t e = static_cast<uintptr_t>(esize);
  if (xa % e != 0 || oa % e != 0 || ta % (4 * e) != 0) return cudaErrorInvalidValue;
  const uintptr_t x_bytes = static_cast<uintptr_t>((batch * nstacks) << log2n) * e;
  const uintptr_t tw_bytes = static_cast<uintptr_t>(nstacks * nblocks * log2n << (log2n + 1)) * e;
  if (xa != oa && overlap(xa, x_bytes, oa, x_bytes)) return cudaErrorInvalidValue;  // partial overlap
  if (overlap(ta, tw_bytes, oa, x_bytes)) return cudaErrorInvalidValue;              // out over the twiddles
  switch (dtype) {
    case ButterflyDType::kFloat32:
      return launch_dtype<float>(twiddle, x, out, batch, nstacks, nblocks, log2n, increasing_stride, stream);
    case ButterflyDType::kFloat16:
      return launch_dtype<__half>(twiddle, x, out, batch, nstacks, nblocks, log2n, increasing_stride, stream);
    case ButterflyDType::kBFloat16:
      return launch_dtype<__nv_bfloat16>(twiddle, x, out, batch, nstacks, nblocks, log2n, increasing_stride, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastspec
