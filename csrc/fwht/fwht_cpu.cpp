// Fast Walsh-Hadamard transform on the CPU: checks, plan, threads, instruction-set dispatch (the
// contract is in fwht_cpu.h; this file also compiles the generic kernel).
//
// A row of n = m·p elements is m sub-rows of p = 2^k. H_p is one butterfly (a, b) -> (a + b, a - b)
// per bit of the index inside a sub-row, run from bit 0 up; B (m > 1) is a small matrix product
// over the sub-rows, done first ("mix", m multiply-adds per element). With vectors of W = 2^lw
// lanes (16, 32 or 64 bytes: generic, AVX2, AVX-512) the index bits of a sub-row are taken as
//
//   [0, lw)    lanes of a vector          shuffles inside each vector
//   [lw, kb)   vectors of a block         radix passes over the block (2^kb elements = 16 KiB: L1)
//   [kb, k)    blocks of the sub-row      radix passes over the whole row (L2 up to 2^16 float32)
//
// A radix pass loads R vectors 2^lo elements apart, runs log2 R stages in registers and stores
// them: one cache read and write per element for up to 3 bits (4 with AVX-512's 32 registers).
// The first pass of a block reads the input (converting half types) and runs the lane bits first;
// the last pass writes the output, scaled (and rounded). So each element comes from memory once and
// goes back once, and the passes between run in L1 (n <= 2^12 float32) or L2. Work buffer: out
// itself for float32 and float64, a float32 row per thread for the half types.
//
// Rows shorter than half a block go through the passes a block of rows at a time (the passes
// only touch the bits of a row), which spreads the cost of a call over many rows.
//
// Threads: rows are split between threads. Fewer rows than threads, of 2^15 elements or more,
// split each step of a row instead (blocks, then the groups of each outer pass) with a barrier
// between steps. The arithmetic of an element does not depend on the split or on the lanes.
#include "fwht/fwht_cpu.h"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <memory>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "fwht/fwht_cpu_kernel.h"

