// Selective scan on the CPU: checks, work split, threads, instruction-set dispatch (the contract is
// in selective_scan_cpu.h; this file also compiles the generic kernel).
//
// Cost: per (row, step, state) one exp, three multiply-adds forward; the backward recomputes the
// chunk (one exp, stores x and exp(ΔA)) and then about ten multiply-adds. Bytes: u, Δ, z, out
// once per row, B and C once per unit of rows (below), the state before each chunk of 64 steps
// (1/64 of the states) saved for the backward.
// So the scan is bound by the exp: vectorised over n (W = 4, 8 or 16 float32 lanes, generic, AVX2,
// AVX-512 chosen at run time as for fwht_cpu), a row's state stays in registers across the chunk.
//
// Threads (OpenMP, dynamic schedule: a thread whose core is shared takes fewer): forward and
// backward over (batch, slice) units, a slice being a fixed run of channels inside one group of
// every input-dependent B/C (at most 16 slices per batch element, not depending on the thread
// count). A unit makes each chunk of its group's B and C time-major once for all its channels (the
// transposition cost as much as the scan when done per row); in the backward it adds its channels'
// dB/dC (in channel order) into its own partial (batch, slices, N, L) buffer, and the slices of a
// group are added in order at the end. Parameter gradients: per-row float64 sums, added over the
// batch in order afterwards. So the results do not depend on the thread count.
#include "ssm/selective_scan_cpu.h"

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "ssm/selective_scan_cpu_kernel.h"

namespace fastspec {
namespace selective_cpu_detail {

extern const Kernels kGenericKernels = make_kernels<16>();

namespace {

const Kernels& kernels_of(int isa) {
#if FASTSPEC_CPU_X86
  if (isa == kCpuAvx512) return kAvx512Kernels;
  if (isa == kCpuAvx2) return kAvx2Kernels;
#endif
  (void)isa;
  return kGenericKernels;
}

template <class T>
UnitFn<T> unit_fn(const Kernels& k, bool backward) {
  if constexpr (std::is_same_v<T, float>) {
    return backward ? k.backward_f32 : k.forward_f32;
  } else {
    return backward ? k.backward_f64 : k.forward_f64;
  }
}

constexpr int64_t kAlign = 64;
constexpr int kMaxSlices = 16;  // units of channels per batch element

struct Free {
  void operator()(char* p) const { std::free(p); }
};

// The work split: units (b, slice), a slice S channels inside one group of every input-dependent
// B/C, S the smallest divisor of their common group size that leaves at most kMaxSlices slices
// (not depending on the thread count).
struct Split {
  int64_t S, slices;

  explicit Split(const SelectiveScanCpuArgs& a) {
    int64_t common = a.channels;
    for (const int g : {a.b_groups, a.c_groups}) {
      if (g > 0) common = std::gcd(common, a.channels / g);
    }
    S = 1;
    while (S < common && (common % S != 0 || a.channels / S > kMaxSlices)) ++S;
    slices = a.channels / S;
  }
};

// One thread's work space: the Scratch<T>, then S rows' a, Bf, Cf, x (Np each), kAlign-aligned.
template <class T>
struct Space {
  int64_t Np, S, bytes;

  static int64_t aligned(int64_t elems) {
    return (elems * static_cast<int64_t>(sizeof(T)) + kAlign - 1) / kAlign * kAlign;
  }

  Space(int64_t Np_, int64_t S_) : Np(Np_), S(S_) {
    constexpr int64_t c = kSelectiveCpuChunk;
    bytes = 4 * aligned(c * Np) + aligned((c + 1) * Np) + aligned(c * Np) + 7 * aligned(c) + 2 * aligned(16 * c) +
            4 * S * aligned(Np);
  }

