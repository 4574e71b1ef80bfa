// FFT long convolution, forward: kernel and launcher (torch-free). Contract in fftconv.h.
//
// ---------------------------------------------------------------------------------
// One block per row r = (b, h) (blocks of one channel next to each other, so the channel's
// spectrum records are read from L2 after the first), the whole row in shared memory as
// M = N/2 complex float32 values:
//
// 1. Real input as a half-size complex FFT: z[m] = v[2m] + i·v[2m+1], m < M, stored in
//    natural order (zero beyond L).
// 2. Z = DFT_M(z) by decimation in frequency over s stages of radix R = 16 or 8 (the Monarch
//    / Cooley-Tukey split): with n = a + A·b (b the top digit, A = S/R inside a block of S
//    points) and k = c + R·d,
//        X[c + R·d] = Σ_a ω_A^{ad} · ( ω_S^{ac} · Σ_b ω_R^{bc} x[a + A·b] ),
//    so a stage is, for every column (block, a), the R-point DFT over b — the matrix F_R
//    applied to R values at stride A — then the twiddle ω_S^{ac}, written back in place at
//    a + A·c; the next stage works inside each block of A points. Z ends in digit-reversed
//    order (fftconv_detail::frequency_of), which step 3 and the inverse take as it is.
// 3. The spectrum step: with E = DFT(v_even) = (Z[k] + conj Z[-k])/2 and
//    O = DFT(v_odd) = (Z[k] - conj Z[-k])/(2i), V[k] = E + ω_N^k O and V[k+M] = E - ω_N^k O;
//    Y = V·K; the real output's half-size transform is W[k] = E_y + i·O_y with
//    E_y = (Y[k] + Y[k+M])/2, O_y = ω_N^{-k}(Y[k] - Y[k+M])/2. All of it is linear in
//    (Z[k], conj Z[-k]): W[k] = α_k Z[k] + β_k conj Z[-k], the coefficients (and 1/M)
//    prepared per channel in float64 and stored in storage order (fastspec/ops/fftconv.py).
//    Each pair {k, -k} is done by one thread (reads both, writes both): no barrier inside.
// 4. The inverse: the forward's stages transposed, last to first (conjugate twiddle on the
//    input, then the conjugate DFT), which takes digit-reversed W to natural order:
//    w[m] = y[2m] + i·y[2m+1].
// 5. Epilogue: y = postgate · Re/Im w + D · u for t < L, rounded to the input dtype.
//
// A stage on tensor cores: the complex R-point DFT is the real 2R x 2R matrix
// [[Re F, -Im F], [Im F, Re F]] acting on (Re x; Im x); with 8 columns per mma it is
// (2R/16)² mma.m16n8k16 (csrc/common/warp_mma.h): F as the A operand (kept in registers for
// the whole stage), the data as B (16 rows x 8 columns), float32 accumulators D. A lane
// (g = lane/4, t = lane%4) loads column g's values b = 2t, 2t+1 (and 2t+8, 2t+9 for R = 16),
// which are exactly its B fragment rows, and gets back outputs c = g (and g+8) of columns
// 2t, 2t+1 as whole complex numbers, so twiddles are applied in registers. A warp owns its
// 8 columns: every value it reads it writes back itself (in place, no barrier inside a stage).
//
// Precision: bfloat16 multiplicands alone would lose 8 bits per stage. Every operand is
// split, x = hi + lo with hi = bf16(x), lo = bf16(x - hi) (16 significant bits, float32's
// range, so float16 inputs are exact and nothing overflows), and each product is
// F_hi·x_hi + F_hi·x_lo + F_lo·x_hi (the lo·lo term is below 2^-16): 3 mma per tile, about
// 2^-16 relative error per stage, far inside float16's allowance. Twiddles: __sincosf on an
// argument reduced to [-π, π] in integers (absolute error about 2^-21); DFT entries:
// sincospif of exact dyadic arguments, once per stage.
//
// Memory: u, the gates and y are read/written once (u twice with D, the second time from
// L2), with 16-byte vectors when u, the gates and y are 16-byte aligned and L % 8 == 0
// (every row then starts aligned), else one element at a time (odd L: no misaligned access).
// Shared memory: 8·M bytes (128 KiB at N = 32768), dynamic, value p in slot(p) (an XOR
// swizzle that keeps every stage's accesses free of bank conflicts).
// ---------------------------------------------------------------------------------