namespace fastspec {
namespace fwht_cpu_detail {

extern const Kernels kGenericKernels = make_kernels<16, 3>();
extern const Kernels kOneLaneKernels = make_kernels<0, 3>();

namespace {

// ------------------------------------------------------------------ plan

// Bits [lo, hi) as passes of at most max_r bits, as even as possible; returns their count.
int split(int lo, int hi, int max_r, Pass* out) {
  const int bits = hi - lo, count = (bits + max_r - 1) / max_r;
  for (int i = 0; i < count; ++i) {
    out[i] = {lo, bits / count + (i < bits % count)};
    lo += out[i].r;
  }
  return count;
}

// The plan of `unit` rows of n = m·2^k; passes of at most max_r bits, blocks of 2^kb_max elements.
Plan make_plan(int k, int m, int lw, int kb_max, int max_r, int64_t unit) {
  Plan pl{};
  pl.k = k;
  pl.m = m;
  pl.lw = lw;
  pl.kb = std::min(k, kb_max);
  pl.unit = unit;
  pl.block_len = unit > 1 ? unit * m << k : int64_t{1} << pl.kb;
  pl.nblock = split(lw, pl.kb, max_r, pl.block);
  if (pl.nblock == 0) pl.block[pl.nblock++] = {lw, 0};  // the lane bits alone
  pl.nouter = split(pl.kb, k, max_r, pl.outer);
  // The first pass writes the work buffer: a row of one pass gets a second that only scales.
  if (pl.nblock == 1 && pl.nouter == 0) pl.block[pl.nblock++] = {lw, 0};
  return pl;
}

// ------------------------------------------------------------------ instruction sets

const Kernels& kernels_of(int isa) {
#if FASTSPEC_CPU_X86
  if (isa == kCpuAvx512) return kAvx512Kernels;
  if (isa == kCpuAvx2) return kAvx2Kernels;
#endif
  (void)isa;
  return kGenericKernels;
}

template <class T>
StepFn<T> step_of(const Kernels& k) {
  if constexpr (std::is_same_v<T, float>) return k.f32;
  if constexpr (std::is_same_v<T, double>) return k.f64;
  if constexpr (std::is_same_v<T, Half>) return k.f16;
  if constexpr (std::is_same_v<T, BFloat16>) return k.bf16;
}

// ------------------------------------------------------------------ driver

constexpr int64_t kGrain = int64_t{1} << 15;     // elements a thread gets at least
constexpr int64_t kSplitRow = int64_t{1} << 15;  // rows this long may be split between threads
constexpr int64_t kAlign = 64;                   // bytes: alignment of each work-space piece
constexpr int kBlockBytes = 16384;               // a block of the first passes (in L1)

struct Free {
  void operator()(char* p) const { std::free(p); }
};

template <class T>
const char* transform(const T* x, T* out, int64_t rows, int k, int m, const double* block, double scale,
                      int threads) {
  using A = Acc<T>;
  const Kernels& vec = kernels_of(cpu_isa_current());
  const int64_t n = int64_t{m} << k;
  const bool one_lane = (int64_t{1} << k) * static_cast<int64_t>(sizeof(A)) < vec.vector_bytes;
  const Kernels& kern = one_lane ? kOneLaneKernels : vec;
  const int lw = one_lane ? 0 : log2i(vec.vector_bytes / static_cast<int64_t>(sizeof(A)));
  const int kb = log2i(kBlockBytes / sizeof(A));
  const StepFn<T> step = step_of<T>(kern);

  int nt = static_cast<int>(std::min<int64_t>(std::max(threads, 1), (rows * n + kGrain - 1) / kGrain));
  const bool split_rows = nt > 1 && rows < nt && n >= kSplitRow;
  if (!split_rows) nt = static_cast<int>(std::min<int64_t>(nt, rows));
  // Rows shorter than half a block run a block of them at a time; the rest of a thread's rows
  // (fewer than a unit) one at a time.
  const Plan one = make_plan(k, m, lw, kb, kern.max_radix, 1);
  const int64_t unit = split_rows ? 1 : std::max<int64_t>(1, (int64_t{1} << kb) / n);
  const Plan many = unit > 1 ? make_plan(k, m, lw, kb, kern.max_radix, unit) : one;

  // Work space, each piece kAlign-aligned: Bᵀ and per thread a column chunk for the mix (float64); for half
  // types a float32 unit of rows per thread (one row, shared, when rows are split).
  const auto bytes_of = [](int64_t elems, int64_t size) { return (elems * size + kAlign - 1) / kAlign * kAlign; };
  const int64_t bt_bytes = m > 1 ? bytes_of(int64_t{m} * m, sizeof(double)) : 0;
  const int64_t tmp_bytes = m > 1 ? bytes_of(int64_t{m} << lw, sizeof(double)) : 0;
  const int64_t unit_bytes = std::is_same_v<T, A> ? 0 : bytes_of(many.elems(), sizeof(A));
  const int64_t bytes = bt_bytes + nt * tmp_bytes + (split_rows ? 1 : nt) * unit_bytes;
  std::unique_ptr<char, Free> space(bytes ? static_cast<char*>(std::aligned_alloc(kAlign, bytes)) : nullptr);
  if (bytes && !space) return "fwht_cpu: out of memory for the work space";
  double* const bt = reinterpret_cast<double*>(space.get());
  for (int a = 0; m > 1 && a < m; ++a) {
    for (int c = 0; c < m; ++c) bt[int64_t{c} * m + a] = static_cast<double>(block[int64_t{a} * m + c]);
  }
  char* const tmps = space.get() + bt_bytes;
  char* const unit_space = tmps + nt * tmp_bytes;

  // Work items: the full units of rows, then the rows left over, one at a time.
  const int64_t full = rows / unit, items = full + rows % unit;

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    Io<T> io{};
    io.tmp = reinterpret_cast<double*>(tmps + tid * tmp_bytes);
    io.bt = bt;
    io.scale = static_cast<A>(scale);
    io.buf = reinterpret_cast<A*>(unit_space + (split_rows ? 0 : tid * unit_bytes));
    const auto rows_at = [&](int64_t r) {
      io.x = x + r * n;
      io.out = out + r * n;
      if constexpr (std::is_same_v<T, A>) io.buf = io.out;
    };
    if (split_rows) {
      for (int64_t r = 0; r < rows; ++r) {
        rows_at(r);
        for (int s = 0; s < one.steps(); ++s) {
          const int64_t count = one.tasks(s), chunk = std::max<int64_t>(1, count / (8 * nt));
#pragma omp for schedule(dynamic, 1)
          for (int64_t t = 0; t < count; t += chunk) step(one, s, t, std::min(count, t + chunk), io);
        }
      }
    } else {
      // Dynamic: a thread that shares its core with another process takes fewer items.
#pragma omp for schedule(dynamic, std::max<int64_t>(1, items / (16 * nt)))
      for (int64_t i = 0; i < items; ++i) {
        const Plan& pl = i < full ? many : one;
        rows_at(i < full ? i * unit : full * unit + (i - full));
        for (int s = 0; s < pl.steps(); ++s) step(pl, s, 0, pl.tasks(s), io);
      }
    }
  }
  return nullptr;
}

}  // namespace
}  // namespace fwht_cpu_detail

