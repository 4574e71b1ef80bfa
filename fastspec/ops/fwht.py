"""Fast Walsh–Hadamard transform: public function, custom op, autograd, torch backend.

``fwht(x, scale)`` = ``(x @ H_n) * scale`` along the last dim, ``H_n`` as in
:mod:`fastspec.hadamard` (Sylvester order for n = 2^k, ``H_m ⊗ H_(2^k)`` otherwise).
H_n is symmetric, so the gradient is ``fwht(grad, scale)``: the backward is the op itself,
and double backward and torch.compile come with it.
"""
from __future__ import annotations

import functools
import numbers

import torch

from fastspec import _backend
from fastspec.hadamard import MAX_N, check_size, hadamard_matrix

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
CUDA_MAX_N = 2**15
"""The CUDA C++ kernel covers n = 2^k up to this, float16/bfloat16/float32."""

# backend="auto" on a CUDA tensor: the first backend of the list that supports the call.
# Measured on an H200 (bench/results/fwht-h200.json, 2026-11-27, 16·2048 rows): the CUDA
# kernel, whose tests passed there, is 2.1-6.4x faster than Triton at every n = 2^8..2^15
# in float16, bfloat16 and float32; Triton is 1.0-3.5x faster than torch above 2^15.
AUTO_CUDA = ((CUDA_MAX_N, ("cuda", "triton", "torch")), (MAX_N, ("triton", "torch")))
"""(largest n, backends in order of preference) for CUDA tensors; CPU tensors use torch."""


# ---------------------------------------------------------------------------- torch backend


@functools.lru_cache(maxsize=128)
def _factor(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return hadamard_matrix(size, dtype=dtype, device=device)


def _torch_factors(m: int, p: int) -> list[int]:
    """Kronecker factors of H_(m·p), most significant first: H_m, then powers of two of
    at most 64 (a few small matrix products beat log2(n) elementwise passes)."""
    k = p.bit_length() - 1
    pieces = -(-k // 6)
    bits = [k // pieces + (i < k % pieces) for i in range(pieces)] if k else []
    return ([m] if m > 1 else []) + [2**b for b in bits]


def fwht_torch(x: torch.Tensor, scale: float) -> torch.Tensor:
    """The torch backend: one batched matmul per Kronecker factor of H_n.

    Each step contracts the leading factor axis and moves it last, so after all factors
    the axes are back in order. float16/bfloat16 are computed in float32.
    """
    n = x.shape[-1]
    m, p = check_size(n)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    work = x.reshape(-1, n).to(acc)
    rows = work.shape[0]
    sizes = _torch_factors(m, p)
    if not sizes:
        return (work * scale).to(x.dtype).reshape(x.shape)
    for i, size in enumerate(sizes):
        mat = _factor(size, acc, x.device)
        if i == len(sizes) - 1 and scale != 1.0:
            mat = mat * scale
        work = work.reshape(rows, size, n // size).transpose(1, 2) @ mat
    return work.reshape(x.shape).to(x.dtype)


def _fwht_triton(x: torch.Tensor, scale: float) -> torch.Tensor:
    from fastspec.triton_kernels import fwht as kernels

    return kernels.fwht(x.contiguous(), scale, *check_size(x.shape[-1]))


def _fwht_cuda(x: torch.Tensor, scale: float) -> torch.Tensor:
    import fastspec._C  # noqa: F401  (registers the CUDA kernel of fastspec::fwht_cuda)

    return torch.ops.fastspec.fwht_cuda(x.contiguous(), scale)


_IMPLS = {"torch": fwht_torch, "triton": _fwht_triton, "cuda": _fwht_cuda}


# ---------------------------------------------------------------------------- validation


def _check_backend_supports(backend: str, dtype: torch.dtype, n: int) -> str | None:
    """None if ``backend`` handles this dtype and length, else why not."""
    if backend == "cuda":
        if dtype == torch.float64:
            return "the cuda backend takes float16, bfloat16 and float32 (use backend='torch' for float64)"
        if n & (n - 1) or n > CUDA_MAX_N:
            return f"the cuda backend takes n = 2^k up to {CUDA_MAX_N}, got n={n}"
    return None


def _validate(x, scale, backend: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"fwht: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"fwht: x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError("fwht: x must have at least one dimension (the transform runs along the last), got a 0-dim tensor")
    n = int(x.shape[-1])  # a symbolic size (dynamic shapes) is specialised: kernels depend on n
    check_size(n)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"fwht: scale must be a Python float, got {type(scale).__name__}")
    if backend in _IMPLS:
        reason = _check_backend_supports(backend, x.dtype, n)
        if reason:
            raise ValueError(f"fwht: {reason}")


def _auto_choice(device: torch.device, dtype: torch.dtype, n: int) -> str:
    if device.type != "cuda" or dtype == torch.float64:
        return "torch"
    for max_n, order in AUTO_CUDA:
        if n <= max_n:
            for name in order:
                if _backend.device_ok(name, device) is None and _check_backend_supports(name, dtype, n) is None:
                    return name
    return "torch"


@torch.compiler.assume_constant_result
def _choose_backend(backend: str, device: torch.device, dtype: torch.dtype, n: int) -> str:
    return _backend.resolve("fwht", backend, device, lambda: _auto_choice(device, dtype, n))


# ---------------------------------------------------------------------------- the op


@torch.library.custom_op("fastspec::fwht", mutates_args=())
def fwht_op(x: torch.Tensor, scale: float, backend: str) -> torch.Tensor:
    """Registered op: (x @ H_n) * scale with a concrete backend ('torch'|'triton'|'cuda')."""
    _validate(x, scale, backend)
    return _IMPLS[backend](x, scale)


@fwht_op.register_fake
def _(x, scale, backend):
    _validate(x, scale, backend)
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    _, ctx.scale, ctx.backend = inputs


def _backward(ctx, grad):
    return fwht_op(grad, ctx.scale, ctx.backend), None, None


fwht_op.register_autograd(_backward, setup_context=_setup_context)

torch.library.define("fastspec::fwht_cuda", "(Tensor x, float scale) -> Tensor")


@torch.library.register_fake("fastspec::fwht_cuda")
def _(x, scale):
    return x.new_empty(x.shape)


def fwht(x: torch.Tensor, scale: float = 1.0, *, backend: str = "auto") -> torch.Tensor:
    """Fast Walsh–Hadamard transform along the last dim: ``(x @ H_n) * scale``.

    Drop-in for ``fast_hadamard_transform.hadamard_transform(x, scale)``.

    x: (..., n), any strides; float16, bfloat16 or float32 on every backend, float64 on
    torch and triton. n = 2^k (1 ≤ n ≤ 2^20) or n = m·2^k for m in {12, 20, 28, 40}
    (``fastspec.hadamard_matrix(n)`` is the matrix). Returns a contiguous tensor of
    x's shape and dtype; half precision is accumulated in float32.
    scale: Python float. backend: 'auto' | 'torch' | 'triton' | 'cuda'
    (env FASTSPEC_BACKEND replaces 'auto').
    Raises TypeError for non-float or non-tensor input, ValueError for an unsupported n
    (naming the nearest supported sizes), RuntimeError for a named backend that cannot
    run here.
    """
    _validate(x, scale, "auto")
    chosen = _choose_backend(backend, x.device, x.dtype, int(x.shape[-1]))
    return fwht_op(x, float(scale), chosen)
