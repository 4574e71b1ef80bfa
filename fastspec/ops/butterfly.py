"""Butterfly and Monarch structured multiplies: public functions, custom ops, autograd, torch backend.

``butterfly_multiply(twiddle, x)`` is torch_butterfly's product (Dao et al. 2019): per stack,
y = M x with M = F_last ⋯ F_first, each factor F a stride-s butterfly (2×2 blocks on the
pairs (a, a + s)), as written out in :mod:`fastspec.reference.butterfly`. Its backward is
the fastspec::butterfly_multiply_backward op (gradients of x and of every twiddle, the
factors recomputed rather than stored). ``transpose=True`` multiplies by Mᵀ: the same
product with every 2×2 block transposed, the factors in reverse order and the strides
running the other way (a cheap rewrite of the twiddle before the op, so autograd carries it).

``monarch_multiply(x, w1, w2)`` is fly's ``blockdiag_butterfly_multiply`` (Dao et al. 2022):
blockdiag(w1), the (r, l) → (l, r) permutation, blockdiag(w2), the (l, s) → (s, l) one.
"""
from __future__ import annotations

import torch

from fastspec import _backend

BUTTERFLY_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128)
MONARCH_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128)
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
"""The dtypes of the triton and cuda backends (real, computed in float32)."""
HALF = (torch.float16, torch.bfloat16)
MAX_LOG_N = 20
"""Rows up to 2^20."""
CUDA_MAX_LOG_N = 14
"""The CUDA C++ kernel (csrc/butterfly/) takes rows up to 2^14 (one row of 2^15 would need
1024 threads of at most 64 registers; see butterfly.cu)."""


def _acc(dtype: torch.dtype) -> torch.dtype:
    """The dtype a backend computes in: float32 for half precision, the dtype otherwise."""
    return torch.float32 if dtype in HALF else dtype


# ---------------------------------------------------------------------------- validation


