// selective_scan_cpu's row kernels for AVX-512F (16 float32 lanes); chosen at run time on CPUs that have it.
#include "ssm/selective_scan_cpu_detail.h"

#if FASTSPEC_CPU_X86
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#endif

#include "ssm/selective_scan_cpu_kernel.h"

namespace fastspec::selective_cpu_detail {
extern const Kernels kAvx512Kernels = make_kernels<64>();
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