  // The thread's Scratch, and its rows' buffers at rows_space (4·S pieces of Np).
  Scratch<T> carve(char* space, T** row_buffers) const {
    constexpr int64_t c = kSelectiveCpuChunk;
    std::memset(space, 0, bytes);
    auto next = [&](int64_t elems) {
      T* p = reinterpret_cast<T*>(space);
      space += aligned(elems);
      return p;
    };
    Scratch<T> s;
    for (T** p : {&s.Bt, &s.Ct, &s.dBt, &s.dCt}) *p = next(c * Np);
    s.X = next((c + 1) * Np);
    s.E = next(c * Np);
    for (T** p : {&s.dt, &s.dtu, &s.gy, &s.raw, &s.us, &s.zs, &s.ys}) *p = next(c);
    s.acc0 = next(16 * c);
    s.acc1 = next(16 * c);
    for (int64_t i = 0; i < 4 * S; ++i) row_buffers[i] = next(Np);
    return s;
  }
};

template <class T>
const T* typed(const void* v) {
  return static_cast<const T*>(v);
}

// The rows of unit (b, slice): their slices of the inputs, A's row and fixed B, C rows copied
// (zero-padded) into the thread's row buffers.
template <class T>
void fill_rows(const SelectiveScanCpuArgs& a, int64_t Np, int64_t b, int64_t d0, int64_t S, T* const* buffers,
               Row<T>* rows) {
  const int64_t L = a.length, N = a.N;
  for (int64_t i = 0; i < S; ++i) {
    const int64_t d = d0 + i, r = b * a.channels + d;
    Row<T>& row = rows[i];
    row = Row<T>{};
    row.L = L;
    row.N = N;
    row.Np = Np;
    row.u = typed<T>(a.u) + r * L;
    row.delta = typed<T>(a.delta) + r * L;
    row.z = a.z != nullptr ? typed<T>(a.z) + r * L : nullptr;
    row.b_var = a.b_groups > 0;
    row.c_var = a.c_groups > 0;
    row.softplus = a.softplus;
    row.has_D = a.D != nullptr;
    row.D = a.D != nullptr ? typed<T>(a.D)[d] : T(0);
    row.bias = a.bias != nullptr ? typed<T>(a.bias)[d] : T(0);
    row.x0 = a.x0 != nullptr ? typed<T>(a.x0) + r * N : nullptr;
    T* const own[3] = {buffers[4 * i], buffers[4 * i + 1], buffers[4 * i + 2]};
    row.x = buffers[4 * i + 3];
    const void* const from[3] = {a.A, a.B, a.C};
    const bool copy[3] = {true, a.b_groups == 0, a.c_groups == 0};
    for (int m = 0; m < 3; ++m) {
      if (!copy[m]) continue;
      for (int64_t k = 0; k < N; ++k) own[m][k] = typed<T>(from[m])[d * N + k];
    }
    row.a = own[0];
    row.Bf = own[1];
    row.Cf = own[2];
    if (row.b_var) row.B = typed<T>(a.B) + (b * a.b_groups + d / (a.channels / a.b_groups)) * N * L;
    if (row.c_var) row.C = typed<T>(a.C) + (b * a.c_groups + d / (a.channels / a.c_groups)) * N * L;
  }
}

const char* check(const SelectiveScanCpuArgs& a) {
  if (a.N < 1 || a.N > kSelectiveCpuMaxN) return "selective_scan_cpu: need 1 <= N <= 256";
  if (a.batch < 0 || a.channels < 1 || a.length < 1) return "selective_scan_cpu: need batch >= 0, D >= 1, L >= 1";
  for (const int g : {a.b_groups, a.c_groups}) {
    if (g < 0 || (g > 0 && a.channels % g != 0)) return "selective_scan_cpu: groups must be 0 (fixed) or divide D";
  }
  if (a.batch > 0 && (a.u == nullptr || a.delta == nullptr || a.A == nullptr || a.B == nullptr || a.C == nullptr)) {
    return "selective_scan_cpu: u, delta, A, B and C must not be null";
  }
  return nullptr;
}

int thread_count(int threads, int64_t units) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(std::max(threads, 1), units)));
}

int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