#include "fftconv.h"  // same directory: compiles with or without -Icsrc

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <initializer_list>

#include "../common/elements.h"
#include "../common/warp_mma.h"

namespace fastspec {
namespace {

using fftconv_detail::log2_block;
using fftconv_detail::log2_radix;
using fftconv_detail::stages;

// ------------------------------------------------------------------ complex numbers (elements: common/elements.h)

__device__ __forceinline__ float2 cmul(float2 a, float2 b) {
  return make_float2(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}

// e^{sign·2πi·j/2^log2n}: j reduced modulo 2^log2n into (-n/2, n/2] first, so the angle is in [-π, π].
__device__ __forceinline__ float2 root_of_unity(int j, int log2n, float sign) {
  const int n = 1 << log2n;
  j &= n - 1;
  if (j > n / 2) j -= n;
  float s, c;
  __sincosf(sign * 6.28318530717958647692f * static_cast<float>(j) / static_cast<float>(n), &s, &c);
  return make_float2(c, s);
}

// x = hi + lo in bfloat16 (16 significant bits).
__device__ __forceinline__ void split(float x, __nv_bfloat16& hi, __nv_bfloat16& lo) {
  hi = __float2bfloat16_rn(x);
  lo = __float2bfloat16_rn(x - __bfloat162float(hi));
}

// ------------------------------------------------------------------ shared-memory layout

// Complex value p of the row lives in slot(p) = p ^ h(p >> 4), h(H) = Σ_j H_j·v_{j mod 3}
// (XOR sum over the bits of H, v = 5, 8, 13): a permutation inside every 16 values, linear
// over XOR. Without it a stage's 8-byte accesses hit each bank pair 4 times (the rows of a
// column are A apart, A a power of two ≥ 16); with it the 16 accesses of each half-warp in
// every stage's loads and stores meet 16 distinct bank pairs (worked out for every stage of
// log2(M) = 6..14 with a model of these addresses: the loads need h to give the 2nd and 3rd
// bits of b·A/16 independent effects on bits 2-3 of the slot, the stores the 1st and 2nd bits
// of c·A/16 on bits 0 and 3; v = 5, 8, 13 does both for any A). Consecutive p stay within a
// permuted group of 16: the spectrum step and the element-wise load and epilogue are free of
// conflicts too; the 16-byte-vector load and epilogue (four values a thread) are 2-way.
// h of the bits of H < 2^12: fold them into their parities by j mod 3, then a table of 8.
__device__ __forceinline__ int slot(int p) {
  int y = (p >> 4) ^ (p >> 10);
  y ^= y >> 3;
  return p ^ ((0x058DD850 >> (4 * (y & 7))) & 15);
}

// ------------------------------------------------------------------ one DFT stage

// The real 2R x 2R matrix of y_c = Σ_b e^{sign·2πi·bc/R} x_b, rows (Re y_0..y_{R-1},
// Im y_0..y_{R-1}), columns (Re x, Im x), as mma A fragments: kT x kT tiles of 16 x 16,
// split into bfloat16 hi and lo parts.
template <int kLogR>
struct DftMatrix {
  static constexpr int kT = (2 << kLogR) / 16;
  uint32_t hi[kT][kT][4], lo[kT][kT][4];

  __device__ __forceinline__ DftMatrix(float sign, int g, int t) {
    constexpr int R = 1 << kLogR;
#pragma unroll
    for (int mt = 0; mt < kT; ++mt) {
#pragma unroll
      for (int kt = 0; kt < kT; ++kt) {
#pragma unroll
        for (int reg = 0; reg < 4; ++reg) {
          __nv_bfloat16 h[2], l[2];
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int i = 2 * reg + e;  // A element i of this lane (warp_mma.h)
            const int r = 16 * mt + g + ((i & 2) ? 8 : 0);
            const int q = 16 * kt + 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
            const int j = ((r & (R - 1)) * (q & (R - 1))) & (R - 1);
            float s, c;
            sincospif(sign * 2.0f * static_cast<float>(j) / static_cast<float>(R), &s, &c);
            split(r < R ? (q < R ? c : -s) : (q < R ? s : c), h[e], l[e]);
          }
          hi[mt][kt][reg] = pack_pair(h[0], h[1]);
          lo[mt][kt][reg] = pack_pair(l[0], l[1]);
        }
      }
    }
  }
};

// The storage offset of column `col` of a stage: block col / A at col / A · S, a = col mod A
// inside it (a bit permutation: linear over XOR, like slot()).
template <int kLogA, int kLogS>
__device__ __forceinline__ int column_base(int col) {
  return ((col >> kLogA) << kLogS) | (col & ((1 << kLogA) - 1));
}

// Stage `kStage` of the forward (kInverse false: DFT, then twiddle ω_S^{ac}) or its transpose
// for the inverse (conjugate twiddle, then conjugate DFT) on x[0..M) in place. Every address
// is column_base(col) | b·A with disjoint bits, and slot() is linear over XOR, so its slot is
// slot(column_base(8·group)) ^ slot(column_base(col mod 8)) ^ slot(b·A): the lane's parts
// are worked out once per stage, the group's once per group.
template <int kLogM, int kStage, bool kInverse>
__device__ __forceinline__ void dft_stage(float2* x) {
  constexpr int kLogR = log2_radix(kLogM, kStage), kLogS = log2_block(kLogM, kStage);
  constexpr int kLogA = kLogS - kLogR, A = 1 << kLogA;
  constexpr int kT = (2 << kLogR) / 16;                   // 16 x 16 tiles per side of the real matrix
  constexpr int kGroups = (1 << (kLogM - kLogR)) / 8;     // columns (block, a) in groups of 8
  constexpr int kWarps = fftconv_detail::warps(kLogM);
  constexpr float kSign = kInverse ? 1.0f : -1.0f;
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  const int g = lane >> 2, t = lane & 3;
  const DftMatrix<kLogR> f(kSign, g, t);
  // This lane's B rows: values b = 2t + (i & 1) + 8·(i >> 1) of column g of a group; its D
  // outputs: c = g + 8·ci of columns 2t + e.
  int load_slot[2 * kT], store_slot[2][kT];
#pragma unroll
  for (int i = 0; i < 2 * kT; ++i) {
    load_slot[i] = slot(column_base<kLogA, kLogS>(g)) ^ slot((2 * t + (i & 1) + 8 * (i >> 1)) << kLogA);
  }
#pragma unroll
  for (int e = 0; e < 2; ++e) {
#pragma unroll
    for (int ci = 0; ci < kT; ++ci) {
      store_slot[e][ci] = slot(column_base<kLogA, kLogS>(2 * t + e)) ^ slot((g + 8 * ci) << kLogA);
    }
  }

  for (int group = warp; group < kGroups; group += kWarps) {
    const int group_slot = slot(column_base<kLogA, kLogS>(group * 8));
    const int a = (group * 8 + g) & (A - 1);
    float2 v[2 * kT];
#pragma unroll
    for (int i = 0; i < 2 * kT; ++i) {
      v[i] = x[group_slot ^ load_slot[i]];
      if constexpr (kInverse && A > 1) {
        v[i] = cmul(v[i], root_of_unity(a * (2 * t + (i & 1) + 8 * (i >> 1)), kLogS, kSign));
      }
    }
    // B fragments: real row q = 16·kt + 2t + (i & 1) + 8·(i >> 1) is (Re or Im of) x_b, b = q mod R.
    uint32_t bhi[kT][2], blo[kT][2];
#pragma unroll
    for (int kt = 0; kt < kT; ++kt) {
#pragma unroll
      for (int reg = 0; reg < 2; ++reg) {
        __nv_bfloat16 h[2], l[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int i = 2 * reg + e;
          const bool imag = kT == 2 ? kt == 1 : (i >> 1) == 1;
          const float2 value = v[kT == 2 ? i : (i & 1)];
          split(imag ? value.y : value.x, h[e], l[e]);
        }
        bhi[kt][reg] = pack_pair(h[0], h[1]);
        blo[kt][reg] = pack_pair(l[0], l[1]);
      }
    }
    float d[kT][4];
#pragma unroll
    for (int mt = 0; mt < kT; ++mt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) d[mt][i] = 0.0f;
#pragma unroll
      for (int kt = 0; kt < kT; ++kt) {  // the small terms first
        mma_m16n8k16<__nv_bfloat16>(d[mt], f.lo[mt][kt], bhi[kt]);
        mma_m16n8k16<__nv_bfloat16>(d[mt], f.hi[mt][kt], blo[kt]);
      }
#pragma unroll
      for (int kt = 0; kt < kT; ++kt) mma_m16n8k16<__nv_bfloat16>(d[mt], f.hi[mt][kt], bhi[kt]);
    }
    // D: real row 16·mt + g + 8·(i >> 1) of columns 2t + (i & 1): outputs c = g + 8·ci of
    // columns 2t and 2t + 1, as complex numbers.
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int out_a = (group * 8 + 2 * t + e) & (A - 1);
#pragma unroll
      for (int ci = 0; ci < kT; ++ci) {
        float2 y = kT == 2 ? make_float2(d[0][2 * ci + e], d[1][2 * ci + e]) : make_float2(d[0][e], d[0][2 + e]);
        if constexpr (!kInverse && A > 1) y = cmul(y, root_of_unity(out_a * (g + 8 * ci), kLogS, kSign));
        x[group_slot ^ store_slot[e][ci]] = y;
      }
    }
  }
}