def _validate_butterfly(twiddle, x, increasing_stride) -> tuple[int, int, int, int]:
    """Checks every argument of butterfly_multiply; returns (batch, nstacks, nblocks, log2 n)."""
    for name, t in (("twiddle", twiddle), ("x", x)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"butterfly_multiply: {name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dtype not in BUTTERFLY_DTYPES:
        raise TypeError(f"butterfly_multiply: x must be float16, bfloat16, float32, float64, complex64 or complex128, "
                        f"got {x.dtype}")
    if twiddle.dtype != x.dtype:
        raise TypeError(f"butterfly_multiply: twiddle and x must have the same dtype, got {twiddle.dtype} and {x.dtype}")
    if not isinstance(increasing_stride, bool):
        raise TypeError(f"butterfly_multiply: increasing_stride must be a bool, got {type(increasing_stride).__name__}")
    if x.dim() != 3:
        raise ValueError(f"butterfly_multiply: x must be (batch, nstacks, n), got shape {tuple(x.shape)}")
    batch, nstacks, n = (int(d) for d in x.shape)
    if n < 2 or n & (n - 1) or n > 2**MAX_LOG_N:
        raise ValueError(f"butterfly_multiply: n (x's last dim) must be a power of two from 2 to 2^{MAX_LOG_N}, got {n}")
    log_n = n.bit_length() - 1
    if twiddle.dim() != 6 or twiddle.shape[0] != nstacks or tuple(twiddle.shape[2:]) != (log_n, n // 2, 2, 2) \
            or twiddle.shape[1] < 1:
        raise ValueError(f"butterfly_multiply: twiddle must be (nstacks, nblocks, log2 n, n/2, 2, 2) = "
                         f"({nstacks}, nblocks >= 1, {log_n}, {n // 2}, 2, 2) for x of shape {tuple(x.shape)}, "
                         f"got {tuple(twiddle.shape)}")
    if twiddle.device != x.device:
        raise ValueError(f"butterfly_multiply: twiddle and x must be on the same device, got {twiddle.device} and {x.device}")
    return batch, nstacks, int(twiddle.shape[1]), log_n


def _validate_monarch(x, w1, w2) -> tuple[int, int]:
    """Checks every argument of monarch_multiply; returns (n, m): x's and the output's last dims."""
    for name, t in (("x", x), ("w1", w1), ("w2", w2)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"monarch_multiply: {name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dtype not in MONARCH_DTYPES:
        raise TypeError(f"monarch_multiply: x must be float16, bfloat16, float32, float64, complex64 or complex128, "
                        f"got {x.dtype}")
    if w1.dtype != x.dtype or w2.dtype != x.dtype:
        raise TypeError(f"monarch_multiply: x, w1 and w2 must have the same dtype, got {x.dtype}, {w1.dtype}, {w2.dtype}")
    if x.dim() < 1 or w1.dim() != 3 or w2.dim() != 3:
        raise ValueError(f"monarch_multiply: need x (..., n), w1 (k, q, p), w2 (l, s, r), got shapes "
                         f"{tuple(x.shape)}, {tuple(w1.shape)}, {tuple(w2.shape)}")
    k, q, p = (int(d) for d in w1.shape)
    l, s, r = (int(d) for d in w2.shape)
    n = int(x.shape[-1])
    if min(k, q, p, l, s, r) < 1 or k * p != n or l * r != k * q:
        raise ValueError(f"monarch_multiply: need k·p = n and l·r = k·q for w1 (k, q, p), w2 (l, s, r) and x (..., n), "
                         f"got w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)}, n = {n}")
    if w1.device != x.device or w2.device != x.device:
        raise ValueError(f"monarch_multiply: x, w1 and w2 must be on one device, got {x.device}, {w1.device}, {w2.device}")
    return n, l * s


# ---------------------------------------------------------------------------- torch backend: butterfly


def _factors(log_n: int, nblocks: int, increasing_stride: bool):
    """(block, idx, log2 stride) of every factor in the order they apply."""
    increasing = increasing_stride
    for block in range(nblocks):
        for idx in range(log_n):
            yield block, idx, idx if increasing else log_n - 1 - idx
        increasing = not increasing


def _pairs(t: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """t (..., n) as its two halves of the stride-s pairs, each (..., n/2s, s)."""
    v = t.reshape(*t.shape[:-1], t.shape[-1] // (2 * stride), 2, stride)
    return v[..., 0, :], v[..., 1, :]


def _factor_entries(factor: torch.Tensor, stride: int) -> tuple[torch.Tensor, ...]:
    """factor (nstacks, n/2, 2, 2) as its four entries t00, t01, t10, t11, each (nstacks, n/2s, s)."""
    f = factor.reshape(factor.shape[0], -1, stride, 4)
    return tuple(f[..., i] for i in range(4))


def _apply_factor(factor: torch.Tensor, y: torch.Tensor, stride: int) -> torch.Tensor:
    """y (batch, nstacks, n) times one factor: (y_a, y_b) ← T (y_a, y_b) on every pair."""
    y0, y1 = _pairs(y, stride)
    t00, t01, t10, t11 = _factor_entries(factor, stride)
    return torch.stack((t00 * y0 + t01 * y1, t10 * y0 + t11 * y1), dim=-2).reshape(y.shape)


def butterfly_torch(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool) -> torch.Tensor:
    """The torch backend: one vectorised pass per factor (half precision computed in float32)."""
    acc = _acc(x.dtype)
    tw, y = twiddle.to(acc), x.to(acc)
    for block, idx, log_stride in _factors(tw.shape[2], tw.shape[1], increasing_stride):
        y = _apply_factor(tw[:, block, idx], y, 1 << log_stride)
    return y.to(x.dtype)


def butterfly_torch_backward(grad: torch.Tensor, twiddle: torch.Tensor, x: torch.Tensor,
                             increasing_stride: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(d twiddle, d x) of y = M x for the output gradient ``grad``: the forward again
    keeping every factor's input, then the factors in reverse. With PyTorch's convention for
    complex gradients, dT = Σ_batch g_out ⊗ conj(y_in) per pair and g_in = Tᴴ g_out."""
    acc = _acc(x.dtype)
    tw, y, g = twiddle.to(acc), x.to(acc), grad.to(acc)
    order = list(_factors(tw.shape[2], tw.shape[1], increasing_stride))
    inputs = []
    for block, idx, log_stride in order:
        inputs.append(y)
        y = _apply_factor(tw[:, block, idx], y, 1 << log_stride)
    d_tw = torch.empty_like(tw)
    for (block, idx, log_stride), y_in in zip(reversed(order), reversed(inputs)):
        stride = 1 << log_stride
        y0, y1 = (torch.conj_physical(v) for v in _pairs(y_in, stride))
        g0, g1 = _pairs(g, stride)
        d = torch.stack([(a * b).sum(0) for a in (g0, g1) for b in (y0, y1)], dim=-1)  # (nstacks, n/2s, s, 4)
        d_tw[:, block, idx] = d.reshape(d_tw.shape[0], -1, 2, 2)
        t00, t01, t10, t11 = (torch.conj_physical(t) for t in _factor_entries(tw[:, block, idx], stride))
        g = torch.stack((t00 * g0 + t10 * g1, t01 * g0 + t11 * g1), dim=-2).reshape(g.shape)
    return d_tw.to(twiddle.dtype), g.to(x.dtype)


def _butterfly_triton(twiddle, x, increasing_stride):
    from fastspec.triton_kernels import butterfly as kernels

    return kernels.butterfly_forward(twiddle.contiguous(), x.contiguous(), increasing_stride)


def _butterfly_triton_backward(grad, twiddle, x, increasing_stride):
    from fastspec.triton_kernels import butterfly as kernels

    return kernels.butterfly_backward(grad.contiguous(), twiddle.contiguous(), x.contiguous(), increasing_stride)


def _cuda_kernel():
    import fastspec._C  # noqa: F401  (registers the CUDA kernel of fastspec::butterfly_cuda)

    return torch.ops.fastspec.butterfly_cuda


def butterfly_cuda(twiddle, x, increasing_stride, *, kernel=None):
    """The cuda backend's forward (csrc/butterfly/butterfly.cu: every factor in one kernel):
    x and the twiddle made contiguous, the twiddle copied if it does not start at a whole 2×2
    matrix (the kernel loads a matrix as one vector). ``kernel`` replaces
    fastspec::butterfly_cuda (the tests pass the CPU-emulated one)."""
    kernel = kernel or _cuda_kernel()
    tw = twiddle.contiguous()
    if tw.data_ptr() % (4 * tw.element_size()):
        tw = tw.clone()
    return kernel(tw, x.contiguous(), increasing_stride)


def butterfly_cuda_backward(grad, twiddle, x, increasing_stride):
    """The cuda backend's backward: there is no CUDA C++ backward yet, so Triton's (the same
    recompute design, twiddle gradients added atomically) where Triton runs, else torch's."""
    name = "triton" if _backend.device_ok("triton", x.device) is None else "torch"
    return _BUTTERFLY[name][1](grad, twiddle, x, increasing_stride)


_BUTTERFLY = {"torch": (butterfly_torch, butterfly_torch_backward),
              "triton": (_butterfly_triton, _butterfly_triton_backward),
              "cuda": (butterfly_cuda, butterfly_cuda_backward)}

# twiddle (nstacks, nblocks, log2 n, n/2, 2, 2) and x (batch, nstacks, n), contiguous, one of
# KERNEL_DTYPES, n <= 2^CUDA_MAX_LOG_N, the twiddle 4-element aligned -> y (batch, nstacks, n).
torch.library.define("fastspec::butterfly_cuda", "(Tensor twiddle, Tensor x, bool increasing_stride) -> Tensor")


@torch.library.register_fake("fastspec::butterfly_cuda")
def _(twiddle, x, increasing_stride):
    return x.new_empty(x.shape)


# ---------------------------------------------------------------------------- torch backend: monarch


def _monarch_stage1(x2: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
    """blockdiag(w1) on every row of x2 (B, k·p), as (k, B, q)."""
    k, q, p = w1.shape
    return torch.bmm(x2.reshape(-1, k, p).transpose(0, 1), w1.transpose(1, 2))


def _to_stage2(h: torch.Tensor, r: int, l: int) -> torch.Tensor:
    """The intermediate (k, B, q) in stage 2's layout (l, B, r): the (r, l) → (l, r) permutation."""
    return h.transpose(0, 1).reshape(-1, r, l).permute(2, 0, 1)


def monarch_torch(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """The torch backend: two batched matmuls, the permutations as reshapes (half precision in float32)."""
    acc = _acc(x.dtype)
    l, s, r = w2.shape
    x2 = x.reshape(-1, x.shape[-1]).to(acc)
    out = torch.bmm(_to_stage2(_monarch_stage1(x2, w1.to(acc)), r, l), w2.to(acc).transpose(1, 2))  # (l, B, s)
    return out.permute(1, 2, 0).reshape(*x.shape[:-1], l * s).to(x.dtype)


def monarch_torch_backward(grad, x, w1, w2):
    """(d x, d w1, d w2) of monarch_multiply for the output gradient ``grad`` (..., l·s)."""
    acc = _acc(x.dtype)
    k, q, p = w1.shape
    l, s, r = w2.shape
    x2 = x.reshape(-1, k * p).to(acc)
    a1, a2 = w1.to(acc), w2.to(acc)
    h = _to_stage2(_monarch_stage1(x2, a1), r, l)  # (l, B, r)
    g2 = grad.reshape(-1, s, l).permute(2, 0, 1).to(acc)  # (l, B, s)
    d_w2 = torch.bmm(g2.transpose(1, 2), torch.conj_physical(h))
    g_h = torch.bmm(g2, torch.conj_physical(a2))  # (l, B, r)
    g1 = g_h.permute(1, 2, 0).reshape(-1, k, q).transpose(0, 1)  # (k, B, q)
    d_w1 = torch.bmm(g1.transpose(1, 2), x2.reshape(-1, k, p).transpose(0, 1).conj_physical())
    d_x = torch.bmm(g1, torch.conj_physical(a1)).transpose(0, 1).reshape(x.shape)
    return d_x.to(x.dtype), d_w1.to(w1.dtype), d_w2.to(w2.dtype)


def _monarch_triton(x, w1, w2):
    from fastspec.triton_kernels import butterfly as kernels

    return kernels.monarch_forward(x.contiguous(), w1.contiguous(), w2.contiguous())


def _monarch_triton_backward(grad, x, w1, w2):
    from fastspec.triton_kernels import butterfly as kernels

    return kernels.monarch_backward(grad.contiguous(), x.contiguous(), w1.contiguous(), w2.contiguous())


_MONARCH = {"torch": (monarch_torch, monarch_torch_backward), "triton": (_monarch_triton, _monarch_triton_backward)}


# ---------------------------------------------------------------------------- backend choice


def _check_backend(op: str, backend: str, dtype: torch.dtype, names: tuple[str, ...]) -> None:
    if backend not in names:
        allowed = f"{', '.join(map(repr, names[:-1]))} or {names[-1]!r}"
        raise ValueError(f"{op}: backend must be {allowed} (no {backend!r} kernel for this op), got {backend!r}")
    if backend in ("triton", "cuda") and dtype not in KERNEL_DTYPES:
        raise ValueError(f"{op}: the {backend} backend takes float16, bfloat16 and float32 (use backend='torch' "
                         f"for {dtype}), got {dtype}")


def _check_butterfly_backend(backend: str, x) -> None:
    _check_backend("butterfly_multiply", backend, x.dtype, tuple(_BUTTERFLY))
    n = int(x.shape[-1])
    if backend == "cuda" and n > 2**CUDA_MAX_LOG_N:
        raise ValueError(f"butterfly_multiply: the cuda backend takes n up to 2^{CUDA_MAX_LOG_N} = "
                         f"{2**CUDA_MAX_LOG_N} (backend='triton' takes every n), got n = {n}")


def _monarch_triton_unsupported(w1_shape, w2_shape) -> str | None:
    from fastspec.triton_kernels import butterfly as kernels

    return kernels.monarch_unsupported(tuple(int(d) for d in w1_shape), tuple(int(d) for d in w2_shape))


def _check_monarch_backend(backend: str, x, w1, w2) -> None:
    _check_backend("monarch_multiply", backend, x.dtype, tuple(_MONARCH))
    reason = _monarch_triton_unsupported(w1.shape, w2.shape) if backend == "triton" else None
    if reason:
        raise ValueError(f"monarch_multiply: {reason}")


def _auto_choice(device: torch.device, dtype: torch.dtype, monarch_shapes=None) -> str:
    # Triton for CUDA tensors once its interpreter tests pass (DESIGN): it does; torch elsewhere.
    # The cuda butterfly is reachable by name only: auto takes it once its tests have passed on
    # a GPU and bench/gpu_check.sh has measured where it beats Triton (no GPU has run it yet).
    if device.type == "cuda" and dtype in KERNEL_DTYPES and _backend.device_ok("triton", device) is None:
        if monarch_shapes is None or _monarch_triton_unsupported(*monarch_shapes) is None:
            return "triton"
    return "torch"


@torch.compiler.assume_constant_result
def choose_backend(op: str, backend: str, device: torch.device, dtype: torch.dtype, monarch_shapes=None) -> str:
    """The concrete backend for a call (``auto``: Triton for CUDA tensors it takes, else
    torch); monarch_shapes: (w1.shape, w2.shape) for monarch_multiply."""
    return _backend.resolve(op, backend, device, lambda: _auto_choice(device, dtype, monarch_shapes))


# ---------------------------------------------------------------------------- butterfly op


def _grads_through(forward, inputs, needs, grad):
    """Gradients of ``forward(*inputs)`` for the output gradient ``grad``, differentiable
    (double backward), None where not needed."""
    with torch.enable_grad():
        y = forward(*inputs)
    wanted = [t for t, need in zip(inputs, needs) if need]
    found = iter(torch.autograd.grad(y, wanted, grad, create_graph=True))
    return tuple(next(found) if need else None for need in needs)



@torch.library.custom_op("fastspec::butterfly_multiply", mutates_args=())
def butterfly_multiply_op(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool, backend: str) -> torch.Tensor:
    """Registered op: y = M x per stack on a concrete backend ('torch' | 'triton' | 'cuda')."""
    _validate_butterfly(twiddle, x, increasing_stride)
    _check_butterfly_backend(backend, x)
    return _BUTTERFLY[backend][0](twiddle, x, increasing_stride)


@butterfly_multiply_op.register_fake
def _(twiddle, x, increasing_stride, backend):
    _validate_butterfly(twiddle, x, increasing_stride)
    _check_butterfly_backend(backend, x)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("fastspec::butterfly_multiply_backward", mutates_args=())
def butterfly_multiply_backward_op(grad: torch.Tensor, twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool,
                                   backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Registered op: (d twiddle, d x) of fastspec::butterfly_multiply for the output gradient."""
    _validate_butterfly(twiddle, x, increasing_stride)
    _check_butterfly_backend(backend, x)
    return _BUTTERFLY[backend][1](grad, twiddle, x, increasing_stride)


@butterfly_multiply_backward_op.register_fake
def _(grad, twiddle, x, increasing_stride, backend):
    return torch.empty_like(twiddle, memory_format=torch.contiguous_format), torch.empty_like(
        x, memory_format=torch.contiguous_format)


def _butterfly_setup(ctx, inputs, output):
    twiddle, x, ctx.increasing_stride, ctx.backend = inputs
    ctx.save_for_backward(twiddle, x)


def _butterfly_backward(ctx, grad):
    twiddle, x = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph: differentiable gradients through the torch forward
        d_tw, d_x = _grads_through(lambda tw, xx: butterfly_torch(tw, xx, ctx.increasing_stride), (twiddle, x),
                                   ctx.needs_input_grad[:2], grad)
    else:
        d_tw, d_x = butterfly_multiply_backward_op(grad.contiguous(), twiddle, x, ctx.increasing_stride, ctx.backend)
    return d_tw, d_x, None, None


butterfly_multiply_op.register_autograd(_butterfly_backward, setup_context=_butterfly_setup)


def transposed_twiddle(twiddle: torch.Tensor, increasing_stride: bool) -> tuple[torch.Tensor, bool]:
    """(twiddle', increasing_stride') with M' = Mᵀ: every 2×2 block transposed, the blocks and
    factors reversed, and the first stride direction that of the last block reversed."""
    nblocks = twiddle.shape[1]
    last_increasing = increasing_stride != (nblocks % 2 == 0)
    return twiddle.transpose(-1, -2).flip([1, 2]), not last_increasing


def butterfly_multiply(twiddle: torch.Tensor, x: torch.Tensor, *, increasing_stride: bool = True,
                       transpose: bool = False, backend: str = "auto") -> torch.Tensor:
    """The butterfly product y = M x (``transpose``: Mᵀ x) of torch_butterfly, per stack.

    twiddle: (nstacks, nblocks, log2 n, n/2, 2, 2), torch_butterfly's layout: factor idx of a
    block has stride 2^idx (``increasing_stride``) or 2^(log2 n − 1 − idx), blocks alternate
    the direction; pair p (a = (p // s)·2s + p % s, b = a + s) maps (x_a, x_b) by the 2×2
    matrix twiddle[stack, block, idx, p]. x: (batch, nstacks, n), n a power of two 2..2^20,
    any strides. Both the same dtype: float16, bfloat16, float32 (torch and triton),
    float64, complex64, complex128 (torch); the cuda backend (CUDA C++, CUDA tensors, reached
    by name only) takes the first three with n up to 2^14. Returns (batch, nstacks, n) in x's
    dtype, contiguous; half precision is computed in float32. Autograd for twiddle and x
    (double backward through the torch forward); torch.compile(fullgraph=True) works.
    backend: 'auto' | 'torch' | 'triton' | 'cuda' (env FASTSPEC_BACKEND replaces 'auto').
    Raises TypeError for a wrong type or dtype, ValueError for a wrong shape, n or
    device, RuntimeError for a backend that cannot run here.
    """
    _validate_butterfly(twiddle, x, increasing_stride)
    if not isinstance(transpose, bool):
        raise TypeError(f"butterfly_multiply: transpose must be a bool, got {type(transpose).__name__}")
    chosen = choose_backend("butterfly_multiply", backend, x.device, x.dtype)
    _check_butterfly_backend(chosen, x)
    if transpose:
        twiddle, increasing_stride = transposed_twiddle(twiddle, increasing_stride)
    return butterfly_multiply_op(twiddle, x, increasing_stride, chosen)


# ---------------------------------------------------------------------------- monarch op


@torch.library.custom_op("fastspec::monarch_multiply", mutates_args=())
def monarch_multiply_op(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, backend: str) -> torch.Tensor:
    """Registered op: the Monarch product on a concrete backend ('torch' | 'triton')."""
    _validate_monarch(x, w1, w2)
    _check_monarch_backend(backend, x, w1, w2)
    return _MONARCH[backend][0](x, w1, w2)


@monarch_multiply_op.register_fake
def _(x, w1, w2, backend):
    _, m = _validate_monarch(x, w1, w2)
    _check_monarch_backend(backend, x, w1, w2)
    return x.new_empty((*x.shape[:-1], m))


@torch.library.custom_op("fastspec::monarch_multiply_backward", mutates_args=())
def monarch_multiply_backward_op(grad: torch.Tensor, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                                 backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Registered op: (d x, d w1, d w2) of fastspec::monarch_multiply for the output gradient."""
    _validate_monarch(x, w1, w2)
    _check_monarch_backend(backend, x, w1, w2)
    return _MONARCH[backend][1](grad, x, w1, w2)


@monarch_multiply_backward_op.register_fake
def _(grad, x, w1, w2, backend):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(w1, memory_format=torch.contiguous_format),
            torch.empty_like(w2, memory_format=torch.contiguous_format))


def _monarch_setup(ctx, inputs, output):
    x, w1, w2, ctx.backend = inputs
    ctx.save_for_backward(x, w1, w2)


def _monarch_backward(ctx, grad):
    x, w1, w2 = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph: differentiable gradients through the torch forward
        grads = _grads_through(monarch_torch, (x, w1, w2), ctx.needs_input_grad[:3], grad)
    else:
        grads = monarch_multiply_backward_op(grad.contiguous(), x, w1, w2, ctx.backend)
    return (*grads, None)


monarch_multiply_op.register_autograd(_monarch_backward, setup_context=_monarch_setup)


def monarch_multiply(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """The Monarch product of fly's ``blockdiag_butterfly_multiply``: y = P₂·B₂·P₁·B₁·x per row.

    x: (..., n), any leading dims and strides; w1: (k, q, p) with k·p = n, the k diagonal
    blocks of B₁ (q × p each); w2: (l, s, r) with l·r = k·q, the l blocks of B₂ (s × r).
    P₁ reads B₁x as an (r, l) matrix and writes it as (l, r); P₂ reads B₂'s output as (l, s)
    and writes it as (s, l). All three the same dtype: float16, bfloat16, float32 (torch and
    triton), float64, complex64, complex128 (torch). The triton backend takes block sizes
    q, p, s, r that are powers of two from 16 to 128, any block counts (auto picks torch
    for the others). Returns (..., l·s) in x's dtype;
    half precision is computed in float32. Autograd for all three (double backward through
    the torch forward); torch.compile(fullgraph=True) works.
    backend: 'auto' | 'torch' | 'triton' (env FASTSPEC_BACKEND replaces 'auto').
    Raises TypeError for a wrong type or dtype, ValueError for inconsistent shapes or
    devices, RuntimeError for a backend that cannot run here.
    """
    _validate_monarch(x, w1, w2)
    chosen = choose_backend("monarch_multiply", backend, x.device, x.dtype, (tuple(w1.shape), tuple(w2.shape)))
    _check_monarch_backend(chosen, x, w1, w2)
    if chosen == "torch" and _backend.eager_plain(x, w1, w2):
        # Eagerly, autograd records the two bmm and keeps the intermediate (fly's backward, one
        # bmm fewer than the op's recompute); traced calls go through the op.
        return monarch_torch(x, w1, w2)
    return monarch_multiply_op(x, w1, w2, chosen)
