// CUDA kernels on the CPU, for tests without a GPU (see tests/cuda_emu.py).
//
// Every thread of a block is an OS thread running the kernel body; blocks run one after
// another, so `__shared__` variables become function statics and dynamic shared memory
// one buffer per launch. __syncthreads is a barrier over the block, __shfl_xor_sync
// exchanges through a per-warp buffer between two warp barriers, and asynchronous copies
// (__pipeline_memcpy_async) happen only when the thread waits for them, so reading a
// slot too early reads stale data. The emulated device has kSMs SMs and one resident block
// per SM, and enforces the opt-in for more than 48 KiB of dynamic shared memory. The
// threads of a block run in parallel, or one at a time in a fixed order (Schedule), which
// makes shared-memory races visible as results that depend on the order. The device types the kernels use (dim3, uint4/uint2/float4/float2, __half,
// __nv_bfloat16 with round-to-nearest-even conversions) are plain host types. Float
// arithmetic is IEEE single precision as on the GPU (compile with -ffp-contract=off).
// Warp matrix multiply-accumulate (mma.sync m16n8k16, f16/bf16 into float32) is
// cuda_emu::mma_m16n8k16: the warp meets as for a shuffle (all 32 lanes must arrive), each
// lane's fragment registers are decoded with the PTX ISA's per-lane layout, and the sum is
// modelled as the tensor cores do it (mma_sum). Kernels reach it through a wrapper whose
// inline PTX is behind `#ifdef FASTSPEC_CUDA_EMU` (csrc/common/warp_mma.h).
// Limits: in parallel a missing __syncthreads shows only by chance (compare the two fixed
// orders instead); a barrier not all threads reach aborts ("deadlock"); no implicit
// warp-synchronous execution; 1-D launches only.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <semaphore>
#include <thread>
#include <vector>

// ------------------------------------------------------------------ keywords

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

// ------------------------------------------------------------------ runtime types

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct CUstream_st;
using cudaStream_t = CUstream_st*;

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 gridDim, blockDim;

struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }

// ------------------------------------------------------------------ half types

struct __half { uint16_t bits; };
struct __nv_bfloat16 { uint16_t bits; };

inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.bits, 2);
  return static_cast<float>(f);
}
inline __half __float2half_rn(float v) {
  const _Float16 f = static_cast<_Float16>(v);  // IEEE conversion: nearest even
  __half h;
  std::memcpy(&h.bits, &f, 2);
  return h;
}
inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t u = uint32_t{b.bits} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((u >> 16) | 0x40u)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return {static_cast<uint16_t>(u >> 16)};
}

// ------------------------------------------------------------------ execution

namespace cuda_emu {

// How the threads of a block take turns. kParallel: all at once, as the OS schedules them.
// kAscending / kDescending: one thread at a time, each running until it waits at a barrier
// (__syncthreads, or a shuffle's warp barrier), then the lowest (highest) ready thread:
// a fixed order. A kernel whose result differs between the two orders has a race: two
// threads touch the same memory between two barriers, one of them writing.
enum class Schedule : int { kParallel = 0, kAscending = 1, kDescending = 2 };
inline Schedule schedule = Schedule::kParallel;

[[noreturn]] inline void deadlock(unsigned arrived, unsigned count) {
  std::fprintf(stderr, "cuda_emu: deadlock, %u of %u threads reached a barrier\n", arrived, count);
  std::abort();
}

// Turn-taking for the sequential schedules. Only the thread holding the turn runs, so the
// state here is touched by one thread at a time; the semaphores order the hand-overs.
class Turns {
 public:
  Turns(unsigned threads, Schedule order) : order_(order), waiting_(threads, 0), done_(threads, 0) {
    for (unsigned t = 0; t < threads; ++t) turn_.emplace_back(std::make_unique<std::binary_semaphore>(0));
  }
  void begin() { turn_[static_cast<unsigned>(next_ready())]->release(); }
  void await(unsigned me) { turn_[me]->acquire(); }
  void set_waiting(unsigned t, bool w) { waiting_[t] = w; }
  // `me` stops (at a barrier, possibly one it just completed): the next ready thread runs.
  void pass(unsigned me, unsigned arrived, unsigned count) {
    const int next = next_ready();
    if (next < 0) deadlock(arrived, count);
    if (static_cast<unsigned>(next) == me) return;
    turn_[static_cast<unsigned>(next)]->release();
    turn_[me]->acquire();
  }
  void finish(unsigned me) {
    done_[me] = 1;
    const int next = next_ready();
    if (next >= 0) turn_[static_cast<unsigned>(next)]->release();
  }

