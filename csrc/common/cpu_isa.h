// The instruction set of fastspec's CPU kernels (fwht_cpu, selective_scan_cpu): each kernel is
// compiled once per instruction set (generic, AVX2 + FMA, AVX-512F) and the one in use is chosen at
// run time from the CPU, or set by a test or benchmark through fastspec._C.cpu_isa(name). One
// setting for every kernel of the module (a C++17 inline variable: one instance in the library).
//
// Sources that compile a kernel for a target include this header before they set it.
#pragma once

#include <atomic>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FASTSPEC_CPU_X86 1
#else
#define FASTSPEC_CPU_X86 0
#endif

namespace fastspec {

enum CpuIsa : int { kCpuGeneric = 0, kCpuAvx2 = 1, kCpuAvx512 = 2 };
inline constexpr const char* kCpuIsaNames[] = {"generic", "avx2", "avx512f"};

// The best instruction set this CPU runs (generic: SSE2 on x86-64, NEON on aarch64).
inline int cpu_isa_best() {
#if FASTSPEC_CPU_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return kCpuAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kCpuAvx2;
#endif
  return kCpuGeneric;
}

inline std::atomic<int> g_cpu_isa{-1};  // the CpuIsa in use; -1: not chosen yet

// The CpuIsa the kernels use now.
inline int cpu_isa_current() {
  int isa = g_cpu_isa.load(std::memory_order_relaxed);
  if (isa < 0) {
    isa = cpu_isa_best();
    g_cpu_isa.store(isa, std::memory_order_relaxed);
  }
  return isa;
}

// Use `name` ("generic", "avx2", "avx512f"; "" for the best this CPU has). Returns false, changing
// nothing, if this build or CPU cannot run it.
inline bool cpu_isa_set(const char* name) {
  const int best = cpu_isa_best();
  if (name[0] == '\0') {
    g_cpu_isa.store(best, std::memory_order_relaxed);
    return true;
  }
  for (int i = 0; i <= best; ++i) {
    if (std::strcmp(name, kCpuIsaNames[i]) == 0) {
      g_cpu_isa.store(i, std::memory_order_relaxed);
      return true;
    }
  }
  return false;
}

}  // namespace fastspec
