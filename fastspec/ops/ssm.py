"""State-space-model ops: public functions, validation, custom ops, autograd, torch backend.

``linear_scan(gates, tokens, initial, reverse)``: x_t = gates_t·x_{t−1} + tokens_t along the
last dim of (B, C, T) (reverse: x_t = gates_t·x_{t+1} + tokens_t), real or complex. Its
gradient is a scan the other way: with g = ∂loss/∂x and the gates shifted by one step,
λ_t = g_t + conj(gates_{t+1})·λ_{t+1}; then d tokens = λ, d gates_t = λ_t·conj(x_{t−1}) and
d initial = conj(gates_0)·λ_0 (PyTorch's convention for complex gradients). The backward
calls the op again, so double backward and torch.compile come with it.

``selective_scan(u, delta, A, B, C, ...)``: mamba_ssm's ``selective_scan_fn`` (per batch b,
channel d, state n: x_t = exp(Δ_t·A)·x_{t−1} + Δ_t·B_t·u_t, y_t = C_t·x_t + D·u_t, out =
y·silu(z)) with an initial state and gradients through it and through the last state.
The forward returns the states at the start of each chunk of time steps (the backend's
``chunk(B, D, N, L)``); the backward recomputes each chunk from its saved start, last chunk first,
carrying λ = ∂loss/∂x backwards: memory O(B·D·N·L/chunk), never a state per time step.

Backend contracts: ``_LINEAR_SCAN[backend](gates, tokens, initial, reverse)`` gets
validated tensors (any strides) and returns x, contiguous, in tokens' dtype; half
precision is scanned in float32. ``_SELECTIVE[backend]`` is a :class:`Selective`: see there.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from fastspec import _backend

REAL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
SCAN_DTYPES = REAL_DTYPES + (torch.complex64, torch.complex128)
HALF = (torch.float16, torch.bfloat16)
TORCH_CHUNK = 16
"""The torch backend scans T steps as chunks of this many: one pass over the chunk's steps,
each step a vectorised operation over every chunk and row at once, then (recursively) the
scan of the T/16 chunk ends, then one pass that adds each chunk's carry. So about log16(T)
times 16 PyTorch calls per level, never a Python loop over all T steps, and O(T) work."""

# backend="auto" on a CUDA tensor: the first of these that takes the call (Triton passed its
# tests on the interpreter, DESIGN.md; measured crossovers go here once a GPU has run
# bench_ssm); on a CPU tensor the C++ kernel of fastspec._C where the op has one and it takes the
# call (selective_scan and its decoding step; faster than torch at every size bench_ssm runs,
# README), else torch.
AUTO_CUDA = ("triton", "torch")
AUTO_CPU = ("cpu", "torch")


def _acc(dtype: torch.dtype) -> torch.dtype:
    """The dtype a scan runs in: float32 for half precision, else the dtype itself."""
    return torch.float32 if dtype in HALF else dtype


# ---------------------------------------------------------------------------- torch backend


def scan_torch(a: torch.Tensor, b: torch.Tensor, x0: torch.Tensor | None = None) -> torch.Tensor:
    """x_t = a_t·x_{t−1} + b_t along the last dim of (..., T), x_{−1} = x0 (..., ) or 0;
    a and b broadcast to each other and are computed in their (common) dtype. Plain
    differentiable torch ops (see TORCH_CHUNK)."""
    a, b = torch.broadcast_tensors(a, b)
    T = b.shape[-1]
    K = min(T, TORCH_CHUNK)
    n = -(-T // K)
    if n * K != T:  # pad with identity steps (a = 1, b = 0)
        a = F.pad(a, (0, n * K - T), value=1.0)
        b = F.pad(b, (0, n * K - T))
    # time t = j·K + k at [..., k, j]: step k of every chunk j is one contiguous slice
    a = a.reshape(*a.shape[:-1], n, K).transpose(-1, -2).contiguous()
    b = b.reshape(*b.shape[:-1], n, K).transpose(-1, -2).contiguous()
    xs, products = [b[..., 0, :]], [a[..., 0, :]]
    for k in range(1, K):
        xs.append(torch.addcmul(b[..., k, :], a[..., k, :], xs[-1]))
        products.append(products[-1] * a[..., k, :])
    x = torch.stack(xs, dim=-2)
    if n > 1 or x0 is not None:  # the state entering each chunk: x0, then the chunk ends' scan
        carry = scan_torch(products[-1][..., :-1], x[..., -1, :-1], x0) if n > 1 else x0[..., None]
        if n > 1:
            start = torch.zeros_like(carry[..., :1]) if x0 is None else x0[..., None].to(carry.dtype)
            carry = torch.cat([start, carry], dim=-1)
        x = torch.addcmul(x, torch.stack(products, dim=-2), carry[..., None, :])
    return x.transpose(-1, -2).reshape(*x.shape[:-2], n * K)[..., :T]


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


def _unsupported(op: str, backend: str, N: int) -> str | None:
    """Why ``backend`` does not take ``op`` with state size N, or None."""
    if op == "ssm_kernel":
        return _VANDERMONDE[backend].unsupported(N)
    if op in ("selective_scan", "selective_state_update"):
        return _SELECTIVE[backend].unsupported(N, None)
    return None


def _auto_choice(op: str, device: torch.device, N: int) -> str:
    order = {"cuda": AUTO_CUDA, "cpu": AUTO_CPU}.get(device.type, ())
    return next((name for name in order if name in _TABLES[op] and _backend.device_ok(name, device) is None
                 and _unsupported(op, name, N) is None), "torch")


@torch.compiler.assume_constant_result
def choose_backend(op: str, backend: str, device: torch.device, N: int = 0) -> str:
    """The concrete backend for a call of ``op`` with state size N (``auto`` resolved
    through AUTO_CUDA or AUTO_CPU)."""
    return _backend.resolve(op, backend, device, lambda: _auto_choice(op, device, N))


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


# ---------------------------------------------------------------------------- selective scan


def _acc_of(u: torch.Tensor) -> torch.dtype:
    """The dtype of a selective scan's state and parameters: float64 for float64 u, else float32."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def softplus_grad(raw: torch.Tensor) -> torch.Tensor:
    """d softplus / d raw as F.softplus computes softplus (threshold 20: the identity above)."""
    return torch.where(raw > 20, 1.0, torch.sigmoid(raw))


