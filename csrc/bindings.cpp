// fastspec._C: the compiled implementations of fastspec ops (the only file that includes torch).
//
// The op schemas are defined on the Python side (torch.library.define in fastspec/ops/*.py);
// importing fastspec._C registers the kernels for them: the CPU ones where setup.py built them
// (FASTSPEC_WITH_CPU), the CUDA ones where it built those (FASTSPEC_WITH_CUDA).
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#ifdef FASTSPEC_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "butterfly/butterfly.h"
#include "fftconv/fftconv.h"
#include "fwht/fwht.h"
#endif
#ifdef FASTSPEC_WITH_CPU
#include "common/cpu_isa.h"
#include "fwht/fwht_cpu.h"
#include "ssm/selective_scan_cpu.h"
#if defined(__linux__)
#include <sys/mman.h>
#endif
#endif

namespace fastspec {
namespace {

#ifdef FASTSPEC_WITH_CPU
// A large new output (>= 4 MiB): ask Linux for transparent huge pages before the kernel first
// writes it, as numpy does for its arrays. Fresh memory is zeroed and mapped on first touch, and
// in 4 KiB pages that costs more than the transform (2x the time at 4096 x 4096 float32).
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  if (bytes < (size_t{4} << 20)) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // a hint
#else
  (void)data;
  (void)bytes;
#endif
}

// fastspec::fwht_cpu(Tensor x, float scale, Tensor? block) -> Tensor: (x @ (B ⊗ H_p)) * scale
// along the last dim, n = m·p, p = 2^k; block: B as a float64 (m, m) ±1 matrix, None for m = 1.
at::Tensor fwht_cpu(const at::Tensor& x, double scale, const std::optional<at::Tensor>& block) {
  TORCH_CHECK(x.device().is_cpu(), "fwht_cpu: x must be a CPU tensor, got device ", x.device());
  TORCH_CHECK(x.dim() >= 1, "fwht_cpu: x must have at least one dimension, got a 0-dim tensor");
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              "fwht_cpu: x must be float32, float64, float16 or bfloat16, got ", st);
  TORCH_CHECK(x.is_contiguous(), "fwht_cpu: x must be contiguous, got sizes ", x.sizes(), " and strides ",
              x.strides());
  int64_t m = 1;
  const double* b = nullptr;
  if (block.has_value()) {
    const at::Tensor& bm = *block;
    TORCH_CHECK(bm.device().is_cpu() && bm.scalar_type() == at::kDouble && bm.dim() == 2 && bm.size(0) == bm.size(1) &&
                    bm.size(0) >= 2 && bm.size(0) <= kFwhtCpuMaxBlock && bm.is_contiguous(),
                "fwht_cpu: block must be a contiguous float64 CPU matrix of shape (m, m), 2 <= m <= ",
                kFwhtCpuMaxBlock, ", got ", bm.scalar_type(), " ", bm.device(), " of shape ", bm.sizes());
    m = bm.size(0);
    b = bm.data_ptr<double>();
  }
  const int64_t n = x.size(-1), p = n / m;
  TORCH_CHECK(n >= m && n % m == 0 && (p & (p - 1)) == 0 && n <= (int64_t{1} << kFwhtCpuMaxLog2N),
              "fwht_cpu: the last dim must be m·2^k <= ", int64_t{1} << kFwhtCpuMaxLog2N, " with m = ", m,
              ", got ", n, " (shape ", x.sizes(), ")");
  int log2p = 0;
  while ((int64_t{1} << log2p) < p) ++log2p;
  const CpuDType dtype = st == at::kFloat    ? CpuDType::kFloat32
                         : st == at::kDouble ? CpuDType::kFloat64
                         : st == at::kHalf   ? CpuDType::kFloat16
                                             : CpuDType::kBFloat16;
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  advise_huge_pages(out.data_ptr(), out.nbytes());
  const int64_t rows = x.numel() / n;
  const char* err = fastspec::fwht_cpu_run(x.data_ptr(), out.data_ptr(), rows, log2p, static_cast<int>(m), b, scale,
                                       dtype, at::get_num_threads());
  TORCH_CHECK(err == nullptr, err, " (shape ", x.sizes(), ", dtype ", st, ")");
  return out;
}
// The selective scan's arguments as selective_scan_cpu.h takes them, after checking that every
// tensor is a contiguous CPU tensor of the scan's dtype (float32, or float64) with its shape.
SelectiveScanCpuArgs selective_args(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                    const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                                    const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
                                    const std::optional<at::Tensor>& initial_state, bool delta_softplus) {
  const auto st = u.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble, "selective_scan_cpu: u must be float32 or float64, got ", st);
  TORCH_CHECK(u.dim() == 3 && u.size(2) >= 1, "selective_scan_cpu: u must be (B, D, L) with L >= 1, got ", u.sizes());
  TORCH_CHECK(A.dim() == 2 && A.size(0) == u.size(1) && A.size(1) >= 1 && A.size(1) <= kSelectiveCpuMaxN,
              "selective_scan_cpu: A must be (D, N) with D = ", u.size(1), " and 1 <= N <= ", kSelectiveCpuMaxN,
              ", got ", A.sizes());
  const int64_t batch = u.size(0), channels = u.size(1), length = u.size(2), N = A.size(1);
  const auto same = [&](const char* name, const at::Tensor& t, at::IntArrayRef shape) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == st && t.is_contiguous() && t.sizes() == shape,
                "selective_scan_cpu: ", name, " must be a contiguous ", st, " CPU tensor of shape ", shape, ", got ",
                t.scalar_type(), " ", t.device(), " of shape ", t.sizes(), " and strides ", t.strides());
  };
  same("u", u, u.sizes());
  same("delta", delta, u.sizes());
  same("A", A, A.sizes());
  const auto groups = [&](const char* name, const at::Tensor& M) {
    if (M.dim() == 2) {
      same(name, M, {channels, N});
      return 0;
    }
    TORCH_CHECK(M.dim() == 4 && M.size(1) >= 1 && channels % M.size(1) == 0,
                "selective_scan_cpu: ", name, " must be (D, N) or (B, G, N, L) with G dividing D = ", channels,
                ", got ", M.sizes());
    same(name, M, {batch, M.size(1), N, length});
    return static_cast<int>(M.size(1));
  };
  SelectiveScanCpuArgs args{};
  args.batch = batch;
  args.channels = channels;
  args.length = length;
  args.N = N;
  args.b_groups = groups("B", B);
  args.c_groups = groups("C", C);
  args.softplus = delta_softplus;
  args.float64 = st == at::kDouble;
  args.u = u.data_ptr();
  args.delta = delta.data_ptr();
  args.A = A.data_ptr();
  args.B = B.data_ptr();
  args.C = C.data_ptr();
  const auto optional = [&](const char* name, const std::optional<at::Tensor>& t, at::IntArrayRef shape) {
    if (!t.has_value()) return static_cast<const void*>(nullptr);
    same(name, *t, shape);
    return static_cast<const void*>(t->data_ptr());
  };
  args.D = optional("D", D, {channels});
  args.z = optional("z", z, u.sizes());
  args.bias = optional("delta_bias", delta_bias, {channels});
  args.x0 = optional("initial_state", initial_state, {batch, channels, N});
  return args;
}

