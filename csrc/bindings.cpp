// fastspec._C: the CUDA implementations of fastspec ops (the only file that includes torch).
//
// The op schemas are defined on the Python side (torch.library.define in fastspec/ops/*.py);
// importing fastspec._C registers the CUDA kernels for them.
#include <Python.h>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

#include "fwht/fwht.h"

namespace fastspec {
namespace {

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

}  // namespace
}  // namespace fastspec

TORCH_LIBRARY_IMPL(fastspec, CUDA, m) { m.impl("fwht_cuda", &fastspec::fwht_cuda); }

// `import fastspec._C` loads this library, which runs the registrations above; the Python
// module itself is empty.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "fastspec CUDA kernels; importing registers them with torch.library",  // doc
      -1,       // m_size
      nullptr,  // m_methods
      nullptr,  // m_slots
      nullptr,  // m_traverse
      nullptr,  // m_clear
      nullptr,  // m_free
  };
  return PyModule_Create(&module_def);
}
}