template <class T>
const char* forward(const SelectiveScanCpuArgs& a, T* out, T* last, T* starts, int threads) {
  const Kernels& kern = kernels_of(cpu_isa_current());
  const UnitFn<T> fn = unit_fn<T>(kern, false);
  const int64_t lanes = kern.vector_bytes / static_cast<int64_t>(sizeof(T));
  const int64_t D = a.channels, L = a.length, N = a.N, Np = (N + lanes - 1) / lanes * lanes;
  const int64_t chunks = (L + kSelectiveCpuChunk - 1) / kSelectiveCpuChunk;
  const Split split(a);
  const int64_t units = a.batch * split.slices;
  const Space<T> space_of(Np, split.S);
  const int nt = thread_count(threads, units);
  std::unique_ptr<char, Free> space(static_cast<char*>(std::aligned_alloc(kAlign, nt * space_of.bytes)));
  std::vector<Row<T>> all_rows(nt * split.S);
  std::vector<T*> all_buffers(nt * 4 * split.S);
  if (!space) return "selective_scan_cpu: out of memory for the work space";
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int tid = thread_id();
    T** const buffers = all_buffers.data() + tid * 4 * split.S;
    Row<T>* const rows = all_rows.data() + tid * split.S;
    const Scratch<T> s = space_of.carve(space.get() + tid * space_of.bytes, buffers);
#pragma omp for schedule(dynamic, 1)
    for (int64_t unit = 0; unit < units; ++unit) {
      const int64_t b = unit / split.slices, d0 = unit % split.slices * split.S;
      fill_rows(a, Np, b, d0, split.S, buffers, rows);
      for (int64_t i = 0; i < split.S; ++i) {
        const int64_t r = b * D + d0 + i;
        rows[i].out = out + r * L;
        rows[i].last = last + r * N;
        rows[i].starts = starts + r * N * chunks;
      }
      fn(rows, static_cast<int>(split.S), s);
    }
  }
  return nullptr;
}

