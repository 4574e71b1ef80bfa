"""State-space-model ops: public functions, validation, custom ops, autograd, torch backend.

``linear_scan(gates, tokens, initial, reverse)``: x_t = gates_t·x_{t−1} + tokens_t along the
last dim of (B, C, T) (reverse: x_t = gates_t·x_{t+1} + tokens_t), real or complex. Its
gradient is a scan the other way: with g = ∂loss/∂x and the gates shifted by one step,
λ_t = g_t + conj(gates_{t+1})·λ_{t+1}; then d tokens = λ, d gates_t = λ_t·conj(x_{t−1}) and
d initial = conj(gates_0)·λ_0 (PyTorch's convention for complex gradients). The backward
calls the op again, so double backward and torch.compile come with it.

Backend contract (linear_scan): ``_LINEAR_SCAN[backend](gates, tokens, initial, reverse)``
gets validated tensors (any strides) and returns x, contiguous, in tokens' dtype; half
precision is scanned in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastspec import _backend

REAL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
SCAN_DTYPES = REAL_DTYPES + (torch.complex64, torch.complex128)
HALF = (torch.float16, torch.bfloat16)
TORCH_CHUNK = 64
"""The torch backend scans chunks of this many steps by doubling (Hillis–Steele: log2 of it
passes over the data), then the chunk ends (recursively), then one pass adds each chunk's
carry: about 8 passes in all, never a Python loop over time steps."""

# backend="auto" on a CUDA tensor: torch until the Triton kernels have passed their tests
# on a GPU (then measured crossovers go here); CPU tensors use torch.
AUTO_CUDA = ("torch",)


def _acc(dtype: torch.dtype) -> torch.dtype:
    """The dtype a scan runs in: float32 for half precision, else the dtype itself."""
    return torch.float32 if dtype in HALF else dtype


# ---------------------------------------------------------------------------- torch backend


def scan_torch(a: torch.Tensor, b: torch.Tensor, x0: torch.Tensor | None = None) -> torch.Tensor:
    """x_t = a_t·x_{t−1} + b_t along the last dim of (..., T), x_{−1} = x0 (..., ) or 0;
    a and b broadcast to each other and are computed in their (common) dtype. Plain
    differentiable torch ops, vectorised over everything but log2(TORCH_CHUNK) doubling steps."""
    a, b = torch.broadcast_tensors(a, b)
    if x0 is not None:
        b = torch.cat([torch.addcmul(b[..., :1], a[..., :1], x0[..., None]), b[..., 1:]], dim=-1)
    T = b.shape[-1]
    K = min(T, TORCH_CHUNK)
    n = -(-T // K)
    if n * K != T:  # pad with identity steps (a = 1, b = 0)
        a = torch.cat([a, a.new_ones(*a.shape[:-1], n * K - T)], dim=-1)
        b = torch.cat([b, b.new_zeros(*b.shape[:-1], n * K - T)], dim=-1)
    a, b = a.reshape(*a.shape[:-1], n, K), b.reshape(*b.shape[:-1], n, K)
    d = 1
    while d < K:  # after the step with offset d, (a, b) at t compose the last 2d steps up to t
        b = torch.cat([b[..., :d], torch.addcmul(b[..., d:], a[..., d:], b[..., :-d])], dim=-1)
        if n > 1 or 2 * d < K:
            a = torch.cat([a[..., :d], a[..., d:] * a[..., :-d]], dim=-1)
        d *= 2
    if n > 1:  # x at each chunk's end, then each chunk gets the carry of the one before
        ends = scan_torch(a[..., -1], b[..., -1])
        b = torch.cat([b[..., :1, :], torch.addcmul(b[..., 1:, :], a[..., 1:, :], ends[..., :-1, None])], dim=-2)
    return b.reshape(*b.shape[:-2], n * K)[..., :T]


def _linear_scan_torch(gates, tokens, initial, reverse):
    acc = _acc(tokens.dtype)
    a, b = gates.to(acc), tokens.to(acc)
    x0 = None if initial is None else initial.to(acc)
    if reverse:
        return scan_torch(a.flip(-1), b.flip(-1), x0).flip(-1).to(tokens.dtype).contiguous()
    return scan_torch(a, b, x0).to(tokens.dtype).contiguous()


def _linear_scan_triton(gates, tokens, initial, reverse):
    from fastspec.triton_kernels import ssm as kernels

    return kernels.linear_scan(gates, tokens, initial, reverse)


_LINEAR_SCAN = {"torch": _linear_scan_torch, "triton": _linear_scan_triton}


# ---------------------------------------------------------------------------- validation


def _check_tensor(op: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def _dtype_names(dtypes) -> str:
    names = [str(d).removeprefix("torch.") for d in dtypes]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def _check_same_device(op: str, first: str, ref: torch.Tensor, **others) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{op}: every tensor must be on the device of {first} ({ref.device}); {name} is on {t.device}")


def _validate_linear_scan(gates, tokens, initial, reverse) -> None:
    op = "linear_scan"
    _check_tensor(op, "gates", gates)
    _check_tensor(op, "tokens", tokens)
    if tokens.dtype not in SCAN_DTYPES:
        raise TypeError(f"{op}: tokens must be {_dtype_names(SCAN_DTYPES)}, got {tokens.dtype}")
    if gates.dtype != tokens.dtype:
        raise TypeError(f"{op}: gates must have tokens' dtype {tokens.dtype}, got {gates.dtype}")
    if tokens.dim() != 3 or tokens.shape[-1] < 1:
        raise ValueError(f"{op}: tokens must be (B, C, T) with T >= 1, got shape {tuple(tokens.shape)}")
    if gates.shape != tokens.shape:
        raise ValueError(f"{op}: gates must have tokens' shape {tuple(tokens.shape)}, got {tuple(gates.shape)}")
    if initial is not None:
        _check_tensor(op, "initial", initial)
        allowed = (tokens.dtype, _acc(tokens.dtype))
        if initial.dtype not in allowed:
            raise TypeError(f"{op}: initial must be {_dtype_names(dict.fromkeys(allowed))} for tokens of "
                            f"{tokens.dtype}, got {initial.dtype}")
        if initial.shape != tokens.shape[:2]:
            raise ValueError(f"{op}: initial must be (B, C) = {tuple(tokens.shape[:2])}, got {tuple(initial.shape)}")
    if not isinstance(reverse, bool):
        raise TypeError(f"{op}: reverse must be a bool, got {type(reverse).__name__}")
    _check_same_device(op, "tokens", tokens, gates=gates, initial=initial)


def _check_backend(op: str, backend: str, table: dict) -> None:
    if backend not in table:
        raise NotImplementedError(f"{op}: the {backend!r} backend has no implementation of this op "
                                  f"(implemented: {', '.join(table)})")


def _auto_choice(device: torch.device, table: dict) -> str:
    if device.type != "cuda":
        return "torch"
    return next((name for name in AUTO_CUDA if name in table and _backend.device_ok(name, device) is None), "torch")


@torch.compiler.assume_constant_result
def choose_backend(op: str, backend: str, device: torch.device) -> str:
    """The concrete backend for a call of ``op`` (``auto`` resolved through AUTO_CUDA)."""
    table = {"linear_scan": _LINEAR_SCAN}[op]
    return _backend.resolve(op, backend, device, lambda: _auto_choice(device, table))


# ---------------------------------------------------------------------------- linear_scan op


@torch.library.custom_op("fastspec::linear_scan", mutates_args=())
def linear_scan_op(gates: torch.Tensor, tokens: torch.Tensor, initial: torch.Tensor | None, reverse: bool,
                   backend: str) -> torch.Tensor:
    """Registered op: the linear recurrence on a concrete backend ('torch' | 'triton')."""
    _validate_linear_scan(gates, tokens, initial, reverse)
    _check_backend("linear_scan", backend, _LINEAR_SCAN)
    return _LINEAR_SCAN[backend](gates, tokens, initial, reverse)


@linear_scan_op.register_fake
def _(gates, tokens, initial, reverse, backend):
    _validate_linear_scan(gates, tokens, initial, reverse)
    return torch.empty_like(tokens, memory_format=torch.contiguous_format)


def _shift(t: torch.Tensor, reverse: bool, fill: torch.Tensor | None = None) -> torch.Tensor:
    """t moved one step along the scan (reverse: backwards): out_t = t_{t−1} (t_{t+1}), with
    ``fill`` (..., ) or zeros entering at the open end."""
    edge = torch.zeros_like(t[..., :1]) if fill is None else fill[..., None].to(t.dtype)
    return torch.cat([t[..., 1:], edge], -1) if reverse else torch.cat([edge, t[..., :-1]], -1)


def _linear_scan_setup(ctx, inputs, output):
    gates, tokens, initial, ctx.reverse, ctx.backend = inputs
    ctx.half = tokens.dtype in HALF
    # half precision: x is recomputed in float32 for the gradient (the output is rounded)
    ctx.save_for_backward(gates, tokens if ctx.half else None, initial, None if ctx.half else output)


def _linear_scan_backward(ctx, grad):
    gates, tokens, initial, x = ctx.saved_tensors
    need_gates, _, need_initial = ctx.needs_input_grad[:3]
    acc = _acc(grad.dtype)
    # conj_physical: a lazy conj() bit is lost under AOTAutograd's dispatch (see fftconv.py)
    a = torch.conj_physical(gates.to(acc))
    if ctx.half and need_gates:
        x = linear_scan_op(gates.to(acc), tokens.to(acc), None if initial is None else initial.to(acc), ctx.reverse,
                           ctx.backend)
    # λ runs the other way, with each step's gate the gate of the step after it
    lam = linear_scan_op(_shift(a, not ctx.reverse), grad.to(acc), None, not ctx.reverse, ctx.backend)
    d_gates = (lam * torch.conj_physical(_shift(x.to(acc), ctx.reverse, initial))).to(gates.dtype) if need_gates else None
    d_initial = None
    if need_initial:
        end = -1 if ctx.reverse else 0
        d_initial = (a[..., end] * lam[..., end]).to(initial.dtype)
    return d_gates, lam.to(grad.dtype), d_initial, None, None


linear_scan_op.register_autograd(_linear_scan_backward, setup_context=_linear_scan_setup)


def linear_scan(gates: torch.Tensor, tokens: torch.Tensor, initial: torch.Tensor | None = None, *,
                reverse: bool = False, backend: str = "auto") -> torch.Tensor:
    """The first-order linear recurrence ``x_t = gates_t·x_{t−1} + tokens_t`` along the last
    dim (``x_{−1} = initial``, or 0); with ``reverse=True`` ``x_t = gates_t·x_{t+1} + tokens_t``
    (``x_T = initial``).

    gates, tokens: (B, C, T), any T ≥ 1, the same dtype: float16, bfloat16, float32, float64,
    complex64 or complex128 (half precision is scanned in float32). initial: (B, C), tokens'
    dtype (or float32 for half tokens), optional. Returns x (B, C, T) in tokens' dtype,
    contiguous. Any strides. Autograd for gates, tokens and initial (the backward is a scan
    the other way; double backward works); ``torch.compile(fullgraph=True)`` works.
    backend: 'auto' | 'torch' | 'triton' (env FASTSPEC_BACKEND replaces 'auto').
    Raises TypeError for a wrong type or dtype, ValueError for a wrong shape or device,
    RuntimeError for a backend that cannot run here.
    """
    _validate_linear_scan(gates, tokens, initial, reverse)
    chosen = choose_backend("linear_scan", backend, tokens.device)
    _check_backend("linear_scan", chosen, _LINEAR_SCAN)
    return linear_scan_op(gates, tokens, initial, reverse, chosen)
