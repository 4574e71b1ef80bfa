"""Fast Walsh–Hadamard transform: public function, custom op, autograd, torch backend.

``fwht(x, scale)`` = ``(x @ H_n) * scale`` along the last dim, ``H_n = H_m ⊗ H_(2^k)`` as in
:mod:`fastspec.hadamard`; ``transpose=True`` multiplies by ``H_nᵀ``. The gradient of
``x @ H`` is ``grad @ Hᵀ``: the backward is the op with ``transpose`` flipped, so double
backward and torch.compile come with it. Where H_n is symmetric the two are equal.

The registered op also takes a named base block (``register_block``), so that another
library's matrices (``fastspec.compat``) run on the same kernels.
"""
from __future__ import annotations

import dataclasses
import functools
import numbers

import torch

from fastspec import _backend
from fastspec.hadamard import MAX_BASE_ORDER, MAX_N, check_size, hadamard_block, sylvester

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
CUDA_MAX_N = 2**15
"""The CUDA C++ kernel covers n = 2^k up to this, float16/bfloat16/float32."""
CPU_MAX_BLOCK = 1024
"""The C++ CPU kernel takes base blocks of order up to this (every n, every dtype)."""

# backend="auto" on a CUDA tensor: the first backend of the list that supports the call.
# Measured on an H200 (bench/results/fwht-h200.json, 2026-11-27, 16·2048 rows): the CUDA
# kernel, whose tests passed there, is 2.1-6.4x faster than Triton at every n = 2^8..2^15
# in float16, bfloat16 and float32; Triton is 1.0-3.5x faster than torch above 2^15.
AUTO_CUDA = ((CUDA_MAX_N, ("cuda", "triton", "torch")), (MAX_N, ("triton", "torch")))
"""(largest n, backends in order of preference) for CUDA tensors."""
AUTO_CPU = ((40, ("cpu", "torch")), (MAX_BASE_ORDER, ("torch",)))
"""Backends for CPU tensors by the largest base order m they serve, in order of preference: the
C++ kernel is 4.6-10.5x faster than torch at every float32 power of two of
bench/results/fwht-cpu.json (2 threads, 256 and 4096 rows, n = 2^10..2^14). Its base block is
m float64 multiply-adds an element where torch's is a BLAS matmul; on a quiet machine
(2026-11-28, 2 threads, float32) it was 1.2-4.5x faster at m = 12..40 with 256 rows (1.6-1.9x
at 2304 = 36·64 with 256 and 1024 rows), and torch 1.7-4x faster at m = 76 and above with
16-1024 rows (bench/results/fwht-cpu-widths.json)."""


# ---------------------------------------------------------------------------- base blocks

_NAMED_BLOCKS: dict[str, torch.Tensor] = {}


def register_block(name: str, matrix: torch.Tensor) -> None:
    """Register a Hadamard matrix of order m (±1 entries, H Hᵀ = m·I) as the base block
    ``name``: the op's ``block=name`` then computes ``x @ (H ⊗ H_(2^k))`` for n = m·2^k."""
    h = torch.as_tensor(matrix, dtype=torch.float64).cpu()
    m = h.shape[0] if h.dim() == 2 else 0
    if not name or h.shape != (m, m) or m < 2:
        raise ValueError(f"register_block: need a non-empty name and a square matrix of order >= 2, got {name!r}, {tuple(h.shape)}")
    if not bool(((h == 1) | (h == -1)).all()) or not torch.equal(h @ h.T, m * torch.eye(m, dtype=torch.float64)):
        raise ValueError(f"register_block: {name!r} is not a Hadamard matrix (±1 entries, H Hᵀ = {m}·I)")
    if name in _NAMED_BLOCKS and not torch.equal(_NAMED_BLOCKS[name], h):
        raise ValueError(f"register_block: {name!r} is already registered with another matrix")
    _NAMED_BLOCKS[name] = h


def _factorisation(n: int, block: str) -> tuple[int, int]:
    """(m, p) with n = m·p, p a power of two: the canonical one, or the named block's."""
    if not block:
        return check_size(n)
    if block not in _NAMED_BLOCKS:
        raise ValueError(f"fwht: unknown block {block!r}; registered: {sorted(_NAMED_BLOCKS)}")
    m = _NAMED_BLOCKS[block].shape[0]
    p = n // m
    if n % m or p & (p - 1) or n > MAX_N:
        raise ValueError(f"fwht: block {block!r} has order {m}: n must be {m}·2^k up to {MAX_N}, got n={n}")
    return m, p