const char* fwht_cpu_run(const void* x, void* out, int64_t rows, int log2p, int m, const double* block,
                     double scale, CpuDType dtype, int threads) {
  using namespace fwht_cpu_detail;
  int64_t esize;
  switch (dtype) {
    case CpuDType::kFloat32:
      esize = 4;
      break;
    case CpuDType::kFloat64:
      esize = 8;
      break;
    case CpuDType::kFloat16:
    case CpuDType::kBFloat16:
      esize = 2;
      break;
    default:
      return "fwht_cpu: dtype must be float32, float64, float16 or bfloat16";
  }
  if (log2p < 0 || log2p > kFwhtCpuMaxLog2N || m < 1 || m > kFwhtCpuMaxBlock ||
      (int64_t{m} << log2p) > (int64_t{1} << kFwhtCpuMaxLog2N)) {
    return "fwht_cpu: need n = m·2^log2p <= 2^20 with 0 <= log2p and 1 <= m <= 1024";
  }
  if ((m == 1) != (block == nullptr)) return "fwht_cpu: block must be given exactly when m > 1";
  for (int64_t i = 0; m > 1 && i < int64_t{m} * m; ++i) {
    if (block[i] != 1.0 && block[i] != -1.0) return "fwht_cpu: every entry of block must be +1 or -1";
  }
  const int64_t n = int64_t{m} << log2p;
  if (rows < 0 || rows > INT64_MAX / (n * esize)) return "fwht_cpu: rows must be >= 0 and rows·n·element size < 2^63";
  if (rows == 0) return nullptr;
  if (x == nullptr || out == nullptr) return "fwht_cpu: x and out must not be null";
  const uintptr_t xa = reinterpret_cast<uintptr_t>(x), oa = reinterpret_cast<uintptr_t>(out);
  if (xa % esize != 0 || oa % esize != 0) return "fwht_cpu: x and out must be aligned to the element size";
  const uintptr_t bytes = static_cast<uintptr_t>(rows * n * esize);
  if (xa < oa + bytes && oa < xa + bytes) return "fwht_cpu: x and out must not overlap";
  switch (dtype) {
    case CpuDType::kFloat32:
      return transform(static_cast<const float*>(x), static_cast<float*>(out), rows, log2p, m, block, scale, threads);
    case CpuDType::kFloat64:
      return transform(static_cast<const double*>(x), static_cast<double*>(out), rows, log2p, m, block, scale,
                       threads);
    case CpuDType::kFloat16:
      return transform(static_cast<const Half*>(x), static_cast<Half*>(out), rows, log2p, m, block, scale, threads);
    case CpuDType::kBFloat16:
      return transform(static_cast<const BFloat16*>(x), static_cast<BFloat16*>(out), rows, log2p, m, block, scale,
                       threads);
  }
  return nullptr;
}

const char* fwht_cpu_isa() { return kCpuIsaNames[cpu_isa_current()]; }

bool fwht_cpu_set_isa(const char* isa) { return cpu_isa_set(isa); }

}  // namespace fastspec