// fastspec::selective_scan_cpu(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus)
// -> (out (B, D, L), last (B, D, N), starts (B, D, N, ceil(L / 64))); B, C: (D, N) or (B, G, N, L).
std::tuple<at::Tensor, at::Tensor, at::Tensor> selective_scan_cpu_op(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
    const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
    const std::optional<at::Tensor>& delta_bias, const std::optional<at::Tensor>& initial_state, bool delta_softplus) {
  const SelectiveScanCpuArgs args = selective_args(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus);
  const int64_t chunks = (args.length + kSelectiveCpuChunk - 1) / kSelectiveCpuChunk;
  at::Tensor out = at::empty_like(u);
  at::Tensor last = at::empty({args.batch, args.channels, args.N}, u.options());
  at::Tensor starts = at::empty({args.batch, args.channels, args.N, chunks}, u.options());
  const char* err = selective_scan_cpu_forward(args, out.data_ptr(), last.data_ptr(), starts.data_ptr(),
                                               at::get_num_threads());
  TORCH_CHECK(err == nullptr, err, " (u of shape ", u.sizes(), ", N = ", args.N, ")");
  return {out, last, starts};
}

// fastspec::selective_scan_cpu_backward(grad_out, grad_last, u, ..., initial_state, starts, delta_softplus)
// -> (du, ddelta, dA, dB, dC, dD, dz, dbias, dinitial): dA, fixed dB/dC, dD, dbias in float64,
// the rest in u's dtype; dD, dz, dbias are empty (0,) tensors where D, z, delta_bias are absent.
std::vector<at::Tensor> selective_scan_cpu_backward_op(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_last, const at::Tensor& u,
    const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
    const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
    const std::optional<at::Tensor>& delta_bias, const std::optional<at::Tensor>& initial_state,
    const at::Tensor& starts, bool delta_softplus) {
  const SelectiveScanCpuArgs args = selective_args(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus);
  const auto st = u.scalar_type();
  const int64_t chunks = (args.length + kSelectiveCpuChunk - 1) / kSelectiveCpuChunk;
  const auto check = [&](const char* name, const at::Tensor& t, at::IntArrayRef shape) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == st && t.is_contiguous() && t.sizes() == shape,
                "selective_scan_cpu_backward: ", name, " must be a contiguous ", st, " CPU tensor of shape ", shape,
                ", got ", t.scalar_type(), " ", t.device(), " of shape ", t.sizes());
  };
  check("grad_out", grad_out, u.sizes());
  check("starts", starts, {args.batch, args.channels, args.N, chunks});
  if (grad_last.has_value()) check("grad_last", *grad_last, {args.batch, args.channels, args.N});
  const auto f64 = u.options().dtype(at::kDouble);
  const auto grad_of = [&](const at::Tensor& M) {
    return M.dim() == 2 ? at::empty(M.sizes(), f64) : at::empty_like(M);
  };
  at::Tensor du = at::empty_like(u), ddelta = at::empty_like(u), dx0 = at::empty({args.batch, args.channels, args.N},
                                                                                 u.options());
  at::Tensor dA = at::empty(A.sizes(), f64), dB = grad_of(B), dC = grad_of(C);
  at::Tensor dD = at::empty({D.has_value() ? args.channels : 0}, f64);
  at::Tensor dz = z.has_value() ? at::empty_like(u) : at::empty({0}, u.options());
  at::Tensor dbias = at::empty({delta_bias.has_value() ? args.channels : 0}, f64);
  const char* err = selective_scan_cpu_backward(
      args, starts.data_ptr(), grad_out.data_ptr(), grad_last.has_value() ? grad_last->data_ptr() : nullptr,
      du.data_ptr(), ddelta.data_ptr(), z.has_value() ? dz.data_ptr() : nullptr, dx0.data_ptr(),
      dA.data_ptr<double>(), dB.data_ptr(), dC.data_ptr(), D.has_value() ? dD.data_ptr<double>() : nullptr,
      delta_bias.has_value() ? dbias.data_ptr<double>() : nullptr, at::get_num_threads());
  TORCH_CHECK(err == nullptr, err, " (u of shape ", u.sizes(), ", N = ", args.N, ")");
  return {du, ddelta, dA, dB, dC, dD, dz, dbias, dx0};
}