@dataclasses.dataclass(frozen=True)
class Base:
    """The base block B of a call, x @ (B ⊗ H_p): order m (1: none), the named block
    (``""``: canonical for the length) and whether it is transposed. Hashable, so kernels
    cache what they derive from it."""

    m: int
    block: str = ""
    transpose: bool = False

    def matrix(self, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """B as an (m, m) tensor (cached per dtype and device)."""
        return _base_matrix(self, dtype, torch.device(device or "cpu"))


@functools.lru_cache(maxsize=256)
def _base_matrix(base: Base, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    h = _NAMED_BLOCKS[base.block] if base.block else hadamard_block(base.m)
    return (h.T if base.transpose else h).contiguous().to(dtype=dtype, device=device)


# ---------------------------------------------------------------------------- torch backend


def _torch_factors(p: int) -> list[int]:
    """Sylvester factors of H_p, most significant first, each at most 16 (a few small
    matrix products beat log2(p) elementwise passes; longer float32 sums lose precision)."""
    k = p.bit_length() - 1
    pieces = -(-k // 4)
    return [2 ** (k // pieces + (i < k % pieces)) for i in range(pieces)] if k else []


def _exact_product(a: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
    """a @ mat for float32 a and a ±1 mat, with the error of about one rounding: a is
    split into its leading 8 significant bits (whose sums stay exact in float32) and the
    rest (2^-8 smaller, so its rounding errors are too)."""
    hi = (a.view(torch.int32) & -65536).view(torch.float32)
    lo = torch.where(hi == a, 0.0, a - hi)  # where: ±inf stays in hi (inf - inf is NaN)
    return hi @ mat + lo @ mat


def fwht_torch(x: torch.Tensor, scale: float, p: int, base: Base) -> torch.Tensor:
    """The torch backend: one batched matmul per Kronecker factor of B ⊗ H_p.

    Each step contracts the leading factor axis and moves it last, so after all factors
    the axes are back in order. float16/bfloat16 are computed in float32; for float32
    the product with B (sums of up to 1024 terms) is split in two (``_exact_product``).
    """
    n = x.shape[-1]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    work = x.reshape(-1, n).to(acc)
    rows = work.shape[0]
    mats = [base.matrix(acc, x.device)] if base.m > 1 else []
    mats += [_sylvester(size, acc, x.device) for size in _torch_factors(p)]
    for i, mat in enumerate(mats):
        size = mat.shape[0]
        exact = i == 0 and base.m > 1 and x.dtype == torch.float32  # the long sums: B's
        work = (_exact_product if exact else torch.matmul)(work.reshape(rows, size, n // size).transpose(1, 2), mat)
    return (work * scale).reshape(x.shape).to(x.dtype)


@functools.lru_cache(maxsize=64)
def _sylvester(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return sylvester(size).to(dtype=dtype, device=device)


def _fwht_triton(x, scale, p, base):
    from fastspec.triton_kernels import fwht as kernels

    return kernels.fwht(x.contiguous(), scale, p, base)


def _fwht_cuda(x, scale, p, base):
    import fastspec._C  # noqa: F401  (registers the CUDA kernel of fastspec::fwht_cuda)

    return torch.ops.fastspec.fwht_cuda(x.contiguous(), scale)


def _fwht_cpu(x, scale, p, base):
    return _cpu_kernel()(x.contiguous(), scale, base.matrix(torch.float64) if base.m > 1 else None)


@functools.cache
def _cpu_kernel():
    import fastspec._C  # noqa: F401  (registers the CPU kernel of fastspec::fwht_cpu)

    return torch.ops.fastspec.fwht_cpu.default


_IMPLS = {"torch": fwht_torch, "triton": _fwht_triton, "cuda": _fwht_cuda, "cpu": _fwht_cpu}


# ---------------------------------------------------------------------------- validation


def _check_backend_supports(backend: str, dtype: torch.dtype, n: int, m: int) -> str | None:
    """None if ``backend`` handles this dtype and length (n = m·2^k), else why not."""
    if backend == "cuda":
        if dtype == torch.float64:
            return "the cuda backend takes float16, bfloat16 and float32 (use backend='torch' for float64)"
        if m != 1 or n > CUDA_MAX_N:
            return f"the cuda backend takes n = 2^k up to {CUDA_MAX_N}, got n={n}"
    if backend == "cpu" and m > CPU_MAX_BLOCK:
        return f"the cpu backend takes base blocks of order up to {CPU_MAX_BLOCK}, got order {m} (n={n})"
    return None


def _validate(x, scale, transpose, block: str, backend: str) -> tuple[int, int]:
    """Checks every argument before any kernel sees it; returns (m, p)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"fwht: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"fwht: x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError("fwht: x must have at least one dimension (the transform runs along the last), got a 0-dim tensor")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"fwht: scale must be a Python float, got {type(scale).__name__}")
    if not isinstance(transpose, bool):
        raise TypeError(f"fwht: transpose must be a bool, got {type(transpose).__name__}")
    n = int(x.shape[-1])  # a symbolic size (dynamic shapes) is specialised: kernels depend on n
    m, p = _factorisation(n, block)
    _raise_if_unsupported(backend, x.dtype, n, m)
    return m, p


def _raise_if_unsupported(backend: str, dtype: torch.dtype, n: int, m: int) -> None:
    """ValueError when a concrete backend does not take this size and dtype."""
    reason = _check_backend_supports(backend, dtype, n, m) if backend in _IMPLS else None
    if reason:
        raise ValueError(f"fwht: {reason}")


def _auto_choice(device: torch.device, dtype: torch.dtype, n: int, m: int) -> str:
    if device.type == "cpu":
        order = next((order for max_m, order in AUTO_CPU if m <= max_m), ("torch",))
    elif device.type != "cuda" or dtype == torch.float64:
        return "torch"
    else:
        order = next(order for max_n, order in AUTO_CUDA if n <= max_n)
    for name in order:
        if _backend.device_ok(name, device) is None and _check_backend_supports(name, dtype, n, m) is None:
            return name
    return "torch"


@torch.compiler.assume_constant_result
def choose_backend(backend: str, device: torch.device, dtype: torch.dtype, n: int, m: int) -> str:
    """The concrete backend for a call (``auto`` resolved through the table above)."""
    return _backend.resolve("fwht", backend, device, lambda: _auto_choice(device, dtype, n, m))


# ---------------------------------------------------------------------------- the op


@torch.library.custom_op("fastspec::fwht", mutates_args=())
def fwht_op(x: torch.Tensor, scale: float, transpose: bool, block: str, backend: str) -> torch.Tensor:
    """Registered op: (x @ (B ⊗ H_p)) * scale, B the canonical or named (``block``) base
    block, transposed if ``transpose``, with a concrete backend ('torch'|'triton'|'cuda'|'cpu')."""
    m, p = _validate(x, scale, transpose, block, backend)
    return _IMPLS[backend](x, scale, p, Base(m, block, transpose))


@fwht_op.register_fake
def _(x, scale, transpose, block, backend):
    _validate(x, scale, transpose, block, backend)
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    _, ctx.scale, ctx.transpose, ctx.block, ctx.backend = inputs


def _backward(ctx, grad):
    return fwht_op(grad, ctx.scale, not ctx.transpose, ctx.block, ctx.backend), None, None, None, None


fwht_op.register_autograd(_backward, setup_context=_setup_context)

torch.library.define("fastspec::fwht_cuda", "(Tensor x, float scale) -> Tensor")


@torch.library.register_fake("fastspec::fwht_cuda")
def _(x, scale):
    return x.new_empty(x.shape)


# x: (..., n) contiguous, n = m·2^k; block: the (m, m) float64 base block B (None: m = 1).
torch.library.define("fastspec::fwht_cpu", "(Tensor x, float scale, Tensor? block) -> Tensor")


@torch.library.register_fake("fastspec::fwht_cpu")
def _(x, scale, block):
    return x.new_empty(x.shape)


def fwht(x: torch.Tensor, scale: float = 1.0, *, transpose: bool = False, backend: str = "auto") -> torch.Tensor:
    """Fast Walsh–Hadamard transform along the last dim: ``(x @ H_n) * scale``, or
    ``(x @ H_nᵀ) * scale`` with ``transpose=True``.

    x: (..., n), any strides; float16, bfloat16 or float32 on every backend, float64 on
    torch, triton and cpu. n: any of ``fastspec.supported_sizes()``, i.e. 2^k (1 ≤ n ≤ 2^20)
    and m·2^k for every base order m the library builds (``fastspec.hadamard_matrix(n)``
    is H_n). Returns a contiguous tensor of x's shape and dtype; half precision is
    accumulated in float32. The inverse is ``fwht(y, 1 / (n·scale), transpose=not
    transpose)``; where H_n is symmetric (n = 2^k and Paley II bases) transpose changes nothing.
    scale: Python float. backend: 'auto' | 'torch' | 'triton' | 'cuda' (CUDA tensors) | 'cpu'
    (CPU tensors) (env FASTSPEC_BACKEND replaces 'auto').
    Raises TypeError for non-float or non-tensor input, ValueError for an unsupported n
    (naming the nearest supported sizes), RuntimeError for a named backend that cannot
    run here.
    """
    m, p = _validate(x, scale, transpose, "", "auto")
    chosen = choose_backend(backend, x.device, x.dtype, int(x.shape[-1]), m)
    if _backend.eager_untracked(x):  # the op's body, without its dispatch
        _raise_if_unsupported(chosen, x.dtype, int(x.shape[-1]), m)
        return _IMPLS[chosen](x, float(scale), p, Base(m, "", transpose))
    return fwht_op(x, float(scale), transpose, "", chosen)
