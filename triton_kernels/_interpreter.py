"""Fixes for the Triton CPU interpreter, applied only when TRITON_INTERPRET=1, so that the
interpreter computes what the GPU computes and the same kernels are tested on the CPU.

Triton 3.6's interpreter stores bfloat16 as raw uint16 bits, and
- its ``tl.dot`` multiplies those bits as integers: widen bfloat16 operands to float32
  first (exact: the bits shifted left by 16);
- its ``tl.dot`` computes float32 exactly where the GPU's TF32 tensor cores read only the
  top 19 bits of each operand: drop the low 13 mantissa bits first (truncation, the
  worse of what the hardware may do), so tests see the error the GPU makes;
- it converts float32 to bfloat16 by truncation (its "round to nearest" adds the cut-off
  bit without carrying into the exponent), where the GPU rounds to nearest even;
- it passes a Python float argument on as a float64, where a GPU launch passes a float32:
  round it to float32, so a kernel that needs more than a float32 scale is caught here;
- it holds a scalar argument as a one-element 1-d array and turns it into a Python int
  with ``int(array)``, which numpy >= 2.4 refuses: a loop whose bound is an argument
  (``for start in range(0, T, BLOCK)``) fails. Take the element instead.
The fixes are harmless where the interpreter is already right (the TF32 one serves any
kernel with a float32 dot in the default precision).
"""
import numpy as np
import triton.language as tl
from triton._C.libtriton import ir
from triton.runtime import interpreter


def _widen_bf16(handle):
    if handle.dtype.scalar != tl.bfloat16:
        return handle
    return interpreter.TensorHandle((handle.data.astype(np.uint32) << 16).view(np.float32), tl.float32)


def _to_tf32(handle, input_precision):
    if input_precision != ir.INPUT_PRECISION.TF32 or handle.dtype.scalar != tl.float32:
        return handle
    bits = np.ascontiguousarray(handle.data, dtype=np.float32).view(np.uint32) & np.uint32(0xFFFFE000)
    return interpreter.TensorHandle(bits.view(np.float32), tl.float32)


def _f32_to_bf16_rtne(data: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(data, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(data), np.uint16(0x7FC0), rounded)


def patch() -> None:
    builder = interpreter.InterpreterBuilder
    if getattr(builder.create_dot, "_fastspec_patched", False):
        return
    original_dot = builder.create_dot
    original_convert = interpreter._convert_float

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        a, b = (_to_tf32(_widen_bf16(h), input_precision) for h in (a, b))
        return original_dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    def convert_float(data, input_dtype, output_dtype, rounding_mode):
        if input_dtype == tl.float32 and output_dtype == tl.bfloat16:
            return _f32_to_bf16_rtne(data)
        return original_convert(data, input_dtype, output_dtype, rounding_mode)

    original_cvt = interpreter._implicit_cvt

    def implicit_cvt(arg):
        if isinstance(arg, float):
            return tl.tensor(interpreter.TensorHandle(np.array([arg], dtype=np.float32), tl.float32), tl.float32)
        return original_cvt(arg)

    original_patch_tensor = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope):
        original_patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    create_dot._fastspec_patched = True
    builder.create_dot = create_dot
    interpreter._convert_float = convert_float
    interpreter._implicit_cvt = implicit_cvt
    interpreter._patch_lang_tensor = patch_lang_tensor