// fastspec::selective_state_update_cpu(state!, x, dt, A, B, C, D, z, dt_bias, dt_softplus) -> y, the state
// updated in place: state (B, H, D, N), x, dt, z (B, H, D), A (H, D, N), B, C (B, G, N), D, dt_bias
// (H, D); contiguous CPU tensors of one dtype, float32 or float64 (the Python side converts).
at::Tensor selective_state_update_cpu_op(
    const at::Tensor& state, const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
    const std::optional<at::Tensor>& dt_bias, bool dt_softplus) {
  const auto st = state.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble, "selective_state_update_cpu: state must be float32 or float64, got ",
              st);
  TORCH_CHECK(state.dim() == 4 && B.dim() == 3 && B.size(1) >= 1 && state.size(1) % B.size(1) == 0,
              "selective_state_update_cpu: state must be (B, H, D, N) and B (B, G, N) with G dividing H, got ",
              state.sizes(), " and ", B.sizes());
  const int64_t batch = state.size(0), heads = state.size(1), dim = state.size(2), N = state.size(3);
  const auto same = [&](const char* name, const at::Tensor& t, at::IntArrayRef shape) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == st && t.is_contiguous() && t.sizes() == shape,
                "selective_state_update_cpu: ", name, " must be a contiguous ", st, " CPU tensor of shape ", shape,
                ", got ", t.scalar_type(), " ", t.device(), " of shape ", t.sizes(), " and strides ", t.strides());
  };
  same("state", state, state.sizes());
  same("x", x, {batch, heads, dim});
  same("dt", dt, {batch, heads, dim});
  same("A", A, {heads, dim, N});
  same("B", B, {batch, B.size(1), N});
  same("C", C, {batch, B.size(1), N});
  const auto optional = [&](const char* name, const std::optional<at::Tensor>& t, at::IntArrayRef shape) {
    if (!t.has_value()) return static_cast<const void*>(nullptr);
    same(name, *t, shape);
    return static_cast<const void*>(t->data_ptr());
  };
  at::Tensor y = at::empty_like(x);
  StateUpdateCpuArgs args{};
  args.batch = batch;
  args.heads = heads;
  args.dim = dim;
  args.N = N;
  args.groups = B.size(1);
  args.softplus = dt_softplus;
  args.float64 = st == at::kDouble;
  args.state = state.data_ptr();
  args.x = x.data_ptr();
  args.dt = dt.data_ptr();
  args.A = A.data_ptr();
  args.B = B.data_ptr();
  args.C = C.data_ptr();
  args.D = optional("D", D, {heads, dim});
  args.z = optional("z", z, {batch, heads, dim});
  args.bias = optional("dt_bias", dt_bias, {heads, dim});
  args.y = y.data_ptr();
  const char* err = selective_state_update_cpu(args, at::get_num_threads());
  TORCH_CHECK(err == nullptr, err, " (state of shape ", state.sizes(), ")");
  return y;
}
#endif