template <class T>
const char* backward(const SelectiveScanCpuArgs& a, const T* starts, const T* grad_out, const T* grad_last, T* du,
                     T* ddelta, T* dz, T* dx0, double* dA, void* dB, void* dC, double* dD, double* dbias,
                     int threads) {
  const Kernels& kern = kernels_of(cpu_isa_current());
  const UnitFn<T> fn = unit_fn<T>(kern, true);
  const int64_t lanes = kern.vector_bytes / static_cast<int64_t>(sizeof(T));
  const int64_t batch = a.batch, D = a.channels, L = a.length, N = a.N, Np = (N + lanes - 1) / lanes * lanes;
  const int64_t chunks = (L + kSelectiveCpuChunk - 1) / kSelectiveCpuChunk;
  const Split split(a);
  const int64_t S = split.S, slices = split.slices, units = batch * slices;
  const Space<T> space_of(Np, S);

  // Work space: per-row float64 sums (dA, fixed dB/dC: (batch, D, N); dD, dbias: (batch, D)), the
  // units' partial dB/dC (batch, slices, N, L) where a group has more than one slice.
  const bool b_var = a.b_groups > 0, c_var = a.c_groups > 0;
  const bool b_part = b_var && slices > a.b_groups, c_part = c_var && slices > a.c_groups;
  const int64_t row_n = batch * D * N, part = batch * slices * N * L;
  std::vector<double> sums(row_n * (1 + !b_var + !c_var) + 2 * batch * D, 0.0);
  double* const rows_dA = sums.data();
  double* const rows_dB = b_var ? nullptr : rows_dA + row_n;
  double* const rows_dC = c_var ? nullptr : rows_dA + row_n * (1 + !b_var);
  double* const rows_dD = rows_dA + row_n * (1 + !b_var + !c_var);
  double* const rows_dbias = rows_dD + batch * D;
  std::vector<T> partials((b_part ? part : 0) + (c_part ? part : 0), T(0));
  T* const dB_units = b_part ? partials.data() : b_var ? static_cast<T*>(dB) : nullptr;
  T* const dC_units = c_part ? partials.data() + (b_part ? part : 0) : c_var ? static_cast<T*>(dC) : nullptr;
  if (b_var && !b_part) std::fill_n(dB_units, batch * a.b_groups * N * L, T(0));
  if (c_var && !c_part) std::fill_n(dC_units, batch * a.c_groups * N * L, T(0));

  const int nt = thread_count(threads, units);
  std::unique_ptr<char, Free> space(static_cast<char*>(std::aligned_alloc(kAlign, nt * space_of.bytes)));
  std::vector<Row<T>> all_rows(nt * S);
  std::vector<T*> all_buffers(nt * 4 * S);
  if (!space) return "selective_scan_cpu: out of memory for the work space";
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int tid = thread_id();
    T** const buffers = all_buffers.data() + tid * 4 * S;
    Row<T>* const rows = all_rows.data() + tid * S;
    const Scratch<T> s = space_of.carve(space.get() + tid * space_of.bytes, buffers);
#pragma omp for schedule(dynamic, 1)
    for (int64_t unit = 0; unit < units; ++unit) {
      const int64_t b = unit / slices, d0 = unit % slices * S;
      fill_rows(a, Np, b, d0, S, buffers, rows);
      // the unit's own partial (several slices per group) or its group's buffer (one slice per group)
      T* const dB_unit = !b_var ? nullptr : b_part ? dB_units + unit * N * L
                                                  : dB_units + (b * a.b_groups + d0 / (D / a.b_groups)) * N * L;
      T* const dC_unit = !c_var ? nullptr : c_part ? dC_units + unit * N * L
                                                  : dC_units + (b * a.c_groups + d0 / (D / a.c_groups)) * N * L;
      for (int64_t i = 0; i < S; ++i) {
        const int64_t r = b * D + d0 + i;
        Row<T>& row = rows[i];
        row.starts = const_cast<T*>(starts) + r * N * chunks;
        row.g = grad_out + r * L;
        row.g_last = grad_last != nullptr ? grad_last + r * N : nullptr;
        row.du = du + r * L;
        row.ddelta = ddelta + r * L;
        row.dz = a.z != nullptr ? dz + r * L : nullptr;
        row.dx0 = dx0 != nullptr ? dx0 + r * N : nullptr;
        row.dA = rows_dA + r * N;
        row.dB_fixed = rows_dB != nullptr ? rows_dB + r * N : nullptr;
        row.dC_fixed = rows_dC != nullptr ? rows_dC + r * N : nullptr;
        row.dB_var = dB_unit;
        row.dC_var = dC_unit;
        row.dD = rows_dD + r;
        row.dbias = rows_dbias + r;
      }
      fn(rows, static_cast<int>(S), s);
    }
    // the slices of each group in order
    for (int i = 0; i < 2; ++i) {
      const bool partial = i ? c_part : b_part;
      if (!partial) continue;
      const int64_t G = i ? a.c_groups : a.b_groups, per_group = slices / G;
      const T* src = i ? dC_units : dB_units;
      T* dst = static_cast<T*>(i ? dC : dB);
#pragma omp for schedule(static)
      for (int64_t bg = 0; bg < batch * G; ++bg) {
        T* out = dst + bg * N * L;
        const T* first = src + bg * per_group * N * L;
        std::copy(first, first + N * L, out);
        for (int64_t q = 1; q < per_group; ++q) {
          const T* add = first + q * N * L;
          for (int64_t e = 0; e < N * L; ++e) out[e] += add[e];
        }
      }
    }
  }
  // parameters: the per-row sums over the batch, in order
  for (int64_t e = 0; e < D * N; ++e) {
    double sA = 0, sB = 0, sC = 0;
    for (int64_t b = 0; b < batch; ++b) {
      sA += rows_dA[b * D * N + e];
      if (rows_dB != nullptr) sB += rows_dB[b * D * N + e];
      if (rows_dC != nullptr) sC += rows_dC[b * D * N + e];
    }
    dA[e] = sA;
    if (!b_var) static_cast<double*>(dB)[e] = sB;
    if (!c_var) static_cast<double*>(dC)[e] = sC;
  }
  for (int64_t d = 0; d < D; ++d) {
    double sD = 0, sb = 0;
    for (int64_t b = 0; b < batch; ++b) {
      sD += rows_dD[b * D + d];
      sb += rows_dbias[b * D + d];
    }
    if (dD != nullptr) dD[d] = sD;
    if (dbias != nullptr) dbias[d] = sb;
  }
  return nullptr;
}

}  // namespace
}  // namespace selective_cpu_detail