template <int kLogM, int kStage>
__device__ __forceinline__ void forward_fft(float2* x) {
  if constexpr (kStage < stages(kLogM)) {
    dft_stage<kLogM, kStage, false>(x);
    __syncthreads();
    forward_fft<kLogM, kStage + 1>(x);
  }
}

template <int kLogM, int kStage>
__device__ __forceinline__ void inverse_fft(float2* x) {
  if constexpr (kStage >= 0) {
    dft_stage<kLogM, kStage, true>(x);
    __syncthreads();
    inverse_fft<kLogM, kStage - 1>(x);
  }
}

// ------------------------------------------------------------------ the kernel

template <int kLogN>
struct Traits {
  static constexpr int kLogM = kLogN - 1;
  static constexpr int kThreads = 32 * fftconv_detail::warps(kLogM);
  // Blocks an SM should hold (16 warps; registers capped at 128 a thread accordingly).
  static constexpr int kMinBlocks = 16 / fftconv_detail::warps(kLogM);
  static constexpr int kSmemBytes = 8 << kLogM;
  static_assert(kLogN >= kFftConvMinLog2N && kLogN <= kFftConvMaxLog2N, "log2n out of range");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory of a block on sm_90");
  static_assert(4 * stages(kLogM) - kLogM <= stages(kLogM), "log2(M) = 4a + 3b");
};