#ifdef FASTSPEC_WITH_CUDA
// fastspec::fwht_cuda(Tensor x, float scale) -> Tensor: (x @ H_n) * scale along the last dim.
at::Tensor fwht_cuda(const at::Tensor& x, double scale) {
  TORCH_CHECK(x.is_cuda(), "fwht_cuda: x must be a CUDA tensor, got device ", x.device());
  TORCH_CHECK(x.dim() >= 1, "fwht_cuda: x must have at least one dimension, got a 0-dim tensor");
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16,
              "fwht_cuda: x must be float32, float16 or bfloat16, got ", st);
  TORCH_CHECK(x.is_contiguous(), "fwht_cuda: x must be contiguous, got sizes ", x.sizes(),
              " and strides ", x.strides());
  const int64_t n = x.size(-1);
  TORCH_CHECK(n >= 1 && n <= (int64_t{1} << kFwhtMaxLog2N) && (n & (n - 1)) == 0,
              "fwht_cuda: the last dim must be a power of two in [1, ", int64_t{1} << kFwhtMaxLog2N,
              "], got ", n, " (shape ", x.sizes(), ")");
  TORCH_CHECK(x.data_ptr() == nullptr ||
                  reinterpret_cast<uintptr_t>(x.data_ptr()) % static_cast<uintptr_t>(x.element_size()) == 0,
              "fwht_cuda: x's data pointer is not aligned to its element size");

  int log2n = 0;
  while ((int64_t{1} << log2n) < n) ++log2n;
  const DType dtype = st == at::kFloat ? DType::kFloat32 : (st == at::kHalf ? DType::kFloat16 : DType::kBFloat16);

  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t rows = x.numel() / n;
  if (rows == 0) return out;

  // at::cuda::getCurrentCUDAStream is this same function (c10::cuda re-exported in at::cuda).
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  const cudaError_t err =
      fwht_launch(x.data_ptr(), out.data_ptr(), rows, log2n, static_cast<float>(scale), dtype, stream);
  TORCH_CHECK(err == cudaSuccess, "fwht_cuda: kernel launch failed for shape ", x.sizes(), ", dtype ", st,
              ": ", cudaGetErrorString(err));
  return out;
}
#endif

