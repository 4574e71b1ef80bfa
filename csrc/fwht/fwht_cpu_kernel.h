// fwht_cpu's kernel: one step of a row's plan (fwht_cpu_plan.h) on vectors of W lanes.
//
// Included once by each source that compiles it for an instruction set (fwht_cpu.cpp: generic,
// fwht_cpu_avx2.cpp, fwht_cpu_avx512.cpp), after it sets the target. Everything here is in an
// unnamed namespace, so every translation unit keeps its own copy; the source exports
// make_kernels<vector bytes, max radix bits>() as its Kernels table.
//
// Vectors are GCC/Clang vector extensions, which the compiler maps to the target's registers;
// the only shuffles are the lane swaps of the in-vector butterflies.
#pragma once

#include "fwht/fwht_cpu_plan.h"

namespace fastspec {
namespace fwht_cpu_detail {
namespace {

#define FS_INLINE inline __attribute__((always_inline))

// ------------------------------------------------------------------ conversions

FS_INLINE uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
FS_INLINE float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Branch-free, so that the loops over a vector's lanes vectorise.
FS_INLINE float to_acc(float v) { return v; }
FS_INLINE double to_acc(double v) { return v; }
FS_INLINE float to_acc(BFloat16 v) { return float_of(uint32_t{v.bits} << 16); }
FS_INLINE float to_acc(Half v) {
  const uint32_t sign = uint32_t{v.bits & 0x8000u} << 16;
  const uint32_t exp = (v.bits >> 10) & 0x1fu, mant = v.bits & 0x3ffu;
  const uint32_t normal = ((exp + 112) << 23) | (mant << 13);               // bias 15 -> 127
  const uint32_t subnormal = bits_of(static_cast<float>(mant) * 0x1p-24f);  // exact (0 for 0)
  const uint32_t special = 0x7f800000u | (mant << 13);                      // inf, NaN
  return float_of(sign | (exp == 0 ? subnormal : (exp == 31 ? special : normal)));
}

template <class T>
FS_INLINE T from_acc(Acc<T> v) {
  return v;  // float, double
}
// Round to nearest even; NaN stays NaN (made quiet).
template <>
FS_INLINE BFloat16 from_acc<BFloat16>(float v) {
  const uint32_t u = bits_of(v);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  return BFloat16{static_cast<uint16_t>(nan ? (u >> 16) | 0x40u : rounded)};
}
// Round to nearest even; |v| >= 65520 gives inf, NaN stays NaN.
template <>
FS_INLINE Half from_acc<Half>(float v) {
  const uint32_t u = bits_of(v);
  const uint32_t a = u & 0x7fffffffu;
  // |v| < 2^-14 (half subnormals): adding 0.5 rounds |v| to a multiple of 2^-24 (to nearest
  // even), which then sits in the low mantissa bits of 0.5f.
  const uint32_t subnormal = bits_of(float_of(a) + 0.5f) - bits_of(0.5f);
  // Rebias 127 -> 15 and round the 13 dropped bits to nearest even (a carry may reach inf).
  const uint32_t normal = (a - (112u << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
  const uint32_t special = a > 0x7f800000u ? 0x7e00u : 0x7c00u;
  const uint32_t h = a >= (143u << 23) ? special : (a < (113u << 23) ? subnormal : normal);
  return Half{static_cast<uint16_t>(((u >> 16) & 0x8000u) | h)};
}

// ------------------------------------------------------------------ vectors of W lanes

template <class A, int W>
struct VecOf {
  typedef A type __attribute__((vector_size(W * sizeof(A))));
};
template <class A>
struct VecOf<A, 1> {
  using type = A;
};
template <class A, int W>
using Vec = typename VecOf<A, W>::type;

constexpr int log2i(int64_t v) {  // ceil(log2 v)
  int k = 0;
  while ((int64_t{1} << k) < v) ++k;
  return k;
}

// W elements at p (of type T or A) as a vector of A.
template <class A, int W, class T>
FS_INLINE Vec<A, W> load(const T* p) {
  Vec<A, W> v;
  if constexpr (std::is_same_v<T, A>) {
    std::memcpy(&v, p, sizeof v);
  } else {
    A a[W];
    for (int i = 0; i < W; ++i) a[i] = to_acc(p[i]);
    std::memcpy(&v, a, sizeof v);
  }
  return v;
}

template <class A, int W, class T>
FS_INLINE void store(T* p, Vec<A, W> v) {
  if constexpr (std::is_same_v<T, A>) {
    std::memcpy(p, &v, sizeof v);
  } else {
    A a[W];
    std::memcpy(a, &v, sizeof v);
    for (int i = 0; i < W; ++i) p[i] = from_acc<T>(a[i]);
  }
}

// Where a pass writes: the work buffer as it is, or the output scaled (and converted).
template <class A, int W>
struct ToBuffer {
  A* p;
  FS_INLINE void operator()(int64_t i, Vec<A, W> v) const { store<A, W>(p + i, v); }
};
template <class A, int W, class T>
struct ToOutput {
  T* p;
  A scale;
  FS_INLINE void operator()(int64_t i, Vec<A, W> v) const { store<A, W>(p + i, v * scale); }
};

// ------------------------------------------------------------------ butterflies

// Lane bit B: lane i gets v[i ^ 2^B] + s·v[i] with s = -1 where bit B of i is set, that is a + b
// in the lower lane and a - b in the upper (the product by ±1 is exact: the plain sum or
// difference, rounded once).
template <class A, int W, int B, int... I>
FS_INLINE Vec<A, W> lane_butterfly(Vec<A, W> v, std::integer_sequence<int, I...>) {
  using V = Vec<A, W>;
  const V sign = {(((I >> B) & 1) ? A(-1) : A(1))...};
#if defined(__clang__) || __GNUC__ >= 12
  const V swapped = __builtin_shufflevector(v, v, (I ^ (1 << B))...);
#else
  using Mask = Vec<std::conditional_t<sizeof(A) == 8, int64_t, int32_t>, W>;
  const V swapped = __builtin_shuffle(v, Mask{(I ^ (1 << B))...});
#endif
  return swapped + v * sign;
}

// All lane bits, bit 0 first.
template <class A, int W, int... B>
FS_INLINE Vec<A, W> in_vector(Vec<A, W> v, std::integer_sequence<int, B...>) {
  ((v = lane_butterfly<A, W, B>(v, std::make_integer_sequence<int, W>{})), ...);
  return v;
}

// Groups [g0, g1) of a pass over index bits [lo, lo + log2 R): group g is the R vectors at
// base + t·2^lo (t < R), base = (g >> c)·R·2^lo + (g & (2^c - 1))·W with 2^c = 2^lo / W vectors
// in a stride; with kInVector (2^lo == W) the lane bits go first. src and dst may be the same buffer.
template <class A, int W, int R, bool kInVector, class S, class Dst>
__attribute__((noinline)) void radix_pass(const S* src, Dst dst, int lo, int64_t g0, int64_t g1) {
  using V = Vec<A, W>;
  const int64_t stride = int64_t{1} << lo, cols = stride / W;
  int64_t hi = g0 >> (lo - log2i(W)), col = g0 & (cols - 1);
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t base = hi * R * stride + col * W;
    V v[R];
#pragma GCC unroll 16
    for (int t = 0; t < R; ++t) {
      v[t] = load<A, W>(src + base + t * stride);
      if constexpr (kInVector) v[t] = in_vector<A, W>(v[t], std::make_integer_sequence<int, log2i(W)>{});
    }
#pragma GCC unroll 16
    for (int h = 1; h < R; h *= 2) {
#pragma GCC unroll 16
      for (int t = 0; t < R; ++t) {
        if ((t & h) == 0) {
          const V a = v[t], b = v[t + h];
          v[t] = a + b;
          v[t + h] = a - b;
        }
      }
    }
#pragma GCC unroll 16
    for (int t = 0; t < R; ++t) dst(base + t * stride, v[t]);
    if (++col == cols) {
      col = 0;
      ++hi;
    }
  }
}

// The same with R = 2^r known at run time (r <= log2 kMaxR).
template <class A, int W, int kMaxR, bool kInVector, class S, class Dst>
FS_INLINE void radix_pass_r(int r, const S* src, Dst dst, int lo, int64_t g0, int64_t g1) {
  switch (r) {
    case 0:
      return radix_pass<A, W, 1, kInVector>(src, dst, lo, g0, g1);
    case 1:
      return radix_pass<A, W, 2, kInVector>(src, dst, lo, g0, g1);
    case 2:
      return radix_pass<A, W, 4, kInVector>(src, dst, lo, g0, g1);
    case 3:
      return radix_pass<A, W, 8, kInVector>(src, dst, lo, g0, g1);
    default:
      if constexpr (kMaxR >= 16) return radix_pass<A, W, 16, kInVector>(src, dst, lo, g0, g1);
  }
}

// buf[u·n + c·p + j + i] = Σ_a B[a, c] · x[u·n + a·p + j + i], i < W, for the tasks [t0, t1):
// task t is row u = t / (p / W) of the unit, column j = W·(t mod p / W). The sums (up to m = 1024
// terms) run in float64, in the order a = 0, 1, ..., and are rounded once, as the butterflies'
// are. The column chunk is widened to float64 once; kOut sums at a time share each load of it
// (independent chains: the adds' latency overlaps).
template <class T, int W>
__attribute__((noinline)) void mix(const Plan& pl, int64_t t0, int64_t t1, const Io<T>& io) {
  using A = Acc<T>;
  using D = Vec<double, W>;
  constexpr int kOut = 4;
  const int m = pl.m;
  const int64_t p = pl.p(), n = p * m;
  const auto column = [&](int a) {
    D v;
    std::memcpy(&v, io.tmp + a * W, sizeof v);
    return v;
  };
  const auto put = [&](int64_t at, D acc) {
    if constexpr (W == 1) {
      io.buf[at] = static_cast<A>(acc);
    } else {
      store<A, W>(io.buf + at, __builtin_convertvector(acc, Vec<A, W>));
    }
  };
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t row = (t >> (pl.k - pl.lw)) * n, j = (t & ((p >> pl.lw) - 1)) * W;
    for (int a = 0; a < m; ++a) {
      const Vec<A, W> v = load<A, W>(io.x + row + a * p + j);
      D wide;
      if constexpr (W == 1) {
        wide = static_cast<double>(v);
      } else {
        wide = __builtin_convertvector(v, D);
      }
      std::memcpy(io.tmp + a * W, &wide, sizeof wide);
    }
    int c = 0;
    for (; c + kOut <= m; c += kOut) {
      D acc[kOut] = {};
      for (int a = 0; a < m; ++a) {
        const D x = column(a);
        for (int i = 0; i < kOut; ++i) acc[i] += x * io.bt[int64_t{c + i} * m + a];
      }
      for (int i = 0; i < kOut; ++i) put(row + (c + i) * p + j, acc[i]);
    }
    for (; c < m; ++c) {
      D acc = {};
      for (int a = 0; a < m; ++a) acc += column(a) * io.bt[int64_t{c} * m + a];
      put(row + c * p + j, acc);
    }
  }
}

// Tasks [t0, t1) of step s (a StepFn).
template <class T, int W, int kMaxR>
void step(const Plan& pl, int s, int64_t t0, int64_t t1, const Io<T>& io) {
  using A = Acc<T>;
  constexpr bool kLanes = W > 1;
  if (pl.m > 1 && s-- == 0) return mix<T, W>(pl, t0, t1, io);
  if (s == 0) {
    const int64_t len = pl.block_len;
    for (int64_t off = t0 * len; off < t1 * len; off += len) {
      for (int i = 0; i < pl.nblock; ++i) {
        const Pass ps = pl.block[i];
        const int64_t groups = len >> (pl.lw + ps.r);
        const ToBuffer<A, W> buffer{io.buf + off};
        if (i == 0 && pl.m == 1) {
          radix_pass_r<A, W, kMaxR, kLanes>(ps.r, io.x + off, buffer, ps.lo, 0, groups);
        } else if (i == 0) {  // after the mix
          radix_pass_r<A, W, kMaxR, kLanes>(ps.r, io.buf + off, buffer, ps.lo, 0, groups);
        } else if (pl.nouter == 0 && i == pl.nblock - 1) {
          const ToOutput<A, W, T> output{io.out + off, io.scale};
          radix_pass_r<A, W, kMaxR, false>(ps.r, io.buf + off, output, ps.lo, 0, groups);
        } else {
          radix_pass_r<A, W, kMaxR, false>(ps.r, io.buf + off, buffer, ps.lo, 0, groups);
        }
      }
    }
    return;
  }
  const Pass ps = pl.outer[s - 1];
  if (s == pl.nouter) {
    radix_pass_r<A, W, kMaxR, false>(ps.r, io.buf, ToOutput<A, W, T>{io.out, io.scale}, ps.lo, t0, t1);
  } else {
    radix_pass_r<A, W, kMaxR, false>(ps.r, io.buf, ToBuffer<A, W>{io.buf}, ps.lo, t0, t1);
  }
}

template <class T, int kBytes>
constexpr int kLanesOf = kBytes ? kBytes / static_cast<int>(sizeof(Acc<T>)) : 1;

// The table of this translation unit's kernels: vectors of kBytes (0: one lane), radix passes of
// at most 2^kMaxRadix vectors.
template <int kBytes, int kMaxRadix>
constexpr Kernels make_kernels() {
  constexpr int kMaxR = 1 << kMaxRadix;
  return {kBytes,
          kMaxRadix,
          &step<float, kLanesOf<float, kBytes>, kMaxR>,
          &step<double, kLanesOf<double, kBytes>, kMaxR>,
          &step<Half, kLanesOf<Half, kBytes>, kMaxR>,
          &step<BFloat16, kLanesOf<BFloat16, kBytes>, kMaxR>};
}

#undef FS_INLINE

}  // namespace
}  // namespace fwht_cpu_detail
}  // namespace fastspec