// vec_io: u, the gates and y are 16-byte aligned and L % 8 == 0 (every row starts aligned).
template <typename T, int kLogN>
__global__ void __launch_bounds__(Traits<kLogN>::kThreads, Traits<kLogN>::kMinBlocks)
    fftconv_forward_kernel(const T* u, const T* pregate, const T* postgate, const float* D, const float4* records,
                           T* y, int batch, int channels, int length, bool vec_io) {
  using Tr = Traits<kLogN>;
  constexpr int kLogM = Tr::kLogM, M = 1 << kLogM, kThreads = Tr::kThreads;
  extern __shared__ __align__(16) float2 x[];
  const int tid = static_cast<int>(threadIdx.x);
  const int b = static_cast<int>(blockIdx.x % static_cast<unsigned>(batch));
  const int h = static_cast<int>(blockIdx.x / static_cast<unsigned>(batch));
  const int64_t offset = (static_cast<int64_t>(b) * channels + h) * length;
  const T* ur = u + offset;
  const T* pre = pregate == nullptr ? nullptr : pregate + offset;
  const T* post = postgate == nullptr ? nullptr : postgate + offset;
  T* yr = y + offset;
  const float4* rec = records + (static_cast<int64_t>(h) << kLogM);

  // ---- 1. z[m] = v[2m] + i·v[2m+1], v = u·pregate, zero from L on
  if (vec_io) {  // 8 elements = complex values 4q..4q+3 per 16-byte vector
    for (int q = tid; q < M / 4; q += kThreads) {
      float v[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
      if (8 * q < length) {
        alignas(16) T e[8];
        *reinterpret_cast<uint4*>(e) = *reinterpret_cast<const uint4*>(ur + 8 * q);
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = to_float(e[i]);
        if (pre != nullptr) {
          *reinterpret_cast<uint4*>(e) = *reinterpret_cast<const uint4*>(pre + 8 * q);
#pragma unroll
          for (int i = 0; i < 8; ++i) v[i] *= to_float(e[i]);
        }
      }
      const int s = slot(4 * q);  // slot(4q + i) = slot(4q) ^ i
#pragma unroll
      for (int i = 0; i < 4; ++i) x[s ^ i] = make_float2(v[2 * i], v[2 * i + 1]);
    }
  } else {
    for (int m = tid; m < M; m += kThreads) {
      float v[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int n = 2 * m + i;
        v[i] = n < length ? to_float(ur[n]) * (pre != nullptr ? to_float(pre[n]) : 1.0f) : 0.0f;
      }
      x[slot(m)] = make_float2(v[0], v[1]);
    }
  }
  __syncthreads();

  // ---- 2. Z = DFT_M(z), digit-reversed
  forward_fft<kLogM, 0>(x);

  // ---- 3. W[p] = α_p Z[p] + β_p conj Z[p'], p' the position of the negated frequency; the
  // pairs have their lower position in the first R0/2 + 1 blocks of M/R0.
  {
    constexpr int R0 = 1 << log2_radix(kLogM, 0);
    for (int p = tid; p < (R0 / 2 + 1) * (M / R0); p += kThreads) {
      const int q = fftconv_detail::storage_of(kLogM, (M - fftconv_detail::frequency_of(kLogM, p)) & (M - 1));
      if (q < p) continue;
      const int sp = slot(p), sq = slot(q);
      const float2 zp = x[sp], zq = x[sq];
      const float4 cp = rec[p];
      x[sp] = make_float2(cp.x * zp.x - cp.y * zp.y + cp.z * zq.x + cp.w * zq.y,
                          cp.x * zp.y + cp.y * zp.x - cp.z * zq.y + cp.w * zq.x);
      if (q != p) {
        const float4 cq = rec[q];
        x[sq] = make_float2(cq.x * zq.x - cq.y * zq.y + cq.z * zp.x + cq.w * zp.y,
                            cq.x * zq.y + cq.y * zq.x - cq.z * zp.y + cq.w * zp.x);
      }
    }
  }
  __syncthreads();

  // ---- 4. w = M·IDFT_M(W) (1/M is in the records): natural order
  inverse_fft<kLogM, stages(kLogM) - 1>(x);

  // ---- 5. y = postgate · w + D · u
  const float dh = D == nullptr ? 0.0f : D[h];
  if (vec_io) {
    for (int q = tid; q < length / 8; q += kThreads) {
      const int s = slot(4 * q);
      float v[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 w = x[s ^ i];
        v[2 * i] = w.x;
        v[2 * i + 1] = w.y;
      }
      alignas(16) T e[8];
      if (post != nullptr) {
        *reinterpret_cast<uint4*>(e) = *reinterpret_cast<const uint4*>(post + 8 * q);
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] *= to_float(e[i]);
      }
      if (D != nullptr) {
        *reinterpret_cast<uint4*>(e) = *reinterpret_cast<const uint4*>(ur + 8 * q);
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] += dh * to_float(e[i]);
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) e[i] = from_float<T>(v[i]);
      *reinterpret_cast<uint4*>(yr + 8 * q) = *reinterpret_cast<const uint4*>(e);
    }
  } else {
    for (int n = tid; n < length; n += kThreads) {
      const float2 w = x[slot(n / 2)];
      float v = (n & 1) ? w.y : w.x;
      if (post != nullptr) v *= to_float(post[n]);
      if (D != nullptr) v += dh * to_float(ur[n]);
      yr[n] = from_float<T>(v);
    }
  }
}