#ifdef FASTSPEC_WITH_CUDA
// fastspec::fft_conv_cuda(Tensor u, Tensor? pregate, Tensor? postgate, Tensor? D, Tensor records, int log2n)
// -> Tensor: y = postgate · conv(u · pregate, k) + D · u over an FFT of 2^log2n points, k given as
// its records (fastspec/ops/fftconv.py: cuda_spectrum). u and the gates (B, H, L) contiguous
// float16/bfloat16, D float32 (H,), records float32 (H, 2^(log2n-1), 4) contiguous.
at::Tensor fft_conv_cuda(const at::Tensor& u, const std::optional<at::Tensor>& pregate,
                         const std::optional<at::Tensor>& postgate, const std::optional<at::Tensor>& D,
                         const at::Tensor& records, int64_t log2n) {
  TORCH_CHECK(u.is_cuda() && u.dim() == 3 && u.is_contiguous(),
              "fft_conv_cuda: u must be a contiguous (B, H, L) CUDA tensor, got ", u.device(), " of sizes ", u.sizes(),
              " and strides ", u.strides());
  const auto st = u.scalar_type();
  TORCH_CHECK(st == at::kHalf || st == at::kBFloat16, "fft_conv_cuda: u must be float16 or bfloat16, got ", st);
  TORCH_CHECK(log2n >= kFftConvMinLog2N && log2n <= kFftConvMaxLog2N && u.size(2) >= 1 &&
                  u.size(2) <= (int64_t{1} << log2n),
              "fft_conv_cuda: needs ", kFftConvMinLog2N, " <= log2n <= ", kFftConvMaxLog2N,
              " and 1 <= L <= 2^log2n, got log2n = ", log2n, " and L = ", u.size(2));
  const void* gates[2] = {nullptr, nullptr};
  const std::optional<at::Tensor>* given[2] = {&pregate, &postgate};
  for (int i = 0; i < 2; ++i) {
    if (!given[i]->has_value()) continue;
    const at::Tensor& g = **given[i];
    TORCH_CHECK(g.device() == u.device() && g.scalar_type() == st && g.sizes() == u.sizes() && g.is_contiguous(),
                "fft_conv_cuda: ", i == 0 ? "pregate" : "postgate",
                " must be contiguous with u's device, dtype and sizes ", u.sizes(), ", got ", g.device(), " ",
                g.scalar_type(), " ", g.sizes());
    gates[i] = g.data_ptr();
  }
  const float* d = nullptr;
  if (D.has_value()) {
    TORCH_CHECK(D->device() == u.device() && D->scalar_type() == at::kFloat && D->dim() == 1 &&
                    D->size(0) == u.size(1) && D->is_contiguous(),
                "fft_conv_cuda: D must be a contiguous float32 (H,) = (", u.size(1), ",) tensor on u's device, got ",
                D->device(), " ", D->scalar_type(), " ", D->sizes());
    d = D->data_ptr<float>();
  }
  TORCH_CHECK(records.device() == u.device() && records.scalar_type() == at::kFloat && records.is_contiguous() &&
                  records.dim() == 3 && records.size(0) == u.size(1) &&
                  records.size(1) == (int64_t{1} << (log2n - 1)) && records.size(2) == 4,
              "fft_conv_cuda: records must be contiguous float32 (H, 2^(log2n-1), 4) = (", u.size(1), ", ",
              int64_t{1} << (log2n - 1), ", 4) on u's device, got ", records.device(), " ", records.scalar_type(), " ",
              records.sizes());
  const c10::cuda::CUDAGuard device_guard(u.device());
  int major = 0;
  TORCH_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, u.device().index()) == cudaSuccess &&
                  major >= 8,
              "fft_conv_cuda: needs a GPU of compute capability 8.0 or newer (bfloat16 tensor-core mma), got ", major,
              ".x");
  at::Tensor y = at::empty_like(u);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(u.device().index()).stream();
  const cudaError_t err = fftconv_forward_launch(
      u.data_ptr(), gates[0], gates[1], d, records.data_ptr<float>(), y.data_ptr(), u.size(0), u.size(1), u.size(2),
      static_cast<int>(log2n), st == at::kHalf ? FftConvDType::kFloat16 : FftConvDType::kBFloat16, stream);
  TORCH_CHECK(err == cudaSuccess, "fft_conv_cuda: kernel launch failed for u of sizes ", u.sizes(), ", dtype ", st,
              ", log2n ", log2n, ": ", cudaGetErrorString(err));
  return y;
}
#endif

