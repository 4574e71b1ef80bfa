// fwht_cpu's kernel for AVX2 + FMA (32-byte vectors); chosen at run time on CPUs that have both.
#include "fwht/fwht_cpu_plan.h"

#if FASTSPEC_CPU_X86
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#include "fwht/fwht_cpu_kernel.h"

namespace fastspec::fwht_cpu_detail {
extern const Kernels kAvx2Kernels = make_kernels<32, 3>();
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