// ------------------------------------------------------------------ launcher

constexpr int kMaxDevices = 64;  // devices whose shared-memory opt-in is remembered

template <typename T, int kLogN>
cudaError_t launch_impl(const void* u, const void* pregate, const void* postgate, const float* D, const float* records,
                        void* y, int64_t batch, int64_t channels, int64_t length, bool vec_io, cudaStream_t stream) {
  using Tr = Traits<kLogN>;
  if constexpr (Tr::kSmemBytes > 48 * 1024) {  // opt in once per device
    static std::atomic<bool> opted_in[kMaxDevices];
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess) return err;
    if (device >= kMaxDevices || !opted_in[device].load(std::memory_order_relaxed)) {
      err = cudaFuncSetAttribute(fftconv_forward_kernel<T, kLogN>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 Tr::kSmemBytes);
      if (err != cudaSuccess) return err;
      if (device < kMaxDevices) opted_in[device].store(true, std::memory_order_relaxed);
    }
  }
  const unsigned grid = static_cast<unsigned>(batch * channels);
  fftconv_forward_kernel<T, kLogN><<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(
      static_cast<const T*>(u), static_cast<const T*>(pregate), static_cast<const T*>(postgate), D,
      reinterpret_cast<const float4*>(records), static_cast<T*>(y), static_cast<int>(batch),
      static_cast<int>(channels), static_cast<int>(length), vec_io);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_dtype(const void* u, const void* pregate, const void* postgate, const float* D,
                         const float* records, void* y, int64_t batch, int64_t channels, int64_t length, int log2n,
                         bool vec_io, cudaStream_t stream) {
  switch (log2n) {
#define FASTSPEC_FFTCONV_CASE(LOG2N) \
  case LOG2N:                        \
    return launch_impl<T, LOG2N>(u, pregate, postgate, D, records, y, batch, channels, length, vec_io, stream);
    FASTSPEC_FFTCONV_CASE(7)
    FASTSPEC_FFTCONV_CASE(8)
    FASTSPEC_FFTCONV_CASE(9)
    FASTSPEC_FFTCONV_CASE(10)
    FASTSPEC_FFTCONV_CASE(11)
    FASTSPEC_FFTCONV_CASE(12)
    FASTSPEC_FFTCONV_CASE(13)
    FASTSPEC_FFTCONV_CASE(14)
    FASTSPEC_FFTCONV_CASE(15)
#undef FASTSPEC_FFTCONV_CASE
    default:
      return cudaErrorInvalidValue;
  }
}