#ifdef FASTSPEC_WITH_CUDA
// fastspec::butterfly_cuda(Tensor twiddle, Tensor x, bool increasing_stride) -> Tensor: y = M x per
// stack (torch_butterfly's product, csrc/butterfly/butterfly.h). twiddle (nstacks, nblocks, log2 n,
// n/2, 2, 2) and x (batch, nstacks, n) contiguous CUDA tensors of one dtype (float32, float16,
// bfloat16), n = 2^1 .. 2^14, the twiddle at a whole 2×2 matrix (fastspec/ops/butterfly.py copies it).
at::Tensor butterfly_cuda(const at::Tensor& twiddle, const at::Tensor& x, bool increasing_stride) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 3 && x.is_contiguous(),
              "butterfly_cuda: x must be a contiguous (batch, nstacks, n) CUDA tensor, got ", x.device(), " of sizes ",
              x.sizes(), " and strides ", x.strides());
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16,
              "butterfly_cuda: x must be float32, float16 or bfloat16, got ", st);
  const int64_t n = x.size(2);
  TORCH_CHECK(n >= 2 && n <= (int64_t{1} << kButterflyMaxLog2N) && (n & (n - 1)) == 0,
              "butterfly_cuda: n (x's last dim) must be a power of two in [2, ", int64_t{1} << kButterflyMaxLog2N,
              "], got ", n);
  int log2n = 0;
  while ((int64_t{1} << log2n) < n) ++log2n;
  TORCH_CHECK(twiddle.device() == x.device() && twiddle.scalar_type() == st && twiddle.is_contiguous() &&
                  twiddle.dim() == 6 && twiddle.size(0) == x.size(1) && twiddle.size(1) >= 1 &&
                  twiddle.size(2) == log2n && twiddle.size(3) == n / 2 && twiddle.size(4) == 2 && twiddle.size(5) == 2,
              "butterfly_cuda: twiddle must be a contiguous (nstacks, nblocks, log2 n, n/2, 2, 2) = (", x.size(1),
              ", nblocks >= 1, ", log2n, ", ", n / 2, ", 2, 2) tensor with x's device and dtype, got ",
              twiddle.device(), " ", twiddle.scalar_type(), " of sizes ", twiddle.sizes());
  TORCH_CHECK(reinterpret_cast<uintptr_t>(twiddle.data_ptr()) % static_cast<uintptr_t>(4 * twiddle.element_size()) == 0,
              "butterfly_cuda: the twiddle's data must start at a whole 2x2 matrix (",
              4 * twiddle.element_size(), "-byte aligned)");
  TORCH_CHECK(twiddle.size(1) <= INT32_MAX, "butterfly_cuda: nblocks must fit in 32 bits, got ", twiddle.size(1));
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor out = at::empty_like(x);
  if (out.numel() == 0) return out;
  const ButterflyDType dtype =
      st == at::kFloat ? ButterflyDType::kFloat32 : (st == at::kHalf ? ButterflyDType::kFloat16 : ButterflyDType::kBFloat16);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  const cudaError_t err =
      butterfly_forward_launch(twiddle.data_ptr(), x.data_ptr(), out.data_ptr(), x.size(0), x.size(1),
                               static_cast<int>(twiddle.size(1)), log2n, increasing_stride, dtype, stream);
  TORCH_CHECK(err == cudaSuccess, "butterfly_cuda: kernel launch failed for x of sizes ", x.sizes(), ", dtype ", st,
              ", nblocks ", twiddle.size(1), ": ", cudaGetErrorString(err));
  return out;
}
#endif

