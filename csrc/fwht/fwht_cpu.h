// Fast Walsh-Hadamard transform on the CPU: torch-free C++17 kernel (raw pointers, OpenMP).
//
//   out[r, :] = (x[r, :] @ (B ⊗ H_p)) * scale,   n = m·p, p = 2^log2p,
//
// H_p[i, j] = (-1)^popcount(i & j) (Sylvester order, as scipy.linalg.hadamard), B an (m, m)
// ±1 matrix (m = 1: none). Reading a row as (m, p): out[c, :] = scale · Σ_a B[a, c] · x[a, :] @ H_p.
// See fwht_cpu.cpp for the design and csrc/README.md for an overview.
#pragma once

#include <cstdint>

namespace fastspec {

enum class CpuDType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

constexpr int kFwhtCpuMaxLog2N = 20;  // n = m·p <= 2^20
constexpr int kFwhtCpuMaxBlock = 1024;  // m <= 1024

// x, out: contiguous (rows, n) row-major arrays of `dtype`, aligned to the element size, not
// overlapping. block: B row-major (block[a * m + c] = B[a, c], every entry +1 or -1), nullptr
// iff m == 1. float32, float16 and bfloat16 are computed in float32 (the half types converted on
// load and rounded to nearest even on store), float64 in float64, the sums over B in float64
// (rounded once); scale is applied once, at the end. NaN and Inf propagate as in the plain
// product. The butterflies run bit by bit from bit 0, in the same order on every instruction set
// and thread count, so those give the same bits.
// threads: OpenMP threads to use at most (< 1: one). Returns nullptr, or (nothing written) a
// message that names the argument it cannot handle.
const char* fwht_cpu_run(const void* x, void* out, int64_t rows, int log2p, int m, const double* block,
                     double scale, CpuDType dtype, int threads);

// The instruction set fwht_cpu_run uses: "avx512f" or "avx2" (x86-64, chosen at run time from the
// CPU) or "generic" (portable vector code: SSE2 on x86-64, NEON on aarch64).
const char* fwht_cpu_isa();

// Make fwht_cpu_run use `isa` (one of the names above; "" for the best this CPU has), for tests and
// benchmarks. Returns false, changing nothing, if this build or CPU cannot run it.
bool fwht_cpu_set_isa(const char* isa);

}  // namespace fastspec
