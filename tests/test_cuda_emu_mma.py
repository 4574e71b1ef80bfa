"""The emulated warp matrix multiply-accumulate (tests/cuda_emu_include/cuda_emu.h,
cuda_emu::mma_m16n8k16, reached through csrc/common/warp_mma.h) against float64 matmuls.

The test kernel builds its fragments from the PTX ISA's layout for mma.m16n8k16 with
.f16/.bf16 multiplicands and .f32 accumulators (9.7.14.5.8), written out here independently
of the emulator's tables, runs a chain of products per warp, and stores D the same way: an
element in the wrong place changes the result. Exact integer data check the layout bit for
bit; random data check the sum within the tensor cores' error (exact products, addends
truncated to 24 bits of the largest, the sum truncated toward zero). A warp with a lane
that never reaches the instruction stops the emulator ("deadlock"), as it would hang a GPU.
"""
import ctypes
import subprocess
import sys

import pytest
import torch

import cuda_emu

KERNEL = r"""
#include "common/warp_mma.h"
#include <cuda_runtime.h>

// Per warp w: D_w = sum_r A_{w,r} B_{w,r} + C_w. a: (warps, reps, 16, 16), b: (warps, reps, 16, 8),
// c, d: (warps, 16, 8), all row-major; a and b hold the 16-bit patterns of T.
// `skip_lane` >= 0: that lane of warp 0 returns before the instruction (must stop the emulator).
template <typename T>
__global__ void mma_chain(const uint16_t* a, const uint16_t* b, const float* c, float* d, int reps, int skip_lane) {
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  if (w == 0 && lane == skip_lane) return;
  const float* cw = c + w * 128;
  float acc[4] = {cw[g * 8 + 2 * t], cw[g * 8 + 2 * t + 1], cw[(g + 8) * 8 + 2 * t], cw[(g + 8) * 8 + 2 * t + 1]};
  for (int r = 0; r < reps; ++r) {
    const uint16_t* ar = a + (w * reps + r) * 256;
    const uint16_t* br = b + (w * reps + r) * 128;
    auto a_at = [&](int row, int col) { return uint32_t{ar[row * 16 + col]}; };
    auto b_at = [&](int row, int col) { return uint32_t{br[row * 8 + col]}; };
    const uint32_t af[4] = {a_at(g, 2 * t) | a_at(g, 2 * t + 1) << 16,
                            a_at(g + 8, 2 * t) | a_at(g + 8, 2 * t + 1) << 16,
                            a_at(g, 2 * t + 8) | a_at(g, 2 * t + 9) << 16,
                            a_at(g + 8, 2 * t + 8) | a_at(g + 8, 2 * t + 9) << 16};
    const uint32_t bf[2] = {b_at(2 * t, g) | b_at(2 * t + 1, g) << 16, b_at(2 * t + 8, g) | b_at(2 * t + 9, g) << 16};
    fastspec::mma_m16n8k16<T>(acc, af, bf);
  }
  float* dw = d + w * 128;
  dw[g * 8 + 2 * t] = acc[0];
  dw[g * 8 + 2 * t + 1] = acc[1];
  dw[(g + 8) * 8 + 2 * t] = acc[2];
  dw[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

extern "C" int mma_emulated(const void* a, const void* b, const float* c, float* d, int warps, int reps, int bf16,
                            int skip_lane) {
  const auto* a16 = static_cast<const uint16_t*>(a);
  const auto* b16 = static_cast<const uint16_t*>(b);
  if (bf16) {
    mma_chain<__nv_bfloat16><<<1, 32 * warps>>>(a16, b16, c, d, reps, skip_lane);
  } else {
    mma_chain<__half><<<1, 32 * warps>>>(a16, b16, c, d, reps, skip_lane);
  }
  return static_cast<int>(cudaGetLastError());
}
"""
_UNAVAILABLE = cuda_emu.unavailable_reason()
pytestmark = pytest.mark.skipif(_UNAVAILABLE is not None, reason=str(_UNAVAILABLE))
DTYPES = [torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def lib(request, tmp_path_factory):
    built = cuda_emu.build_cached(request, tmp_path_factory, [], cuda_emu.rewrite_for_host(KERNEL))
    built.mma_emulated.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 4
    cuda_emu.set_schedule(built, "parallel")
    return built


def _run(lib, a, b, c, skip_lane=-1):
    warps, reps = a.shape[:2]
    d = torch.full_like(c, float("nan"))
    rc = lib.mma_emulated(a.data_ptr(), b.data_ptr(), c.data_ptr(), d.data_ptr(), warps, reps,
                          int(a.dtype == torch.bfloat16), skip_lane)
    assert rc == 0
    return d


def _exact(a, b, c):
    return (a.double() @ b.double()).sum(1) + c.double()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_layout_exact_on_integers(lib, dtype):
    """Small integers: every product and sum is exact, so D must equal A·B + C bit for bit."""
    warps, reps = 2, 3
    a = torch.randint(-8, 9, (warps, reps, 16, 16)).to(dtype)
    b = torch.randint(-8, 9, (warps, reps, 16, 8)).to(dtype)
    c = torch.randint(-100, 101, (warps, 16, 8)).float()
    assert torch.equal(_run(lib, a, b, c).double(), _exact(a, b, c))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_random_within_tensor_core_error(lib, dtype):
    """Random data: 17 addends each truncated by less than 2^-23 of the largest, then the
    sum (at most 17 times the largest) truncated to float32; with every addend positive the
    result lies between zero and the exact sum, within 18 truncations of it."""
    warps, reps = 2, 1
    a = torch.randn(warps, reps, 16, 16).to(dtype)
    b = torch.randn(warps, reps, 16, 8).to(dtype)
    c = torch.randn(warps, 16, 8)
    d, exact = _run(lib, a, b, c).double(), _exact(a, b, c)
    largest = torch.maximum((a.double().abs().unsqueeze(-1) * b.double().abs().unsqueeze(-3)).amax(-2).sum(1),
                            c.double().abs())
    assert ((d - exact).abs() <= 34 * 2.0**-23 * largest).all()
    assert (d - exact).abs().max() > 0, "random data should not all be exact"
    pa, pb, pc = a.abs(), b.abs(), c.abs()
    dp, ep = _run(lib, pa, pb, pc).double(), _exact(pa, pb, pc)
    assert (dp <= ep).all() and ((ep - dp) <= 18 * 2.0**-23 * ep).all()


def test_every_lane_must_arrive(lib):
    """A lane of warp 0 skips the instruction: the emulator stops instead of computing with a
    stale fragment (threads one at a time, so the stop is immediate)."""
    script = (
        "import ctypes, sys, torch\n"
        f"lib = ctypes.CDLL({lib._name!r})\n"
        "lib.mma_emulated.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 4\n"
        "lib.cuda_emu_set_schedule(1)\n"
        "a = torch.zeros(1, 1, 16, 16, dtype=torch.float16); b = torch.zeros(1, 1, 16, 8, dtype=torch.float16)\n"
        "c = torch.zeros(1, 16, 8); d = torch.zeros(1, 16, 8)\n"
        "lib.mma_emulated(a.data_ptr(), b.data_ptr(), c.data_ptr(), d.data_ptr(), 1, 1, 0, 5)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "deadlock" in done.stderr, done.stderr[-2000:]