// [a, a + an) and [b, b + bn) share a byte (an, bn > 0).
bool overlap(const void* a, uintptr_t an, const void* b, uintptr_t bn) {
  const uintptr_t x = reinterpret_cast<uintptr_t>(a), z = reinterpret_cast<uintptr_t>(b);
  return x < z + bn && z < x + an;
}

}  // namespace

cudaError_t fftconv_forward_launch(const void* u, const void* pregate, const void* postgate, const float* D,
                                   const float* records, void* y, int64_t batch, int64_t channels, int64_t length,
                                   int log2n, FftConvDType dtype, cudaStream_t stream) {
  if (log2n < kFftConvMinLog2N || log2n > kFftConvMaxLog2N || batch < 0 || channels < 0) return cudaErrorInvalidValue;
  if (length < 1 || length > (int64_t{1} << log2n)) return cudaErrorInvalidValue;
  if (dtype != FftConvDType::kFloat16 && dtype != FftConvDType::kBFloat16) return cudaErrorInvalidValue;
  if (batch == 0 || channels == 0) return cudaSuccess;
  if (batch * channels > int64_t{0x7fffffff}) return cudaErrorInvalidValue;  // one block per row
  if (u == nullptr || records == nullptr || y == nullptr) return cudaErrorInvalidValue;
  const uintptr_t bytes = static_cast<uintptr_t>(batch * channels * length) * 2;
  for (const void* p : {u, pregate, postgate, static_cast<const void*>(y)}) {
    if (reinterpret_cast<uintptr_t>(p) % 2 != 0) return cudaErrorInvalidValue;
  }
  if (reinterpret_cast<uintptr_t>(records) % 16 != 0 || reinterpret_cast<uintptr_t>(D) % 4 != 0) {
    return cudaErrorInvalidValue;
  }
  for (const void* p : {u, pregate, postgate}) {
    if (p != nullptr && overlap(p, bytes, y, bytes)) return cudaErrorInvalidValue;
  }
  bool vec_io = length % 8 == 0;
  for (const void* p : {u, pregate, postgate, static_cast<const void*>(y)}) {
    vec_io = vec_io && reinterpret_cast<uintptr_t>(p) % 16 == 0;
  }
  return dtype == FftConvDType::kFloat16
             ? launch_dtype<__half>(u, pregate, postgate, D, records, y, batch, channels, length, log2n, vec_io, stream)
             : launch_dtype<__nv_bfloat16>(u, pregate, postgate, D, records, y, batch, channels, length, log2n, vec_io,
                                           stream);
}

}  // namespace fastspec
