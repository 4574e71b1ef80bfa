// fwht_cpu's kernel for AVX-512F (64-byte vectors, 32 registers: radix-16 passes); chosen at run
// time on CPUs that have it.
#include "fwht/fwht_cpu_plan.h"

#if FASTSPEC_CPU_X86
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#endif

#include "fwht/fwht_cpu_kernel.h"

namespace fastspec::fwht_cpu_detail {
extern const Kernels kAvx512Kernels = make_kernels<64, 4>();
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