 private:
  int next_ready() const {
    const int n = static_cast<int>(done_.size());
    for (int i = 0; i < n; ++i) {
      const int t = order_ == Schedule::kAscending ? i : n - 1 - i;
      if (!waiting_[t] && !done_[t]) return t;
    }
    return -1;
  }
  Schedule order_;
  std::vector<char> waiting_, done_;
  std::vector<std::unique_ptr<std::binary_semaphore>> turn_;
};

// A reusable barrier over `count` threads; a barrier some threads never reach is reported.
class Barrier {
 public:
  Barrier(unsigned count, Turns* turns) : count_(count), turns_(turns) {}
  void wait() {
    if (turns_ != nullptr) {
      wait_in_turn();
      return;
    }
    std::unique_lock<std::mutex> lock(mutex_);
    const unsigned long long gen = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    if (!cv_.wait_for(lock, std::chrono::seconds(60), [&] { return generation_ != gen; })) deadlock(arrived_, count_);
  }

 private:
  void wait_in_turn() {
    const unsigned me = threadIdx.x;
    waiters_.push_back(me);
    turns_->set_waiting(me, true);
    if (waiters_.size() == count_) {
      for (unsigned t : waiters_) turns_->set_waiting(t, false);
      waiters_.clear();
    }
    turns_->pass(me, static_cast<unsigned>(waiters_.size()), count_);
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  unsigned count_, arrived_ = 0;
  unsigned long long generation_ = 0;
  Turns* turns_;
  std::vector<unsigned> waiters_;
};

// One lane's registers of a warp matrix operation (A, B and C fragments of m16n8k16).
struct MmaLane {
  uint32_t a[4];
  uint32_t b[2];
  float c[4];
};

struct Block {
  explicit Block(unsigned threads)
      : turns(schedule == Schedule::kParallel ? nullptr : std::make_unique<Turns>(threads, schedule)),
        sync(threads, turns.get()),
        lanes((threads + 31) / 32),
        mma_lanes((threads + 31) / 32) {
    for (unsigned w = 0; w * 32 < threads; ++w) {
      warps.emplace_back(std::make_unique<Barrier>(std::min(32u, threads - 32 * w), turns.get()));
    }
  }
  std::unique_ptr<Turns> turns;  // null: parallel
  Barrier sync;
  std::vector<std::unique_ptr<Barrier>> warps;
  std::vector<std::array<uint64_t, 32>> lanes;
  std::vector<std::array<MmaLane, 32>> mma_lanes;
};

constexpr int kSMs = 2;                              // the emulated device
constexpr size_t kDefaultDynamicSmem = 48 * 1024;    // more needs the kernel's opt-in
constexpr size_t kMaxDynamicSmem = 227 * 1024;

inline Block* current = nullptr;
inline cudaError_t last_error = cudaSuccess;
inline std::mutex launch_mutex;
inline std::map<const void*, size_t> dynamic_smem_opt_in;  // per kernel
inline std::vector<std::max_align_t> dynamic_smem_buffer;

inline void* dynamic_shared() { return dynamic_smem_buffer.data(); }

// Asynchronous copies of this thread: committed groups, oldest first, and the open group.
struct Copy {
  void* dst;
  const void* src;
  size_t bytes;
};
inline thread_local std::vector<std::vector<Copy>> committed;
inline thread_local std::vector<Copy> open_group;

inline void complete_copies(size_t keep_newest) {
  while (committed.size() > keep_newest) {
    for (const Copy& c : committed.front()) std::memcpy(c.dst, c.src, c.bytes);
    committed.erase(committed.begin());
  }
}

// kernel<<<grid, block, smem, stream>>>(args) is rewritten to
// launch(grid, block, smem, stream, &kernel, [&] { kernel(args); }).
template <class Body>
void launch(dim3 grid, dim3 block, size_t dynamic_smem, cudaStream_t, const void* kernel, Body&& body) {
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (block.y != 1 || block.z != 1 || grid.y != 1 || grid.z != 1 || threads == 0 || threads > 1024 ||
      grid.x == 0) {
    last_error = cudaErrorInvalidConfiguration;  // (only 1-D launches are emulated)
    return;
  }
  const auto opt_in = dynamic_smem_opt_in.find(kernel);
  if (dynamic_smem > (opt_in == dynamic_smem_opt_in.end() ? kDefaultDynamicSmem : opt_in->second)) {
    last_error = cudaErrorInvalidValue;
    return;
  }
  std::lock_guard<std::mutex> one_launch_at_a_time(launch_mutex);
  dynamic_smem_buffer.assign(dynamic_smem / sizeof(std::max_align_t) + 1, std::max_align_t{});
  Block b(static_cast<unsigned>(threads));
  current = &b;
  gridDim = grid;
  blockDim = block;
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      threadIdx = dim3(t);
      if (b.turns) b.turns->await(t);
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = dim3(bx);
        body();
        open_group.clear();  // copies the kernel never committed or waited for land at its end
        complete_copies(0);
        b.sync.wait();  // the next block reuses the shared memory
      }
      if (b.turns) b.turns->finish(t);
    });
  }
  if (b.turns) b.turns->begin();
  for (auto& th : pool) th.join();
  current = nullptr;
}

}  // namespace cuda_emu

inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (attr != cudaDevAttrMultiProcessorCount || device != 0) return cudaErrorInvalidValue;
  *value = cuda_emu::kSMs;
  return cudaSuccess;
}

template <class Kernel>
cudaError_t cudaFuncSetAttribute(Kernel kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || size_t(value) > cuda_emu::kMaxDynamicSmem) {
    return cudaErrorInvalidValue;
  }
  cuda_emu::dynamic_smem_opt_in[reinterpret_cast<const void*>(kernel)] = size_t(value);
  return cudaSuccess;
}

template <class Kernel>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel, int threads, size_t) {
  *blocks = threads > 0 && threads <= 1024 ? 1 : 0;
  return cudaSuccess;
}

inline void __pipeline_memcpy_async(void* dst_shared, const void* src_global, size_t bytes, size_t zero_fill = 0) {
  if (zero_fill != 0 || reinterpret_cast<uintptr_t>(dst_shared) % bytes || reinterpret_cast<uintptr_t>(src_global) % bytes) {
    std::fprintf(stderr, "cuda_emu: __pipeline_memcpy_async needs aligned 4/8/16-byte copies without zero fill\n");
    std::abort();
  }
  cuda_emu::open_group.push_back({dst_shared, src_global, bytes});
}
inline void __pipeline_commit() {
  cuda_emu::committed.push_back(std::move(cuda_emu::open_group));
  cuda_emu::open_group.clear();
}
inline void __pipeline_wait_prior(size_t prior) { cuda_emu::complete_copies(prior); }

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = cuda_emu::last_error;
  cuda_emu::last_error = cudaSuccess;
  return e;
}

inline void __syncthreads() { cuda_emu::current->sync.wait(); }

template <class T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= 8, "one register");
  const unsigned t = threadIdx.x, warp = t / 32, lane = t % 32;
  if (mask != 0xffffffffu || width != 32) {
    std::fprintf(stderr, "cuda_emu: only full-warp shuffles are emulated\n");
    std::abort();
  }
  cuda_emu::Block& b = *cuda_emu::current;
  std::memcpy(&b.lanes[warp][lane], &value, sizeof(T));
  b.warps[warp]->wait();
  T other;
  std::memcpy(&other, &b.lanes[warp][lane ^ static_cast<unsigned>(lane_mask)], sizeof(T));
  b.warps[warp]->wait();
  return other;
}

// ------------------------------------------------------------------ math and bit intrinsics

inline unsigned short __half_as_ushort(__half h) { return h.bits; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.bits; }
// The GPU's fast sine/cosine (MUFU) is accurate to about 2^-21 in [-pi, pi]; these are better.
inline void __sincosf(float x, float* s, float* c) {
  *s = std::sin(x);
  *c = std::cos(x);
}
inline void sincospif(float x, float* s, float* c) {
  constexpr double kPi = 3.14159265358979323846;
  *s = static_cast<float>(std::sin(kPi * x));
  *c = static_cast<float>(std::cos(kPi * x));
}

// ------------------------------------------------------------------ warp matrix multiply-accumulate

#define FASTSPEC_CUDA_EMU 1