#ifdef FASTSPEC_WITH_CPU
// fastspec._C.cpu_isa([name]) -> str: the instruction set of the CPU kernels; with a name
// ("generic", "avx2", "avx512f", or "" for the best this CPU has) it switches to that one first.
PyObject* cpu_isa(PyObject* /*module*/, PyObject* args) {
  const char* name = nullptr;
  if (!PyArg_ParseTuple(args, "|s", &name)) return nullptr;
  if (name != nullptr && !fastspec::cpu_isa_set(name)) {
    PyErr_Format(PyExc_ValueError,
                 "cpu_isa: %R is not available in this build on this CPU; the names are 'generic', 'avx2', "
                 "'avx512f' and '' (the best available)",
                 PyTuple_GET_ITEM(args, 0));
    return nullptr;
  }
  return PyUnicode_FromString(fastspec::kCpuIsaNames[fastspec::cpu_isa_current()]);
}
#endif

}  // namespace
}  // namespace fastspec

#ifdef FASTSPEC_WITH_CUDA
TORCH_LIBRARY_IMPL(fastspec, CUDA, m) {
  m.impl("fwht_cuda", &fastspec::fwht_cuda);
  m.impl("fft_conv_cuda", &fastspec::fft_conv_cuda);
  m.impl("butterfly_cuda", &fastspec::butterfly_cuda);
}
#endif
#ifdef FASTSPEC_WITH_CPU
TORCH_LIBRARY_IMPL(fastspec, CPU, m) {
  m.impl("fwht_cpu", &fastspec::fwht_cpu);
  m.impl("selective_scan_cpu", &fastspec::selective_scan_cpu_op);
  m.impl("selective_scan_cpu_backward", &fastspec::selective_scan_cpu_backward_op);
  m.impl("selective_state_update_cpu", &fastspec::selective_state_update_cpu_op);
}
#endif

// `import fastspec._C` loads this library, which runs the registrations above; the Python module
// has cpu_isa (where the CPU kernels are built) and the flags with_cpu, with_openmp, with_cuda.
extern "C" {
PyObject* PyInit__C(void) {
#ifdef FASTSPEC_WITH_CPU
  static PyMethodDef methods[] = {
      {"cpu_isa", fastspec::cpu_isa, METH_VARARGS,
       "cpu_isa([name]) -> str: the instruction set of the CPU kernels (set it first if name is given)"},
      {nullptr, nullptr, 0, nullptr}};
#else
  static PyMethodDef* methods = nullptr;
#endif
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "fastspec compiled kernels; importing registers them with torch.library",  // doc
      -1,       // m_size
      methods,  // m_methods
      nullptr,  // m_slots
      nullptr,  // m_traverse
      nullptr,  // m_clear
      nullptr,  // m_free
  };
  PyObject* module = PyModule_Create(&module_def);
  // Which parts setup.py built: the CPU kernels (and with OpenMP), the CUDA kernels.
#ifdef FASTSPEC_WITH_CPU
  const int with_cpu = 1;
#else
  const int with_cpu = 0;
#endif
#ifdef _OPENMP
  const int with_openmp = with_cpu;
#else
  const int with_openmp = 0;
#endif
#ifdef FASTSPEC_WITH_CUDA
  const int with_cuda = 1;
#else
  const int with_cuda = 0;
#endif
  if (module != nullptr && (PyModule_AddIntConstant(module, "with_cpu", with_cpu) < 0 ||
                            PyModule_AddIntConstant(module, "with_openmp", with_openmp) < 0 ||
                            PyModule_AddIntConstant(module, "with_cuda", with_cuda) < 0)) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}
