// Mamba's selective scan on the CPU: torch-free C++17 kernels (raw pointers, OpenMP).
//
// Per batch b, channel d, state n (Gu & Dao 2023, Alg. 2; mamba_ssm's selective_scan_ref):
//
//   Δ_t = softplus(delta_t + bias_d) (threshold 20: Δ = raw above) or delta_t + bias_d
//   x_t[n] = exp(Δ_t·A[d,n])·x_{t−1}[n] + Δ_t·B_t[n]·u_t,   x_{−1} = x0 (or 0)
//   out_t  = (Σ_n C_t[n]·x_t[n] + D_d·u_t)·silu(z_t)
//
// See selective_scan_cpu.cpp for the design and csrc/README.md for an overview.
#pragma once

#include <cstdint>

namespace fastspec {

constexpr int kSelectiveCpuMaxN = 256;   // state size N <= 256 (a row's state lives on the stack)
constexpr int kSelectiveCpuChunk = 64;   // time steps per chunk: the forward saves the state before each

// Every array is contiguous (row-major) in the scan's type T (float32, or float64 when
// `float64`), unless said otherwise; optional ones are nullptr when absent.
//   u, delta, z, out: (batch, D, L);  A: (D, N);  D, bias: (D,);  x0, last: (batch, D, N)
//   B, C: fixed (D, N) if b_groups / c_groups is 0, else (batch, G, N, L) with G = groups dividing
//         D (G = 1 is the (batch, N, L) form): channel d reads group d / (D / G)
//   starts: (batch, D, N, ceil(L / kSelectiveCpuChunk)): the state before each chunk's first step
struct SelectiveScanCpuArgs {
  int64_t batch, channels, length, N;
  int b_groups, c_groups;
  bool softplus, float64;
  const void *u, *delta, *z, *A, *B, *C, *D, *bias, *x0;
};

// Forward: writes out, last and starts. threads: OpenMP threads at most (< 1: one). Returns
// nullptr, or (nothing written) a message that names the argument it cannot handle.
const char* selective_scan_cpu_forward(const SelectiveScanCpuArgs& args, void* out, void* last, void* starts,
                                       int threads);

// Backward from the forward's starts, for grad_out (batch, D, L) and grad_last (batch, D, N,
// nullptr: zero). Writes the gradients of every input the arguments have:
//   du, ddelta: (batch, D, L) T;  dz: like z (nullptr iff z is);  dx0: (batch, D, N) T (may be
//   nullptr); dA: (D, N) float64;  dB, dC: fixed (D, N) float64, else like B / C in T;
//   dD, dbias: (D,) float64 (nullptr iff D / bias is).
// Parameter gradients (summed over batch and time) add chunk sums in T to per-row float64
// sums, then those over the batch in order; dB, dC of the input-dependent forms add up fixed
// slices of channels, each in order, then the slices in order: deterministic, the same bits for
// any thread count.
const char* selective_scan_cpu_backward(const SelectiveScanCpuArgs& args, const void* starts, const void* grad_out,
                                        const void* grad_last, void* du, void* ddelta, void* dz, void* dx0, double* dA,
                                        void* dB, void* dC, double* dD, double* dbias, int threads);

// One decoding step (mamba_ssm's selective_state_update), rows (b, h, d) of heads·dim channels:
//   Δ = softplus(dt + bias) (threshold 20) or dt + bias,  state ← exp(Δ·A)·state + Δ·x·B,
//   y = (Σ_n C[n]·state[n] + D·x)·silu(z)
// state (batch, heads, dim, N) is read and written in place; x, dt, z, y: (batch, heads, dim);
// A: (heads, dim, N); B, C: (batch, groups, N), head h reading group h / (heads / groups);
// D, bias: (heads, dim). Contiguous, in T (float32, or float64 when `float64`); z, D, bias may be
// nullptr. Returns nullptr or a message that names the argument it cannot handle.
struct StateUpdateCpuArgs {
  int64_t batch, heads, dim, N, groups;
  bool softplus, float64;
  void* state;
  const void *x, *dt, *z, *A, *B, *C, *D, *bias;
  void* y;
};

const char* selective_state_update_cpu(const StateUpdateCpuArgs& args, int threads);

}  // namespace fastspec
