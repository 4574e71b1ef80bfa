// fwht_cpu internals shared by the driver (fwht_cpu.cpp) and the kernel compiled once per
// instruction set (fwht_cpu_kernel.h): element types, the plan of a row, the kernel tables.
//
// Sources that set a target (fwht_cpu_avx2.cpp, ...) include this header first: everything
// defined here, and the standard headers the kernel uses, are then compiled for the baseline
// target in every translation unit, never for AVX2 in one and not in another.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "common/cpu_isa.h"

namespace fastspec {
namespace fwht_cpu_detail {

struct Half {  // IEEE binary16 bits
  uint16_t bits;
};
struct BFloat16 {  // the high half of a float32
  uint16_t bits;
};

// The computing type: float64 for float64, float32 for the rest.
template <class T>
using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;

struct Pass {
  int lo, r;  // butterflies over index bits [lo, lo + r)
};

// The steps of one unit of rows (n = m·2^k each): [mix,] blocks, then one step per outer pass. A
// step is a set of independent tasks. The first block pass also runs the lane bits [0, lw) and
// writes the work buffer; the last pass of the unit writes the output. Rows shorter than half a
// block go through the steps `unit` rows at a time (one block), longer ones one at a time.
struct Plan {
  int k, m, lw, kb;   // sub-rows of p = 2^k, vectors of 2^lw lanes, outer passes over bits [kb, k)
  int64_t unit;       // rows
  int64_t block_len;  // elements of a block: unit·n, or 2^kb (unit = 1, k > kb)
  int nblock, nouter;
  Pass block[8], outer[8];

  int64_t p() const { return int64_t{1} << k; }
  int64_t elems() const { return unit * m << k; }
  int steps() const { return (m > 1) + 1 + nouter; }
  // Tasks of step s: column chunks of one vector per row (mix), blocks, groups of an outer pass.
  int64_t tasks(int s) const {
    if (m > 1 && s-- == 0) return unit * (p() >> lw);
    if (s == 0) return elems() / block_len;
    return elems() >> (lw + outer[s - 1].r);
  }
};

// One unit's pointers. buf is out itself when T is the computing type.
template <class T>
struct Io {
  using A = Acc<T>;
  const T* x;
  T* out;
  A* buf;       // unit·n elements: the work buffer
  double* tmp;       // m vectors: a column chunk of x for the mix, in float64
  const double* bt;  // Bᵀ, m·m: bt[c·m + a] = B[a, c]
  A scale;
};

// Runs tasks [t0, t1) of step s of the plan on one unit of rows.
template <class T>
using StepFn = void (*)(const Plan& plan, int s, int64_t t0, int64_t t1, const Io<T>& io);

// The kernel compiled for one instruction set.
struct Kernels {
  int vector_bytes;  // lanes = vector_bytes / sizeof(Acc<T>); 0: one lane
  int max_radix;     // passes run at most 2^max_radix vectors at once
  StepFn<float> f32;
  StepFn<double> f64;
  StepFn<Half> f16;
  StepFn<BFloat16> bf16;
};

extern const Kernels kGenericKernels;  // 16-byte vectors: SSE2 on x86-64, NEON on aarch64
extern const Kernels kOneLaneKernels;  // rows shorter than a vector
#if FASTSPEC_CPU_X86
extern const Kernels kAvx2Kernels;
extern const Kernels kAvx512Kernels;
#endif

}  // namespace fwht_cpu_detail
}  // namespace fastspec
