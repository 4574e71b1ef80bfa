// selective_scan_cpu internals shared by the driver (selective_scan_cpu.cpp) and the row kernels
// compiled once per instruction set (selective_scan_cpu_kernel.h): a row's pointers, the
// per-thread scratch, the kernel tables.
//
// Sources that set a target include this header first, so what it defines (and the standard
// headers the kernels use) is compiled for the baseline target in every translation unit.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/cpu_isa.h"
#include "ssm/selective_scan_cpu.h"

namespace fastspec {
namespace selective_cpu_detail {

// One (batch, channel) row of the scan: its slices of the arguments, in the scan's type T.
template <class T>
struct Row {
  int64_t L, N, Np;  // length, state size, N rounded up to the vector lanes
  const T *u, *delta, *z;  // (L,); z may be nullptr
  const T *a, *Bf, *Cf;    // (Np,) zero-padded copies: A[d, :], fixed B[d, :] and C[d, :]
  const T *B, *C;          // input-dependent: the row's group, (N, L)
  bool b_var, c_var, softplus, has_D;
  T D, bias;    // 0 when absent
  const T* x0;  // (N,) or nullptr
  T* x;         // (Np,): the state between chunks (forward), the carried λ (backward)
  // forward
  T *out, *last, *starts;  // (L,), (N,), (N, chunks)
  // backward
  const T *g, *g_last;  // (L,), (N,) or nullptr
  T *du, *ddelta, *dz, *dx0;  // (L,), (L,), (L,) or nullptr, (N,) or nullptr
  double* dA;                 // (N,): this row's sum over time
  double *dB_fixed, *dC_fixed;  // (N,): this row's sums (fixed forms)
  T *dB_var, *dC_var;         // (N, L): its unit's buffer, added to (input-dependent forms)
  double *dD, *dbias;         // this row's sums
};

// Per-thread work space (beside each row's own a, Bf, Cf, x), every piece 64-byte aligned;
// c = kSelectiveCpuChunk.
template <class T>
struct Scratch {
  T *Bt, *Ct;        // (c, Np): a chunk of input-dependent B, C, time-major
  T *dBt, *dCt;      // (c, Np): their gradients for the chunk, summed over the unit's rows
  T *X, *E;          // (c + 1, Np), (c, Np): the chunk's states (X[0] the start) and decays
  T *dt, *dtu, *gy, *raw, *us, *zs, *ys;  // (c,): per step of the chunk
  T *acc0, *acc1;    // (c, 16): per-step lane sums (vectors of up to 16 lanes)
};

// The rows of one unit: count rows whose input-dependent B and C read the same group.
template <class T>
using UnitFn = void (*)(const Row<T>* rows, int count, const Scratch<T>& s);

constexpr int kStateUpdateRows = 64;  // rows of one decoding-step task
using StateUpdateFn = void (*)(const StateUpdateCpuArgs& args, int64_t r0, int64_t r1);

struct Kernels {
  int vector_bytes;
  UnitFn<float> forward_f32, backward_f32;
  UnitFn<double> forward_f64, backward_f64;
  StateUpdateFn state_update_f32, state_update_f64;
};

extern const Kernels kGenericKernels;  // 16-byte vectors
#if FASTSPEC_CPU_X86
extern const Kernels kAvx2Kernels;
extern const Kernels kAvx512Kernels;
#endif

}  // namespace selective_cpu_detail
}  // namespace fastspec