const char* selective_scan_cpu_forward(const SelectiveScanCpuArgs& args, void* out, void* last, void* starts,
                                       int threads) {
  using namespace selective_cpu_detail;
  if (const char* err = check(args)) return err;
  if (args.batch == 0) return nullptr;
  if (out == nullptr || last == nullptr || starts == nullptr) {
    return "selective_scan_cpu: out, last and starts must not be null";
  }
  if (args.float64) {
    return forward(args, static_cast<double*>(out), static_cast<double*>(last), static_cast<double*>(starts), threads);
  }
  return forward(args, static_cast<float*>(out), static_cast<float*>(last), static_cast<float*>(starts), threads);
}

const char* selective_scan_cpu_backward(const SelectiveScanCpuArgs& args, const void* starts, const void* grad_out,
                                        const void* grad_last, void* du, void* ddelta, void* dz, void* dx0, double* dA,
                                        void* dB, void* dC, double* dD, double* dbias, int threads) {
  using namespace selective_cpu_detail;
  if (const char* err = check(args)) return err;
  if (dA == nullptr || dB == nullptr || dC == nullptr || (dz == nullptr) != (args.z == nullptr) ||
      (dD == nullptr) != (args.D == nullptr) || (dbias == nullptr) != (args.bias == nullptr)) {
    return "selective_scan_cpu: dA, dB, dC must be given, and dz, dD, dbias exactly when z, D, bias are";
  }
  if (args.batch == 0) {  // the parameter gradients are sums over nothing
    std::fill_n(dA, args.channels * args.N, 0.0);
    for (int i = 0; i < 2; ++i) {
      if ((i ? args.c_groups : args.b_groups) == 0) std::fill_n(static_cast<double*>(i ? dC : dB), args.channels * args.N, 0.0);
    }
    if (dD != nullptr) std::fill_n(dD, args.channels, 0.0);
    if (dbias != nullptr) std::fill_n(dbias, args.channels, 0.0);
    return nullptr;
  }
  if (starts == nullptr || grad_out == nullptr || du == nullptr || ddelta == nullptr) {
    return "selective_scan_cpu: starts, grad_out, du and ddelta must not be null";
  }
  if (args.float64) {
    return backward(args, static_cast<const double*>(starts), static_cast<const double*>(grad_out),
                    static_cast<const double*>(grad_last), static_cast<double*>(du), static_cast<double*>(ddelta),
                    static_cast<double*>(dz), static_cast<double*>(dx0), dA, dB, dC, dD, dbias, threads);
  }
  return backward(args, static_cast<const float*>(starts), static_cast<const float*>(grad_out),
                  static_cast<const float*>(grad_last), static_cast<float*>(du), static_cast<float*>(ddelta),
                  static_cast<float*>(dz), static_cast<float*>(dx0), dA, dB, dC, dD, dbias, threads);
}

const char* selective_state_update_cpu(const StateUpdateCpuArgs& a, int threads) {
  using namespace selective_cpu_detail;
  if (a.N < 1 || a.batch < 0 || a.heads < 1 || a.dim < 1 || a.groups < 1 || a.heads % a.groups != 0) {
    return "selective_state_update_cpu: need N >= 1, batch >= 0, heads, dim >= 1 and groups dividing heads";
  }
  const int64_t rows = a.batch * a.heads * a.dim;
  if (rows == 0) return nullptr;
  if (a.state == nullptr || a.x == nullptr || a.dt == nullptr || a.A == nullptr || a.B == nullptr ||
      a.C == nullptr || a.y == nullptr) {
    return "selective_state_update_cpu: state, x, dt, A, B, C and y must not be null";
  }
  const Kernels& kern = kernels_of(cpu_isa_current());
  const StateUpdateFn fn = a.float64 ? kern.state_update_f64 : kern.state_update_f32;
  const int64_t tasks = (rows + kStateUpdateRows - 1) / kStateUpdateRows;
  const int nt = thread_count(threads, tasks * a.N / 512 + 1);  // threads only for large steps
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
  for (int64_t task = 0; task < tasks; ++task) {
    fn(a, task * kStateUpdateRows, std::min(rows, (task + 1) * kStateUpdateRows));
  }
  return nullptr;
}

}  // namespace fastspec