def per_channel(M: torch.Tensor, channels: int) -> torch.Tensor:
    """B or C as a tensor that broadcasts against (batch, D, N, L): (D, N) → (1, D, N, 1),
    (batch, N, L) → (batch, 1, N, L), (batch, G, N, L) → (batch, D, N, L), channel d of group
    d // (D / G) (an expanded copy: only for the chunk the torch backend works on)."""
    if M.dim() == 2:
        return M[None, :, :, None]
    if M.dim() == 3:
        return M[:, None]
    batch, groups, n, length = M.shape
    return M[:, :, None].expand(batch, groups, channels // groups, n, length).reshape(batch, channels, n, length)


def _split(t: torch.Tensor, K: int) -> torch.Tensor:
    """(..., l) → (..., K, n) contiguous, n = ⌈l/K⌉, step j·K + k at [..., k, j] (zeros past l):
    step k of every chunk is one contiguous slice."""
    n = -(-t.shape[-1] // K)
    t = F.pad(t, (0, n * K - t.shape[-1]))
    return t.reshape(*t.shape[:-1], n, K).transpose(-1, -2).contiguous()


def _selective_chunk(u, delta, z, A, B, C, D, delta_bias, x0, softplus):
    """One chunk of the selective scan in plain differentiable torch: u, delta, z (b, D, l),
    B, C (their form, sliced to the chunk), x0 (b, D, N) → (out (b, D, l), x at the chunk's
    end), in the state's dtype. The l steps are cut into n sub-chunks of K = TORCH_CHUNK;
    one pass over the K steps (each step one call over all sub-chunks) finds each sub-chunk's
    end state from zero and its decay product, a scan over those gives the state entering
    each sub-chunk, and a second pass from there contracts x with C at every step, so the
    states (b, D, N, l) are never stored."""
    acc = x0.dtype
    dt = delta.to(acc) if delta_bias is None else delta.to(acc) + delta_bias[:, None]
    if softplus:
        dt = F.softplus(dt)
    uf = u.to(acc)
    batch, channels, length = u.shape
    K = min(length, TORCH_CHUNK)
    B, C = (M.to(acc)[None, :, :, None, None] if M.dim() == 2 else _split(per_channel(M.to(acc), channels), K)
            for M in (B, C))
    dt_split = _split(dt, K)  # padded steps: Δ = 0, so decay 1 and input 0
    decay = torch.exp(dt_split[:, :, None] * A[None, :, :, None, None])  # (b, D, N, K, n)
    tokens = _split(dt * uf, K)[:, :, None] * B
    carry = x0[..., None]
    if decay.shape[-1] > 1:  # a sub-chunk's decay product is exp(A·ΣΔ)
        product = torch.exp(dt_split.sum(-2)[:, :, None, :] * A[None, :, :, None])
        x = tokens[..., 0, :]
        for k in range(1, K):
            x = torch.addcmul(tokens[..., k, :], decay[..., k, :], x)
        carry = torch.cat([carry, scan_torch(product[..., :-1], x[..., :-1], x0)], dim=-1)
    x, ys = carry, []
    for k in range(K):
        x = torch.addcmul(tokens[..., k, :], decay[..., k, :], x)
        ys.append((x * C[..., k if C.shape[-2] > 1 else 0, :]).sum(2))  # a fixed C has one step
    out = torch.stack(ys, dim=-2).transpose(-1, -2).reshape(batch, channels, K * decay.shape[-1])[..., :length]
    if D is not None:
        out = out + D[:, None] * uf
    if z is not None:
        out = out * F.silu(z.to(acc))
    return out, x[..., -1]


def _time_slice(M: torch.Tensor | None, steps: slice) -> torch.Tensor | None:
    """The chunk ``steps`` of a tensor with time last; a fixed (D, N) B or C, or None, as it is."""
    return M if M is None or M.dim() == 2 else M[..., steps]


def _chunks(length: int, chunk: int) -> list[slice]:
    return [slice(start, min(start + chunk, length)) for start in range(0, length, chunk)]


def torch_selective_chunk(batch: int, channels: int, N: int, L: int) -> int:
    """Time steps per chunk of the torch backend: as many as keep a (batch, D, N, chunk)
    tensor within TORCH_SELECTIVE_ELEMENTS, at least TORCH_SELECTIVE_MIN_CHUNK: larger chunks
    mean fewer PyTorch calls, smaller ones a working set that stays in a CPU's caches."""
    return max(TORCH_SELECTIVE_MIN_CHUNK, TORCH_SELECTIVE_ELEMENTS // max(1, batch * channels * N))


def _selective_torch_forward(u, delta, A, B, C, D, z, delta_bias, x0, softplus):
    """The torch backend's forward (contract: :class:`Selective`): the chunks in order, each
    scanned (``_selective_chunk``) from the state the one before left."""
    batch, channels, length = u.shape
    x = x0 if x0 is not None else u.new_zeros(batch, channels, A.shape[1], dtype=A.dtype)
    outs, starts = [], []
    for steps in _chunks(length, torch_selective_chunk(batch, channels, A.shape[1], length)):
        starts.append(x)
        out, x = _selective_chunk(u[..., steps], delta[..., steps], _time_slice(z, steps), A, _time_slice(B, steps),
                                  _time_slice(C, steps), D, delta_bias, x, softplus)
        outs.append(out)
    return torch.cat(outs, -1).to(u.dtype), x.contiguous(), torch.stack(starts, -1)


def _reduce_to_form(full: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """A gradient (batch, D, N, l) summed to the shape of B or C's form (a chunk of it)."""
    if M.dim() == 2:
        return full.sum((0, 3))
    if M.dim() == 3:
        return full.sum(1)
    batch, channels, n, length = full.shape
    return full.reshape(batch, M.shape[1], channels // M.shape[1], n, length).sum(2)


def _selective_torch_backward(grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, x0, chunk_states, softplus,
                              needs):
    """The torch backend's backward (contract: :class:`Selective`): the chunks last first,
    each recomputed from its saved start state; λ = ∂loss/∂x by a reverse scan whose gate
    at step l is step l+1's decay, its value at the chunk's end carried in from the chunk
    after (as exp(Δ·A)·λ of that chunk's first step). exp(Δ_l A)·x_{l−1} is x_l − Δ_l B_l u_l."""
    acc = _acc_of(u)
    raw = delta.to(acc) if delta_bias is None else delta.to(acc) + delta_bias[:, None]
    dt = F.softplus(raw) if softplus else raw
    uf, g_all = u.to(acc), grad_out.to(acc)
    channels = u.shape[1]
    du, ddt = torch.empty_like(uf), torch.empty_like(uf)
    dz = torch.empty_like(uf) if z is not None else None
    # the parameters' gradients sum over batch and time: chunk sums in the state's dtype,
    # added up in float64 (one float32 sum over 16K steps loses about 2^-24·√16K·log2(16K))
    dA = torch.zeros(A.shape, dtype=torch.float64, device=u.device)
    dD = torch.zeros(channels, dtype=torch.float64, device=u.device)
    dB, dC = (torch.zeros(M.shape, dtype=torch.float64 if M.dim() == 2 else acc, device=u.device) for M in (B, C))
    carry = grad_last
    steps_list = _chunks(u.shape[-1], torch_selective_chunk(*u.shape[:2], A.shape[1], u.shape[-1]))
    for k in range(len(steps_list) - 1, -1, -1):
        steps = steps_list[k]
        dt_c, u_c, g = dt[..., steps], uf[..., steps], g_all[..., steps]
        Bc, Cc = (per_channel(_time_slice(M, steps).to(acc), channels) for M in (B, C))
        decay = torch.exp(dt_c[:, :, None, :] * A[None, :, :, None])
        tokens = (dt_c * u_c)[:, :, None, :] * Bc
        xs = scan_torch(decay, tokens, chunk_states[..., k])
        if z is not None:
            z_c = z[..., steps].to(acc)
            sz = torch.sigmoid(z_c)
            pre = (xs * Cc).sum(2) if D is None else (xs * Cc).sum(2) + D[:, None] * u_c
            dz[..., steps] = g * pre * sz * (1 + z_c * (1 - sz))
            g = g * z_c * sz
        gate = torch.cat([decay[..., 1:], torch.ones_like(decay[..., :1])], -1)
        lam = scan_torch(gate.flip(-1), (g[:, :, None, :] * Cc).flip(-1), carry).flip(-1)
        carry = decay[..., 0] * lam[..., 0]
        before = xs - tokens
        dA += (lam * before * dt_c[:, :, None, :]).sum((0, 3))
        ddt[..., steps] = (lam * (Bc * u_c[:, :, None, :] + before * A[None, :, :, None])).sum(2)
        du[..., steps] = (lam * Bc).sum(2) * dt_c if D is None else (lam * Bc).sum(2) * dt_c + g * D[:, None]
        if D is not None:
            dD += (g * u_c).sum((0, 2))
        for grad, M, full in ((dB, B, lam * (dt_c * u_c)[:, :, None, :]), (dC, C, g[:, :, None, :] * xs)):
            if M.dim() == 2:
                grad += _reduce_to_form(full, M)
            else:
                grad[..., steps] = _reduce_to_form(full, M)
    ddelta = ddt * softplus_grad(raw) if softplus else ddt
    dbias = ddelta.sum(0).double().sum(-1) if delta_bias is not None else None
    grads = (du, ddelta, dA, dB, dC, dD, dz, dbias, carry)
    inputs = (u, delta, A, B, C, D, z, delta_bias, x0)
    return tuple(g.to(t.dtype) if need else None for g, t, need in zip(grads, inputs, needs))


def _selective_triton_forward(u, delta, A, B, C, D, z, delta_bias, x0, softplus):
    from fastspec.triton_kernels import ssm as kernels

    return kernels.selective_scan_forward(u, delta, A, B, C, D, z, delta_bias, x0, softplus)


def _selective_triton_backward(grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, x0, chunk_states, softplus,
                               needs):
    from fastspec.triton_kernels import ssm as kernels

    return kernels.selective_scan_backward(grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, x0, chunk_states,
                                           softplus, needs, torch.are_deterministic_algorithms_enabled())


def _triton_selective_chunk(batch: int, channels: int, N: int, L: int) -> int:
    from fastspec.triton_kernels import ssm as kernels

    return kernels.selective_chunk(N, L)


def _triton_selective_unsupported(N: int, dtype: torch.dtype) -> str | None:
    from fastspec.triton_kernels import ssm as kernels

    if N > kernels.SELECTIVE_MAX_N:
        return (f"the triton backend takes N <= {kernels.SELECTIVE_MAX_N} (a block of channels keeps its whole "
                f"state in registers), got N={N}")
    return None


# The cpu backend: fastspec._C's C++ kernels (csrc/ssm/selective_scan_cpu.h), float32 or float64
# contiguous tensors; B, C fixed (D, N) or (B, G, N, L). The backend wrapper below converts.
CPU_MAX_N = 256
CPU_CHUNK = 64
"""Time steps per chunk of the cpu backend (kSelectiveCpuChunk): its forward saves the state
before each chunk, (B, D, N, ceil(L / 64)), and its backward recomputes a chunk from there."""

torch.library.define(
    "fastspec::selective_scan_cpu",
    "(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, "
    "Tensor? initial_state, bool delta_softplus) -> (Tensor, Tensor, Tensor)")
torch.library.define(
    "fastspec::selective_scan_cpu_backward",
    "(Tensor grad_out, Tensor? grad_last, Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
    "Tensor? z, Tensor? delta_bias, Tensor? initial_state, Tensor starts, bool delta_softplus) -> Tensor[]")


@torch.library.register_fake("fastspec::selective_scan_cpu")
def _(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus):
    batch, channels, length = u.shape
    chunks = -(-length // CPU_CHUNK)
    return u.new_empty(u.shape), u.new_empty(batch, channels, A.shape[1]), u.new_empty(batch, channels, A.shape[1],
                                                                                       chunks)


@torch.library.register_fake("fastspec::selective_scan_cpu_backward")
def _(grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, initial_state, starts, delta_softplus):
    wide = dict(dtype=torch.float64)

    def grad_of(M):
        return M.new_empty(M.shape, **wide) if M.dim() == 2 else M.new_empty(M.shape)

    return [u.new_empty(u.shape), u.new_empty(u.shape), A.new_empty(A.shape, **wide), grad_of(B), grad_of(C),
            u.new_empty(u.shape[1] if D is not None else 0, **wide), u.new_empty(u.shape if z is not None else (0,)),
            u.new_empty(u.shape[1] if delta_bias is not None else 0, **wide), u.new_empty(*u.shape[:2], A.shape[1])]


@functools.cache
def _cpu_ops():
    import fastspec._C  # noqa: F401  (registers the CPU kernels of fastspec::selective_scan_cpu*)

    return torch.ops.fastspec.selective_scan_cpu.default, torch.ops.fastspec.selective_scan_cpu_backward.default


def _cpu_args(u, delta, A, B, C, D, z, delta_bias, x0):
    """The kernel's arguments: every tensor contiguous in the state's dtype (half u, delta, z and
    B/C converted: one copy), a (B, N, L) B or C as (B, 1, N, L)."""
    acc = _acc_of(u)

    def prepared(t, form=False):
        if t is None:
            return None
        return (t[:, None] if form and t.dim() == 3 else t).to(acc).contiguous()

    return [prepared(u), prepared(delta), prepared(A), prepared(B, True), prepared(C, True),
            *(prepared(t) for t in (D, z, delta_bias, x0))]


def _selective_cpu_forward(u, delta, A, B, C, D, z, delta_bias, x0, softplus):
    forward, _ = _cpu_ops()
    out, last, starts = forward(*_cpu_args(u, delta, A, B, C, D, z, delta_bias, x0), softplus)
    return out.to(u.dtype), last, starts


def _selective_cpu_backward(grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, x0, chunk_states, softplus,
                            needs):
    _, backward = _cpu_ops()
    acc = _acc_of(u)
    last = None if grad_last is None else grad_last.to(acc).contiguous()
    du, ddelta, dA, dB, dC, dD, dz, dbias, dx0 = backward(grad_out.to(acc).contiguous(), last,
                                                          *_cpu_args(u, delta, A, B, C, D, z, delta_bias, x0),
                                                          chunk_states, softplus)
    dB, dC = (g[:, 0] if M.dim() == 3 else g for g, M in ((dB, B), (dC, C)))
    grads = (du, ddelta, dA, dB, dC, dD, dz, dbias, dx0)
    inputs = (u, delta, A, B, C, D, z, delta_bias, x0)
    return tuple(g.to(t.dtype) if need and t is not None else None for g, t, need in zip(grads, inputs, needs))


def _cpu_selective_unsupported(N: int, dtype: torch.dtype) -> str | None:
    if N > CPU_MAX_N:
        return f"the cpu backend takes N <= {CPU_MAX_N} (a row's state is kept on the stack), got N={N}"
    return None


@dataclasses.dataclass(frozen=True)
class Selective:
    """One backend of the selective scan. Tensors have passed ``_validate_selective`` (any
    strides; B, C in one of their three forms); state and parameters are float32 (float64
    for float64 u).

    - ``forward(u, delta, A, B, C, D, z, delta_bias, x0, softplus) -> (out, last, starts)``:
      out (B, D, L) in u's dtype; last (B, D, N) and starts (B, D, N, ceil(L / chunk(B, D, N, L))),
      the state before each chunk's first step, in the state's dtype.
    - ``backward(grad_out, grad_last, u, ..., x0, starts, softplus, needs) -> 9 gradients``
      (u, delta, A, B, C, D, z, delta_bias, x0), None where ``needs`` says so; grad_last may be None.
    - ``chunk(B, D, N, L)``: time steps per chunk. ``unsupported(N, dtype)``: why not, or None.
    """

    forward: Callable
    backward: Callable
    chunk: Callable[[int, int, int, int], int]
    unsupported: Callable[[int, torch.dtype], str | None] = lambda N, dtype: None


TORCH_SELECTIVE_ELEMENTS = 2**22
"""Elements of one (batch, D, N, chunk) tensor of the torch backend at the most (16 MiB in
float32): the forward holds two (decays and inputs), the backward a few more."""
TORCH_SELECTIVE_MIN_CHUNK = 64

_SELECTIVE = {
    "torch": Selective(_selective_torch_forward, _selective_torch_backward, torch_selective_chunk),
    "triton": Selective(_selective_triton_forward, _selective_triton_backward, _triton_selective_chunk,
                        _triton_selective_unsupported),
    "cpu": Selective(_selective_cpu_forward, _selective_cpu_backward, lambda batch, channels, N, L: CPU_CHUNK,
                     _cpu_selective_unsupported),
}


def _check_form(op, name, M, batch, channels, N, L, u_dtype) -> None:
    """B or C: (D, N) in the state's dtype, or (B, N, L) / (B, G, N, L) in u's or the state's dtype."""
    _check_tensor(op, name, M)
    acc = torch.float64 if u_dtype == torch.float64 else torch.float32
    forms = f"(D, N) = ({channels}, {N}), (B, N, L) = ({batch}, {N}, {L}) or (B, G, N, L) with G dividing D = {channels}"
    if M.dim() == 2:
        if M.shape != (channels, N):
            raise ValueError(f"{op}: {name} must be {forms}, got {tuple(M.shape)}")
        if M.dtype != acc:
            raise TypeError(f"{op}: a fixed (D, N) {name} must be {_dtype_names([acc])}, got {M.dtype}")
        return
    ok = (M.dim() == 3 and M.shape == (batch, N, L)) or (
        M.dim() == 4 and M.shape[0] == batch and M.shape[2:] == (N, L) and M.shape[1] >= 1
        and channels % M.shape[1] == 0)
    if not ok:
        raise ValueError(f"{op}: {name} must be {forms}, got {tuple(M.shape)}")
    allowed = tuple(dict.fromkeys((u_dtype, acc)))
    if M.dtype not in allowed:
        raise TypeError(f"{op}: an input-dependent {name} must be {_dtype_names(allowed)} for u of {u_dtype}, "
                        f"got {M.dtype}")


def _validate_selective(u, delta, A, B, C, D, z, delta_bias, initial_state, softplus) -> tuple[int, int, int, int]:
    """Every argument of selective_scan; returns (batch, D, L, N)."""
    op = "selective_scan"
    _check_tensor(op, "u", u)
    if u.dtype not in REAL_DTYPES:
        raise TypeError(f"{op}: u must be {_dtype_names(REAL_DTYPES)}, got {u.dtype}")
    if u.dim() != 3 or u.shape[-1] < 1:
        raise ValueError(f"{op}: u must be (B, D, L) with L >= 1, got shape {tuple(u.shape)}")
    batch, channels, length = u.shape
    for name, t in (("delta", delta), ("z", z)):
        if t is None and name == "z":
            continue
        _check_tensor(op, name, t)
        if t.dtype != u.dtype:
            raise TypeError(f"{op}: {name} must have u's dtype {u.dtype}, got {t.dtype}")
        if t.shape != u.shape:
            raise ValueError(f"{op}: {name} must have u's shape {tuple(u.shape)}, got {tuple(t.shape)}")
    acc = _acc_of(u)
    _check_tensor(op, "A", A)
    if A.dtype != acc:
        raise TypeError(f"{op}: A must be real {_dtype_names([acc])} for u of {u.dtype}, got {A.dtype}")
    if A.dim() != 2 or A.shape[0] != channels or A.shape[1] < 1:
        raise ValueError(f"{op}: A must be (D, N) with D = {channels} as in u and N >= 1, got {tuple(A.shape)}")
    N = A.shape[1]
    _check_form(op, "B", B, batch, channels, N, length, u.dtype)
    _check_form(op, "C", C, batch, channels, N, length, u.dtype)
    for name, t, shape in (("D", D, (channels,)), ("delta_bias", delta_bias, (channels,)),
                           ("initial_state", initial_state, (batch, channels, N))):
        if t is None:
            continue
        _check_tensor(op, name, t)
        if t.dtype != acc:
            raise TypeError(f"{op}: {name} must be {_dtype_names([acc])} for u of {u.dtype}, got {t.dtype}")
        if t.shape != shape:
            raise ValueError(f"{op}: {name} must be {shape}, got {tuple(t.shape)}")
    if not isinstance(softplus, bool):
        raise TypeError(f"{op}: delta_softplus must be a bool, got {type(softplus).__name__}")
    _check_same_device(op, "u", u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                       initial_state=initial_state)
    return batch, channels, length, N


def _check_selective_backend(backend: str, N: int, dtype: torch.dtype) -> None:
    _check_backend("selective_scan", backend, _SELECTIVE)
    reason = _SELECTIVE[backend].unsupported(N, dtype)
    if reason:
        raise ValueError(f"selective_scan: {reason}")


@torch.library.custom_op("fastspec::selective_scan", mutates_args=())
def selective_scan_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                      D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
                      initial_state: torch.Tensor | None, delta_softplus: bool,
                      backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Registered op: (out, last_state, chunk start states) of the selective scan on a
    concrete backend."""
    *_, N = _validate_selective(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus)
    _check_selective_backend(backend, N, u.dtype)
    return _SELECTIVE[backend].forward(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus)


@selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, backend):
    batch, channels, length, N = _validate_selective(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                                     delta_softplus)
    _check_selective_backend(backend, N, u.dtype)
    # symbolic sizes are specialised: the plan depends on them
    chunk = _SELECTIVE[backend].chunk(int(batch), int(channels), int(N), int(length))
    chunks = -(-length // chunk)
    return (u.new_empty(u.shape), A.new_empty(batch, channels, N), A.new_empty(batch, channels, N, chunks))


@torch.library.custom_op(
    "fastspec::selective_scan_backward", mutates_args=(),
    schema="(Tensor grad_out, Tensor? grad_last, Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
           "Tensor? z, Tensor? delta_bias, Tensor? initial_state, Tensor chunk_states, bool delta_softplus, "
           "bool[] needs, str backend) -> (Tensor?, Tensor?, Tensor?, Tensor?, Tensor?, Tensor?, Tensor?, Tensor?, "
           "Tensor?)")
def selective_scan_backward_op(grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, initial_state, chunk_states,
                               delta_softplus, needs, backend):
    """Registered op: the gradients (u, delta, A, B, C, D, z, delta_bias, initial_state) of
    fastspec::selective_scan for the nine ``needs``, None where not needed."""
    *_, N = _validate_selective(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus)
    _check_selective_backend(backend, N, u.dtype)
    return _SELECTIVE[backend].backward(grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, initial_state,
                                        chunk_states, delta_softplus, list(needs))


@selective_scan_backward_op.register_fake
def _(grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, initial_state, chunk_states, delta_softplus, needs,
      backend):
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    return tuple(t.new_empty(t.shape) if need else None for t, need in zip(inputs, needs, strict=True))


def _selective_setup(ctx, inputs, output):
    *tensors, ctx.softplus, ctx.backend = inputs
    ctx.save_for_backward(*tensors, output[2])
    ctx.mark_non_differentiable(output[2])


def _selective_backward(ctx, grad_out, grad_last, _):
    *inputs, starts = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:9])
    if grad_out is None:
        grad_out = torch.zeros_like(inputs[0])
    if torch.is_grad_enabled():  # create_graph: differentiable gradients through the torch forward
        wanted = [t for t, need in zip(inputs, needs) if need]
        with torch.enable_grad():
            out, last, _ = _selective_torch_forward(*inputs, ctx.softplus)
            outputs, grads = [out], [grad_out]
            if grad_last is not None:
                outputs.append(last)
                grads.append(grad_last)
            found = iter(torch.autograd.grad(outputs, wanted, grads, create_graph=True, allow_unused=True))
        result = [next(found) if need else None for need in needs]
    else:
        result = selective_scan_backward_op(grad_out.contiguous(), grad_last, *inputs, starts, ctx.softplus, needs,
                                            ctx.backend)
    return (*result, None, None)


selective_scan_op.register_autograd(_selective_backward, setup_context=_selective_setup)


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   initial_state: torch.Tensor | None = None, return_last_state: bool = False, *,
                   backend: str = "auto"):
    """The selective scan of Mamba (mamba_ssm's ``selective_scan_fn``), with an initial state.

    Per batch b, channel d and state n, with Δ = softplus(delta + delta_bias) if
    ``delta_softplus`` (else delta + delta_bias), x_{−1} = initial_state (or 0):

        x_t[n] = exp(Δ_t·A[d, n])·x_{t−1}[n] + Δ_t·B_t[n]·u_t
        out_t  = (Σ_n C_t[n]·x_t[n] + D[d]·u_t)·silu(z_t)

    u, delta, z: (B, D, L), any L ≥ 1, float16, bfloat16, float32 or float64 (z optional).
    A: (D, N) real. B, C (each independently): (D, N) fixed, (B, N, L) input-dependent, or
    (B, G, N, L) grouped (channel d reads group d // (D / G)). D, delta_bias: (D,), optional.
    initial_state: (B, D, N), optional. A, fixed B/C, D, delta_bias and initial_state are
    float32 (float64 for float64 u); input-dependent B/C u's dtype or float32. The state is
    float32 (float64). Returns out (B, D, L) in u's dtype, and with ``return_last_state`` also
    x_{L−1} (B, D, N) in the state's dtype. Any strides. Autograd for every tensor input,
    through the last state too (double backward through the torch path);
    ``torch.compile(fullgraph=True)`` works. The Triton backward is deterministic (no float
    atomics) under ``torch.use_deterministic_algorithms(True)``, the cpu backward always.
    backend: 'auto' | 'torch' | 'triton' (N ≤ 256) | 'cpu' (CPU tensors, N ≤ 256; fastspec._C's
    C++ kernel, which 'auto' picks for CPU tensors where it is built) (env FASTSPEC_BACKEND
    replaces 'auto').
    Raises TypeError for a wrong type or dtype, ValueError for a wrong shape or device or a
    size the backend does not take, RuntimeError for a backend that cannot run here.
    """
    *_, N = _validate_selective(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus)
    if not isinstance(return_last_state, bool):
        raise TypeError(f"selective_scan: return_last_state must be a bool, got {type(return_last_state).__name__}")
    chosen = choose_backend("selective_scan", backend, u.device, N)
    _check_selective_backend(chosen, N, u.dtype)
    out, last, _ = selective_scan_op(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, chosen)
    return (out, last) if return_last_state else out



# ---------------------------------------------------------------------------- decoding step


def _state_update_torch(state, x, dt, A, B, C, D, z, dt_bias, softplus):
    """One step in place on ``state``; returns y in x's dtype (as :func:`selective_state_update`)."""
    acc = torch.float64 if torch.float64 in (state.dtype, x.dtype) else torch.float32
    dt = dt.to(acc) if dt_bias is None else dt.to(acc) + dt_bias.to(acc)
    if softplus:
        dt = F.softplus(dt)
    if state.dim() == 4:  # head h reads group h // (H / G)
        B, C = (M.to(acc).repeat_interleave(state.shape[1] // M.shape[1], dim=1)[:, :, None] for M in (B, C))
    else:
        B, C = B.to(acc)[:, None], C.to(acc)[:, None]
    xf = x.to(acc)
    new = torch.addcmul((dt * xf)[..., None] * B, torch.exp(dt[..., None] * A.to(acc)), state.to(acc))
    state.copy_(new)
    y = (new * C).sum(-1)
    if D is not None:
        y = y + D.to(acc) * xf
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y.to(x.dtype)


def _state_update_triton(state, x, dt, A, B, C, D, z, dt_bias, softplus):
    from fastspec.triton_kernels import ssm as kernels

    return kernels.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, softplus)


torch.library.define(
    "fastspec::selective_state_update_cpu",
    "(Tensor(a!) state, Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? dt_bias, "
    "bool dt_softplus) -> Tensor")


@torch.library.register_fake("fastspec::selective_state_update_cpu")
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    return x.new_empty(x.shape)


@functools.cache
def _cpu_state_update_op():
    import fastspec._C  # noqa: F401  (registers the CPU kernel of fastspec::selective_state_update_cpu)

    return torch.ops.fastspec.selective_state_update_cpu.default


def _state_update_cpu(state, x, dt, A, B, C, D, z, dt_bias, softplus):
    """The C++ step (csrc/ssm/selective_scan_cpu.h) on the multi-head layout (single-head as
    one head), every tensor as a contiguous one of the computing dtype (a copy only where it is
    not); the kernel updates a contiguous state of that dtype in place, any other through a copy
    written back (in its dtype and strides)."""
    acc = torch.float64 if torch.float64 in (state.dtype, x.dtype) else torch.float32
    heads = state.dim() == 4
    views = [None if t is None else t if heads else t.unsqueeze(1 if lead else 0)
             for t, lead in ((state, True), (x, True), (dt, True), (A, False), (B, True), (C, True), (D, False),
                             (z, True), (dt_bias, False))]
    prepared = [None if t is None else t.to(acc).contiguous() for t in views]
    y = _cpu_state_update_op()(*prepared, softplus)
    if prepared[0] is not views[0]:
        state.copy_(prepared[0].reshape(state.shape))
    return y.reshape(x.shape).to(x.dtype)


_STATE_UPDATE = {"torch": _state_update_torch, "triton": _state_update_triton, "cpu": _state_update_cpu}


def _validate_state_update(state, x, dt, A, B, C, D, z, dt_bias, softplus) -> None:
    op = "selective_state_update"
    for name, t in (("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("dt_bias", dt_bias)):
        if t is None and name in ("D", "z", "dt_bias"):
            continue
        _check_tensor(op, name, t)
        if t.dtype not in REAL_DTYPES:
            raise TypeError(f"{op}: {name} must be {_dtype_names(REAL_DTYPES)}, got {t.dtype}")
    if state.dim() not in (3, 4):
        raise ValueError(f"{op}: state must be (B, D, N) or, with heads, (B, H, D, N), got {tuple(state.shape)}")
    heads = state.dim() == 4
    batch, N = state.shape[0], state.shape[-1]
    lead = tuple(state.shape[:-1])  # (B, D) or (B, H, D)
    groups = B.shape[1] if heads and B.dim() == 3 else 1
    if heads and (B.dim() != 3 or state.shape[1] % max(groups, 1) or groups < 1):
        raise ValueError(f"{op}: with heads, B must be (B, G, N) with G dividing H = {state.shape[1]}, got "
                         f"{tuple(B.shape)}")
    expect = {"x": lead, "dt": lead, "z": lead, "A": lead[1:] + (N,), "D": lead[1:], "dt_bias": lead[1:],
              "B": (batch, groups, N) if heads else (batch, N)}
    expect["C"] = expect["B"]
    for name, t in (("x", x), ("dt", dt), ("z", z), ("A", A), ("D", D), ("dt_bias", dt_bias), ("B", B), ("C", C)):
        if t is not None and tuple(t.shape) != expect[name]:
            raise ValueError(f"{op}: {name} must be {expect[name]} for state of shape {tuple(state.shape)}, got "
                             f"{tuple(t.shape)}")
    if dt.dtype != x.dtype or (z is not None and z.dtype != x.dtype):
        raise TypeError(f"{op}: dt and z must have x's dtype {x.dtype}, got {dt.dtype}"
                        f"{'' if z is None else f' and {z.dtype}'}")
    if not isinstance(softplus, bool):
        raise TypeError(f"{op}: dt_softplus must be a bool, got {type(softplus).__name__}")
    _check_same_device(op, "state", state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)


@torch.library.custom_op("fastspec::selective_state_update", mutates_args=("state",))
def selective_state_update_op(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                              B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None,
                              dt_bias: torch.Tensor | None, dt_softplus: bool, backend: str) -> torch.Tensor:
    """Registered op: one selective-scan step, in place on ``state``; returns y."""
    _validate_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    _check_backend("selective_state_update", backend, _STATE_UPDATE)
    return _STATE_UPDATE[backend](state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


@selective_state_update_op.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend):
    _validate_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    return x.new_empty(x.shape)


def selective_state_update(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                           C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                           dt_bias: torch.Tensor | None = None, dt_softplus: bool = False, *,
                           backend: str = "auto") -> torch.Tensor:
    """One decoding step of the selective scan, in place on ``state`` (mamba_ssm's
    ``selective_state_update``): with Δ = softplus(dt + dt_bias) if ``dt_softplus``,

        state ← exp(Δ·A)·state + Δ·x·B,   y = Σ_n C[n]·state[n] + D·x,   y ← y·silu(z)

    Single-head: state (B, D, N), x, dt, z (B, D), A (D, N), B, C (B, N), D, dt_bias (D,).
    Multi-head (Mamba-2's decoding): state (B, H, D, N), x, dt, z (B, H, D), A (H, D, N),
    B, C (B, G, N) (head h reads group h // (H / G)), D, dt_bias (H, D). Any real dtypes
    and strides (A is often expanded); computed in float32 (float64 if state or x is),
    state written back in its dtype. Returns y in x's dtype. After ``selective_scan(...,
    return_last_state=True)`` it continues that scan: a step with the next token gives
    the scan's output for it. No autograd (decoding). backend: 'auto' | 'torch' | 'triton'
    (N ≤ 256) | 'cpu' (CPU tensors; fastspec._C's C++ step).
    """
    _validate_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    chosen = choose_backend("selective_state_update", backend, state.device, state.shape[-1])
    _check_backend("selective_state_update", chosen, _STATE_UPDATE)
    return selective_state_update_op(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, chosen)



# ---------------------------------------------------------------------------- S4D kernel

DISCRETIZATIONS = ("zoh", "bilinear")
_REAL_OF = {torch.complex64: torch.float32, torch.complex128: torch.float64}


def vandermonde_blocks(L: int) -> tuple[int, int]:
    """(steps per block, blocks) of the torch backend: about √L each, so that the factors
    exp(ζ·block start) and exp(ζ·step) take O(N·√L) memory per channel."""
    steps = max(1, int(L**0.5 + 0.5))
    return steps, -(-L // steps)


def _vandermonde_factors(zeta: torch.Tensor, L: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """exp(ζ·s) for the block starts s (H, nb, N) and for the steps within a block (H, N, steps),
    both complex128 (each power computed directly: no error grows with L); and the starts."""
    steps, blocks = vandermonde_blocks(L)
    starts = torch.arange(blocks, dtype=torch.float64, device=zeta.device) * steps
    at_starts = torch.exp(zeta[:, None, :] * starts[None, :, None])
    within = torch.exp(zeta[:, :, None] * torch.arange(steps, dtype=torch.float64, device=zeta.device))
    return at_starts, within, starts


def _vandermonde_torch(v: torch.Tensor, zeta: torch.Tensor, L: int, dtype: torch.dtype) -> torch.Tensor:
    """K[h, s + j] = 2·Re Σ_n (v·exp(ζ s))[n]·exp(ζ j)[n]: one batched complex matmul of the
    block-start and the within-block factors (complex64 for a float32 result)."""
    at_starts, within, _ = _vandermonde_factors(zeta, L)
    work = torch.complex64 if dtype == torch.float32 else torch.complex128
    K = 2 * torch.matmul((v[:, None, :] * at_starts).to(work), within.to(work)).real
    return K.reshape(K.shape[0], -1)[:, :L].to(dtype).contiguous()


def _vandermonde_backward_torch(grad: torch.Tensor, v: torch.Tensor, zeta: torch.Tensor):
    """(dv, dζ) = (2·conj(G), 2·conj(v·G')) with G = Σ_l dK_l·exp(lζ), G' = Σ_l l·dK_l·exp(lζ)
    (PyTorch's complex gradients: ∂/∂Re + i·∂/∂Im), per block then over blocks, in complex128."""
    H, L = grad.shape
    at_starts, within, starts = _vandermonde_factors(zeta, L)
    steps, blocks = within.shape[-1], at_starts.shape[1]
    g = F.pad(grad.to(torch.float64), (0, steps * blocks - L)).reshape(H, blocks, steps)
    l = (starts[:, None] + torch.arange(steps, dtype=torch.float64, device=grad.device)).expand(blocks, steps)
    both = torch.cat([g, g * l], dim=1).transpose(1, 2).to(torch.complex128)  # (H, steps, 2·blocks)
    per_block = torch.matmul(within, both)  # (H, N, 2·blocks)
    G = (per_block[..., :blocks] * at_starts.transpose(1, 2)).sum(-1)
    G1 = (per_block[..., blocks:] * at_starts.transpose(1, 2)).sum(-1)
    return 2 * torch.conj_physical(G), 2 * torch.conj_physical(v * G1)


def _vandermonde_triton(v, zeta, L, dtype):
    from fastspec.triton_kernels import ssm as kernels

    return kernels.vandermonde(v, zeta, L, dtype)


def _vandermonde_backward_triton(grad, v, zeta):
    from fastspec.triton_kernels import ssm as kernels

    return kernels.vandermonde_backward(grad, v, zeta)


def _vandermonde_triton_unsupported(N: int) -> str | None:
    from fastspec.triton_kernels import ssm as kernels

    if N > kernels.VANDERMONDE_MAX_N:
        return f"the triton backend takes N <= {kernels.VANDERMONDE_MAX_N}, got N={N}"
    return None


@dataclasses.dataclass(frozen=True)
class Vandermonde:
    """One backend of the S4D kernel's core K[h, l] = 2·Re Σ_n v[h,n]·exp(l·ζ[h,n]), v and ζ
    (H, N) complex128: ``forward(v, zeta, L, dtype) -> K`` (H, L) contiguous in ``dtype``
    (float32 or float64); ``backward(grad (H, L), v, zeta) -> (dv, dzeta)`` complex128;
    ``unsupported(N)``: why not, or None."""

    forward: Callable
    backward: Callable
    unsupported: Callable[[int], str | None] = lambda N: None


_VANDERMONDE = {
    "torch": Vandermonde(_vandermonde_torch, _vandermonde_backward_torch),
    "triton": Vandermonde(_vandermonde_triton, _vandermonde_backward_triton, _vandermonde_triton_unsupported),
}


def _check_vandermonde_backend(op: str, backend: str, N: int) -> None:
    _check_backend(op, backend, _VANDERMONDE)
    reason = _VANDERMONDE[backend].unsupported(N)
    if reason:
        raise ValueError(f"{op}: {reason}")


@torch.library.custom_op("fastspec::vandermonde", mutates_args=())
def vandermonde_op(v: torch.Tensor, zeta: torch.Tensor, L: int, dtype: torch.dtype, backend: str) -> torch.Tensor:
    """Registered op: K (H, L) = 2·Re Σ_n v·exp(l·ζ) in ``dtype``; v, ζ (H, N) complex128."""
    _check_vandermonde_backend("ssm_kernel", backend, v.shape[1])
    return _VANDERMONDE[backend].forward(v, zeta, L, dtype)


@vandermonde_op.register_fake
def _(v, zeta, L, dtype, backend):
    return v.new_empty((v.shape[0], L), dtype=dtype)


@torch.library.custom_op("fastspec::vandermonde_backward", mutates_args=())
def vandermonde_backward_op(grad: torch.Tensor, v: torch.Tensor, zeta: torch.Tensor,
                            backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Registered op: (dv, dζ) of fastspec::vandermonde for the gradient ``grad`` of K."""
    _check_vandermonde_backend("ssm_kernel", backend, v.shape[1])
    return _VANDERMONDE[backend].backward(grad, v, zeta)


@vandermonde_backward_op.register_fake
def _(grad, v, zeta, backend):
    return torch.empty_like(v), torch.empty_like(zeta)


def _vandermonde_setup(ctx, inputs, output):
    v, zeta, ctx.L, ctx.dtype, ctx.backend = inputs
    ctx.save_for_backward(v, zeta)


def _vandermonde_backward(ctx, grad):
    v, zeta = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph: differentiable gradients through the torch forward
        with torch.enable_grad():
            K = _vandermonde_torch(v, zeta, ctx.L, torch.float64)
            dv, dzeta = torch.autograd.grad(K, (v, zeta), grad.to(torch.float64), create_graph=True)
    else:
        dv, dzeta = vandermonde_backward_op(grad.contiguous(), v, zeta, ctx.backend)
    return dv, dzeta, None, None, None


vandermonde_op.register_autograd(_vandermonde_backward, setup_context=_vandermonde_setup)


def _validate_ssm_kernel(A, B, C, log_dt, L, discretization) -> None:
    op = "ssm_kernel"
    for name, t in (("A", A), ("B", B), ("C", C), ("log_dt", log_dt)):
        _check_tensor(op, name, t)
    if A.dtype not in (torch.complex64, torch.complex128):
        raise TypeError(f"{op}: A must be complex64 or complex128, got {A.dtype}")
    for name, t in (("B", B), ("C", C)):
        if t.dtype != A.dtype:
            raise TypeError(f"{op}: {name} must have A's dtype {A.dtype}, got {t.dtype}")
    real = _REAL_OF[A.dtype]
    if log_dt.dtype != real:
        raise TypeError(f"{op}: log_dt must be {_dtype_names([real])} for A of {A.dtype}, got {log_dt.dtype}")
    if A.dim() != 2 or A.shape[1] < 1:
        raise ValueError(f"{op}: A must be (H, N) with N >= 1, got shape {tuple(A.shape)}")
    for name, t in (("B", B), ("C", C)):
        if t.shape != A.shape:
            raise ValueError(f"{op}: {name} must have A's shape {tuple(A.shape)}, got {tuple(t.shape)}")
    if log_dt.shape != (A.shape[0],):
        raise ValueError(f"{op}: log_dt must be (H,) = ({A.shape[0]},), got {tuple(log_dt.shape)}")
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"{op}: L must be an int >= 1, got {L!r}")
    if discretization not in DISCRETIZATIONS:
        raise ValueError(f"{op}: discretization must be one of {', '.join(map(repr, DISCRETIZATIONS))}; "
                         f"got {discretization!r}")
    _check_same_device(op, "A", A, B=B, C=C, log_dt=log_dt)


def discretize(A, B, C, log_dt, discretization: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(v, ζ) (H, N) complex128 with K[h, l] = 2·Re Σ_n v·exp(l·ζ): Δ = exp(log_dt), z = ΔA;
    ZOH: ζ = z, v = C·B·Δ·(e^z − 1)/z (= C·B·(e^z − 1)/A, Δ·C·B where z = 0);
    bilinear: ζ = log((1 + z/2)/(1 − z/2)), v = C·B·Δ/(1 − z/2). Differentiable."""
    A, B, C = (t.to(torch.complex128) for t in (A, B, C))
    dt = torch.exp(log_dt.to(torch.float64))[:, None]
    z = dt * A
    if discretization == "zoh":
        small = z == 0
        ratio = torch.where(small, 1.0, torch.expm1(torch.where(small, 1.0, z)) / torch.where(small, 1.0, z))
        return C * B * dt * ratio, z
    return C * B * dt / (1 - z / 2), torch.log((1 + z / 2) / (1 - z / 2))


def ssm_kernel(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, log_dt: torch.Tensor, L: int, *,
               discretization: str = "zoh", backend: str = "auto") -> torch.Tensor:
    """The S4D convolution kernel K (H, L), by the Vandermonde product without the (N, L) matrix:

        K[h, l] = 2·Re Σ_n C[h,n]·B̄[h,n]·Ā[h,n]^l,   Δ_h = exp(log_dt[h])
        zoh:      Ā = exp(Δ·A),                 B̄ = (exp(Δ·A) − 1)/A·B
        bilinear: Ā = (1 + Δ·A/2)/(1 − Δ·A/2),  B̄ = Δ·B/(1 − Δ·A/2)

    (N complex modes with their conjugates implied: a real SSM of state size 2N). A, B, C:
    (H, N) complex64 or complex128; log_dt: (H,) float32 or float64 (matching); L ≥ 1.
    Returns K (H, L) float32 (float64 for complex128), contiguous. Ā^l = exp(l·log Ā) is
    computed directly for every l, with the phase in float64 (no error that grows with L).
    Autograd for A, B, C and log_dt (double backward through the torch path);
    ``torch.compile(fullgraph=True)`` works. Memory: the Triton kernel O(N + L) per channel,
    the torch backend O(N·√L). backend: 'auto' | 'torch' | 'triton' (N ≤ 1024).
    Raises TypeError for a wrong type or dtype, ValueError for a wrong shape, L or
    discretization, RuntimeError for a backend that cannot run here.
    """
    _validate_ssm_kernel(A, B, C, log_dt, L, discretization)
    chosen = choose_backend("ssm_kernel", backend, A.device, A.shape[1])
    _check_vandermonde_backend("ssm_kernel", chosen, A.shape[1])
    v, zeta = discretize(A, B, C, log_dt, discretization)
    return vandermonde_op(v, zeta, L, _REAL_OF[A.dtype], chosen)


_TABLES = {"linear_scan": _LINEAR_SCAN, "selective_scan": _SELECTIVE, "selective_state_update": _STATE_UPDATE,
           "ssm_kernel": _VANDERMONDE}