namespace cuda_emu {

// Fragment layouts of mma.m16n8k16 with .f16/.bf16 multiplicands and .f32 accumulators
// (PTX ISA 9.7.14.5.8): lane = 4 * groupID + threadID_in_group; element i of a lane's
// fragment (registers hold two 16-bit elements each, the lower index in the low half).
struct RowCol {
  int row, col;
};
// A (16 x 16, row-major), elements a0..a7 in registers 0..3.
inline RowCol mma_a_element(int lane, int i) {
  const int g = lane >> 2, t = lane & 3;
  return {g + ((i & 2) ? 8 : 0), 2 * t + (i & 1) + (i >= 4 ? 8 : 0)};
}
// B (16 x 8, column-major), elements b0..b3 in registers 0..1.
inline RowCol mma_b_element(int lane, int i) {
  const int g = lane >> 2, t = lane & 3;
  return {2 * t + (i & 1) + (i >= 2 ? 8 : 0), g};
}
// C and D (16 x 8, float32), elements c0..c3.
inline RowCol mma_c_element(int lane, int i) {
  const int g = lane >> 2, t = lane & 3;
  return {g + (i >= 2 ? 8 : 0), 2 * t + (i & 1)};
}

inline float element_to_float(uint16_t bits, __half) { return __half2float(__half{bits}); }
inline float element_to_float(uint16_t bits, __nv_bfloat16) { return __bfloat162float(__nv_bfloat16{bits}); }

// c + sum_k a[k] * b[k] as the tensor cores compute it: the PTX ISA leaves the order and
// rounding of the sum open; measurements (Fasi, Higham, Mikaitis, Pranesh, "Numerical
// behavior of NVIDIA tensor cores", PeerJ CS 2021) show exact products, every addend aligned
// to the largest one and truncated to its 24 significant bits, and the sum truncated to
// float32. Modelled so: never more accurate than the hardware. NaN and Inf propagate.
inline float mma_sum(float c, const float* a, const float* b, int n) {
  double terms[17];
  terms[0] = c;
  double plain = c;
  for (int k = 0; k < n; ++k) {
    terms[k + 1] = static_cast<double>(a[k]) * static_cast<double>(b[k]);  // exact
    plain += terms[k + 1];
  }
  if (!std::isfinite(plain)) return static_cast<float>(plain);
  int emax = INT32_MIN;
  for (int k = 0; k <= n; ++k) {
    if (terms[k] != 0.0) emax = std::max(emax, std::ilogb(terms[k]));
  }
  if (emax == INT32_MIN) return c + 0.0f;
  const double quantum = std::ldexp(1.0, emax - 23);
  double sum = 0.0;  // a multiple of quantum below 2^(emax + 6): exact in double
  for (int k = 0; k <= n; ++k) sum += std::trunc(terms[k] / quantum) * quantum;
  float f = static_cast<float>(sum);
  if (std::fabs(static_cast<double>(f)) > std::fabs(sum)) f = std::nextafter(f, 0.0f);  // toward zero
  return f;
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 d, a, b, c of this lane:
// the whole warp must call it (it waits for all 32 lanes, as the .aligned instruction
// requires them), with T = __half or __nv_bfloat16 for the multiplicands.
template <class T>
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
  const unsigned t = threadIdx.x, warp = t / 32, lane = t % 32;
  Block& blk = *current;
  if ((warp + 1) * 32 > blockDim.x) {
    std::fprintf(stderr, "cuda_emu: mma.sync needs a full warp (block of %u threads)\n", blockDim.x);
    std::abort();
  }
  MmaLane& mine = blk.mma_lanes[warp][lane];
  std::copy(a, a + 4, mine.a);
  std::copy(b, b + 2, mine.b);
  std::copy(c, c + 4, mine.c);
  blk.warps[warp]->wait();
  float am[16][16], bm[16][8], cm[16][8];
  for (int l = 0; l < 32; ++l) {
    const MmaLane& s = blk.mma_lanes[warp][l];
    for (int i = 0; i < 8; ++i) {
      const RowCol e = mma_a_element(l, i);
      am[e.row][e.col] = element_to_float(static_cast<uint16_t>(s.a[i / 2] >> (16 * (i & 1))), T{});
    }
    for (int i = 0; i < 4; ++i) {
      const RowCol e = mma_b_element(l, i);
      bm[e.row][e.col] = element_to_float(static_cast<uint16_t>(s.b[i / 2] >> (16 * (i & 1))), T{});
      const RowCol f = mma_c_element(l, i);
      cm[f.row][f.col] = s.c[i];
    }
  }
  blk.warps[warp]->wait();  // every lane has read the slots before any lane writes them again
  for (int i = 0; i < 4; ++i) {
    const RowCol e = mma_c_element(static_cast<int>(lane), i);
    float col[16];
    for (int k = 0; k < 16; ++k) col[k] = bm[k][e.col];
    d[i] = mma_sum(cm[e.row][e.col], am[e.row], col, 16);
  }
}

}  // namespace cuda_emu
