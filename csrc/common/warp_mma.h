// Warp-level tensor-core matrix multiply-accumulate: mma.sync.aligned.m16n8k16.row.col with
// float16 or bfloat16 multiplicands and float32 accumulators (sm_80 and newer), for any
// kernel of fastspec. Under the CPU emulator (tests/cuda_emu_include, which defines
// FASTSPEC_CUDA_EMU) the same call runs cuda_emu::mma_m16n8k16.
//
// d = A·B + d for A 16 x 16 (row-major), B 16 x 8 (column-major), D 16 x 8, the whole warp
// taking part. Per lane (g = lane / 4, t = lane % 4), PTX ISA 9.7.14.5.8; a 32-bit register
// holds two elements, the lower index in its low 16 bits (pack_pair):
//   A  a[r] = elements (2r, 2r+1): a[0] (g, 2t..2t+1)   a[1] (g+8, 2t..2t+1)
//                                  a[2] (g, 2t+8..2t+9) a[3] (g+8, 2t+8..2t+9)
//   B  b[r]: b[0] rows 2t..2t+1 of column g, b[1] rows 2t+8..2t+9 of column g
//   D  d[0], d[1] (g, 2t), (g, 2t+1);  d[2], d[3] (g+8, 2t), (g+8, 2t+1)
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace fastspec {

// Two 16-bit elements in one register, `lo` (the lower matrix index) in the low half.
__device__ __forceinline__ uint32_t pack_pair(__nv_bfloat16 lo, __nv_bfloat16 hi) {
  return uint32_t{__bfloat16_as_ushort(lo)} | (uint32_t{__bfloat16_as_ushort(hi)} << 16);
}
__device__ __forceinline__ uint32_t pack_pair(__half lo, __half hi) {
  return uint32_t{__half_as_ushort(lo)} | (uint32_t{__half_as_ushort(hi)} << 16);
}

// d += A·B, T = __nv_bfloat16 or __half.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  static_assert(sizeof(T) == 2, "float16 or bfloat16 multiplicands");
#if defined(FASTSPEC_CUDA_EMU)
  cuda_emu::mma_m16n8k16<T>(d, a, b, d);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // no such instruction before sm_80; launchers check the device first
#else
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#endif
}

}  // namespace fastspec
