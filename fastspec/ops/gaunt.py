"""Gaunt tensor products: public functions, validation, custom op, autograd, torch backend.

``gaunt_tensor_product(x1, x2, lmax_out)``: channel-wise ``out_k = Σ_ij G[i, j, k] x1_i x2_j``
with ``G[i, j, k] = ∫ Y_i Y_j Y_k dΩ`` (fastspec.spherical): the degree-≤lmax_out spherical-
harmonic (SH) coefficients of the product f1·f2 of the functions f = Σ x_i Y_i (Luo, Chen,
Zhang, ICLR 2024). Methods, each exact for band-limited inputs:

- ``dense``: the contraction with the table, (L+1)^6 multiply-adds per row (CG kernels' cost).
- ``grid``: f1 and f2 at the nodes of a quadrature that integrates degree L1+L2+lmax_out
  exactly (Gauss–Legendre in cos θ × uniform φ), the pointwise product, and the projection
  ∫ f1 f2 Y_k dΩ as a weighted sum ("The Price of Freedom", ICML 2025): three matmuls with
  tables of O(L^4) entries.
- ``fourier``: each f as a 2D Fourier series in (θ, φ) on the torus θ ∈ [0, 2π) (the paper's
  change of basis, Sec. 3.2: Y_lm is a trig polynomial of degree l in θ and |m| in φ), the 2D
  convolution of the two series by FFT, and the projection back, using
  ∫_0^π e^{iwθ} sin θ dθ = (1 + e^{iπw}) / (1 − w²) (w ≠ ±1; ±iπ/2 at w = ±1).

All tables are float64, computed from the SH definition (fastspec.spherical) and cached per
degree, dtype and device. The gradient of x1 is the op on (x2, grad) projected to degree L1
(G is symmetric in its three indices), so the backward is the op itself: double backward and
torch.compile come with it.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from fastspec import _backend
from fastspec.spherical import degree_of, gaunt_coefficients, num_coefficients, sphere_quadrature, spherical_harmonics

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
METHODS = ("auto", "dense", "grid", "fourier")
MAX_INPUT_DEGREE = 24
"""Largest L1, L2 the op takes (the grid tables of degree 24 hold ~3·10^6 numbers)."""
DENSE_MAX_TABLE = 2**25
"""Largest Gaunt table (entries) the dense method contracts with (L1 = L2 = lmax_out = 16)."""
_DENSE_CHUNK = {"cpu": 2**22, "cuda": 2**26}
"""The dense method's intermediate (rows, d2, d3) holds at most this many entries at once
(16 MiB of float32 on CPU, to stay in cache; 256 MiB on CUDA, few launches)."""
AUTO_METHOD = "grid"
"""What ``method="auto"`` runs, on every backend and degree. Measured by bench/bench_gaunt.py on
this project's shared 2-core CPU (bench/results/gaunt-cpu.json, 1024 rows × 32 channels,
float32, one thread, 2026-11-28): grid is 2.0-8.3x faster than dense at L = 1..8 and the
fourier method 15-40x slower than grid (its complex FFTs over ~16L² torus points cost more
than the grid's real matmuls over ~4.5L² nodes). Triton runs the grid method only. No GPU has
measured the crossovers yet (bench/gpu_check.sh does): a dense path for small L on CUDA goes here."""

# backend="auto": CUDA tensors take the Triton kernel (grid method; it passes its interpreter
# tests, DESIGN.md) wherever it takes the call; no GPU has measured the crossovers yet.
AUTO_CUDA = ("triton", "torch")


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------- tables


@functools.lru_cache(maxsize=32)
def grid_tables(l1: int, l2: int, lmax_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Y1 (d1, P), Y2 (d2, P), proj (P, d3)), float64 on the CPU: SH values at the P nodes of
    the quadrature exact to degree l1+l2+lmax_out, and the weighted values that project back:
    out = ((x1 @ Y1) * (x2 @ Y2)) @ proj."""
    points, weights = sphere_quadrature(l1 + l2 + lmax_out)
    y = spherical_harmonics(max(l1, l2, lmax_out), points)
    return (y[:, :num_coefficients(l1)].T.contiguous(), y[:, :num_coefficients(l2)].T.contiguous(),
            (y[:, :num_coefficients(lmax_out)] * weights[:, None]).contiguous())


@functools.lru_cache(maxsize=32)
def torus_fourier_coefficients(lmax: int) -> torch.Tensor:
    """c (d, 2L+1, 2L+1) complex128 with Y_i(θ, φ) = Σ_uv c[i, u, v] e^{i(uθ + vφ)} for θ, φ in
    [0, 2π) (θ past π: the same polynomial in (sin θ cos φ, sin θ sin φ, cos θ)); u, v in FFT
    order (0..L, −L..−1). Exact: the FFT of the values on a (2L+1)² grid."""
    n = 2 * lmax + 1
    angle = 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
    theta, phi = angle[:, None], angle[None, :]
    xyz = torch.stack(torch.broadcast_tensors(theta.sin() * phi.cos(), theta.sin() * phi.sin(), theta.cos()), dim=-1)
    values = spherical_harmonics(lmax, xyz).permute(2, 0, 1)
    return torch.fft.fft2(values, norm="forward")


def _sin_integral(w: torch.Tensor) -> torch.Tensor:
    """∫_0^π e^{iwθ} sin θ dθ for integer w (complex128)."""
    even = (w % 2 == 0).double()
    real = even * 2 / (1 - w.double() ** 2).where(w.abs() != 1, torch.ones((), dtype=torch.float64))
    imag = torch.where(w.abs() == 1, w.double() * math.pi / 2, torch.zeros((), dtype=torch.float64))
    return torch.complex(real, imag)


@functools.lru_cache(maxsize=32)
def fourier_tables(l1: int, l2: int, lmax_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(T1 (d1, 2L1+1, L1+1, 2), T2, proj (M, M//2+1, 2, d3)), float64 on the CPU, M = 2(L1+L2)+1.

    T: the half spectrum (v ≥ 0) of each Y_i as (real, imag), so x @ T is f's half spectrum.
    proj: out_k = Re Σ_uv P[u, v] W_k[u, v] over the full spectrum P of f1·f2, written for
    its half spectrum (P[−u, −v] = conj P[u, v], so a column v > 0 counts twice) as
    out = Pr @ proj[..., 0, :] + Pi @ proj[..., 1, :]. W_k[u, v] = ∫_S² e^{i(uθ+vφ)} Y_k dΩ
    = 2π Σ_u' c_k[u', −v] I(u + u'), I the sine integral above."""
    half = []
    for lmax in (l1, l2):
        c = torus_fourier_coefficients(lmax)[:, :, :lmax + 1]
        half.append(torch.view_as_real(c).contiguous())
    m = 2 * (l1 + l2) + 1
    c = torus_fourier_coefficients(lmax_out)  # (d3, u', v') FFT order, |u'|, |v'| ≤ lmax_out
    n3 = 2 * lmax_out + 1
    freq_m = torch.fft.fftfreq(m, 1 / m).round().long()  # u of the product's spectrum, FFT order
    freq_3 = torch.fft.fftfreq(n3, 1 / n3).round().long()
    sin_int = _sin_integral(freq_m[:, None] + freq_3[None, :])  # (u, u')
    w = 2 * math.pi * torch.einsum("uw,kwv->kuv", sin_int, c)  # (d3, u, v'): W_k at (u, v = −v')
    weights = torch.zeros(num_coefficients(lmax_out), m, m // 2 + 1, dtype=torch.complex128)
    for col, v in enumerate(freq_3.tolist()):
        if 0 <= -v <= m // 2:
            weights[:, :, -v] = w[:, :, col]
    fold = torch.full((m // 2 + 1,), 2.0, dtype=torch.float64)
    fold[0] = 1.0
    weights = weights * fold
    proj = torch.stack([weights.real, -weights.imag], dim=-1)  # Re(P W) = Pr Wr − Pi Wi
    return half[0], half[1], proj.permute(1, 2, 3, 0).contiguous()


@functools.lru_cache(maxsize=64)
def _cast(kind: str, l1: int, l2: int, lmax_out: int, dtype: torch.dtype, device: torch.device):
    tables = {"grid": grid_tables, "fourier": fourier_tables,
              "dense": lambda *ls: (gaunt_coefficients(*ls),)}[kind](l1, l2, lmax_out)
    return tuple(t.to(device=device, dtype=dtype) for t in tables)


def tables(kind: str, l1: int, l2: int, lmax_out: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, ...]:
    """The method's tables cast to ``dtype`` on ``device`` (cached)."""
    return _cast(kind, l1, l2, lmax_out, dtype, torch.device(device))


# ---------------------------------------------------------------------------- torch backend


def _dense(x1: torch.Tensor, x2: torch.Tensor, lmax_out: int) -> torch.Tensor:
    """x1 (n, d1), x2 (n, d2) in the compute dtype -> (n, d3): Σ_ij G_ijk x1_i x2_j in chunks."""
    (g,) = tables("dense", degree_of(x1.shape[1]), degree_of(x2.shape[1]), lmax_out, x1.dtype, x1.device)
    d1, d2, d3 = g.shape
    rows = max(1, _DENSE_CHUNK.get(x1.device.type, _DENSE_CHUNK["cpu"]) // (d2 * d3))
    out = [(a @ g.view(d1, d2 * d3)).view(-1, d2, d3).mul_(b[:, :, None]).sum(1)
           for a, b in zip(x1.split(rows), x2.split(rows))]
    return torch.cat(out) if len(out) > 1 else out[0]


def _grid(x1: torch.Tensor, x2: torch.Tensor, lmax_out: int) -> torch.Tensor:
    y1, y2, proj = tables("grid", degree_of(x1.shape[1]), degree_of(x2.shape[1]), lmax_out, x1.dtype, x1.device)
    return ((x1 @ y1) * (x2 @ y2)) @ proj


def _fourier(x1: torch.Tensor, x2: torch.Tensor, lmax_out: int) -> torch.Tensor:
    l1, l2 = degree_of(x1.shape[1]), degree_of(x2.shape[1])
    t1, t2, proj = tables("fourier", l1, l2, lmax_out, x1.dtype, x1.device)
    m, n = 2 * (l1 + l2) + 1, x1.shape[0]
    values = []
    for x, t, l in ((x1, t1, l1), (x2, t2, l2)):
        half = torch.view_as_complex((x @ t.view(t.shape[0], -1)).view(n, 2 * l + 1, l + 1, 2))
        # zero-pad to the product's size M in both frequencies (FFT order: negative u last)
        padded = torch.cat([half[:, :l + 1], half.new_zeros(n, m - 2 * l - 1, l + 1), half[:, l + 1:]], dim=1)
        padded = F.pad(padded, (0, m // 2 - l))
        values.append(torch.fft.irfft2(padded, s=(m, m), norm="forward"))
    spectrum = torch.view_as_real(torch.fft.rfft2(values[0] * values[1], norm="forward"))
    return spectrum.reshape(n, -1) @ proj.view(-1, proj.shape[-1])


_METHODS_TORCH = {"dense": _dense, "grid": _grid, "fourier": _fourier}


def gaunt_torch(x1: torch.Tensor, x2: torch.Tensor, lmax_out: int, method: str) -> torch.Tensor:
    """The torch backend: x1 (..., d1), x2 (..., d2) of one leading shape and dtype ->
    (..., d3) in that dtype; half precision computed in float32."""
    lead = x1.shape[:-1]
    acc = _acc(x1.dtype)
    a, b = x1.reshape(-1, x1.shape[-1]).to(acc), x2.reshape(-1, x2.shape[-1]).to(acc)
    out = _METHODS_TORCH[method](a, b, lmax_out)
    return out.reshape(*lead, out.shape[-1]).to(x1.dtype)


def _gaunt_triton(x1, x2, lmax_out, method):
    from fastspec.triton_kernels import gaunt as kernels

    return kernels.gaunt_grid(x1, x2, lmax_out)


_IMPLS = {"torch": gaunt_torch, "triton": _gaunt_triton}


# ---------------------------------------------------------------------------- validation


def _degree(op: str, name: str, t: torch.Tensor) -> int:
    lmax = degree_of(int(t.shape[-1])) if t.dim() else None
    if lmax is None:
        raise ValueError(f"{op}: the last dim of {name} must be (L+1)² (1, 4, 9, 16, ...) for a degree L, "
                         f"got shape {tuple(t.shape)}")
    if lmax > MAX_INPUT_DEGREE:
        raise ValueError(f"{op}: {name} has degree {lmax}; degrees up to {MAX_INPUT_DEGREE} are supported")
    return lmax


def _check_tensor(op: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def _unsupported(backend: str, method: str, dtype: torch.dtype, l1: int, l2: int, lmax_out: int) -> str | None:
    """Why ``backend`` cannot run ``method`` here, or None."""
    if method == "dense" and num_coefficients(l1) * num_coefficients(l2) * num_coefficients(lmax_out) > DENSE_MAX_TABLE:
        return (f"method='dense' takes Gaunt tables of up to {DENSE_MAX_TABLE} entries, degrees ({l1}, {l2}, {lmax_out}) "
                "need more (use method='grid')")
    if backend == "triton":
        if method != "grid":
            return f"the triton backend runs method='grid' only, got method={method!r}"
        if dtype == torch.float64:
            return "the triton backend takes float16, bfloat16 and float32 (use backend='torch' for float64)"
    return None


def _validate_op(x1, x2, lmax_out: int, method: str, backend: str) -> tuple[int, int]:
    """The registered op's checks (the public function has broadcast already)."""
    op = "gaunt_tensor_product"
    _check_tensor(op, "x1", x1)
    _check_tensor(op, "x2", x2)
    if x1.dtype != x2.dtype or x1.device != x2.device:
        raise ValueError(f"{op}: x1 and x2 must have one dtype and device, got {x1.dtype} on {x1.device} and "
                         f"{x2.dtype} on {x2.device}")
    if x1.shape[:-1] != x2.shape[:-1]:
        raise ValueError(f"{op}: the op takes x1 and x2 of one leading shape, got {tuple(x1.shape)} and {tuple(x2.shape)}")
    l1, l2 = _degree(op, "x1", x1), _degree(op, "x2", x2)
    if isinstance(lmax_out, bool) or not isinstance(lmax_out, int) or lmax_out < 0:
        raise ValueError(f"{op}: lmax_out must be a non-negative int, got {lmax_out!r}")
    if method not in METHODS[1:]:
        raise ValueError(f"{op}: method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    _check_implemented(backend)
    reason = _unsupported(backend, method, x1.dtype, l1, l2, min(lmax_out, l1 + l2))
    if reason:
        raise ValueError(f"{op}: {reason}")
    return l1, l2


def _check_implemented(backend: str) -> None:
    if backend not in _IMPLS:
        raise NotImplementedError(f"gaunt_tensor_product: the {backend!r} backend has no implementation of this op "
                                  f"(implemented: {', '.join(_IMPLS)})")


def _auto_backend(device: torch.device, dtype: torch.dtype, method: str) -> str:
    if device.type != "cuda":
        return "torch"
    for name in AUTO_CUDA:
        if _backend.device_ok(name, device) is None and (name == "torch" or (method in ("auto", "grid")
                                                                             and dtype != torch.float64)):
            return name
    return "torch"


@torch.compiler.assume_constant_result
def choose_backend(backend: str, device: torch.device, dtype: torch.dtype, method: str) -> str:
    """The concrete backend for a call (``auto`` resolved through AUTO_CUDA)."""
    return _backend.resolve("gaunt_tensor_product", backend, device, lambda: _auto_backend(device, dtype, method))


def choose_method(method: str, backend: str, l1: int, l2: int, lmax_out: int) -> str:
    """The concrete method: ``auto`` is AUTO_METHOD (the table above)."""
    return AUTO_METHOD if method == "auto" else method


# ---------------------------------------------------------------------------- the op


@torch.library.custom_op("fastspec::gaunt_tensor_product", mutates_args=())
def gaunt_op(x1: torch.Tensor, x2: torch.Tensor, lmax_out: int, method: str, backend: str) -> torch.Tensor:
    """Registered op: x1 (..., (L1+1)²), x2 (..., (L2+1)²) of one leading shape -> (...,
    (lmax_out+1)²), concrete method and backend. Degrees above L1+L2 are zero (the backward
    asks for them)."""
    l1, l2 = _validate_op(x1, x2, lmax_out, method, backend)
    if x1.shape[:-1].numel() == 0:  # no rows (torch.fft rejects empty batches)
        return x1.new_empty(*x1.shape[:-1], num_coefficients(lmax_out))
    computed = min(lmax_out, l1 + l2)
    out = _IMPLS[backend](x1, x2, computed, method)
    if computed < lmax_out:
        out = F.pad(out, (0, num_coefficients(lmax_out) - num_coefficients(computed)))
    return out


@gaunt_op.register_fake
def _(x1, x2, lmax_out, method, backend):
    _validate_op(x1, x2, lmax_out, method, backend)
    return x1.new_empty(*x1.shape[:-1], num_coefficients(lmax_out))


def _setup_context(ctx, inputs, output):
    x1, x2, _, ctx.method, ctx.backend = inputs
    ctx.save_for_backward(x1, x2)


def _backward(ctx, grad):
    # ∂out_k/∂x1_i = Σ_j G_ijk x2_j and G is symmetric: grad_x1 = op(x2, grad) at degree L1.
    x1, x2 = ctx.saved_tensors
    l1, l2 = degree_of(x1.shape[-1]), degree_of(x2.shape[-1])
    grad_x1 = gaunt_op(x2, grad, l1, ctx.method, ctx.backend) if ctx.needs_input_grad[0] else None
    grad_x2 = gaunt_op(x1, grad, l2, ctx.method, ctx.backend) if ctx.needs_input_grad[1] else None
    return grad_x1, grad_x2, None, None, None


gaunt_op.register_autograd(_backward, setup_context=_setup_context)


def gaunt_tensor_product(x1: torch.Tensor, x2: torch.Tensor, lmax_out: int | None = None, *,
                         method: str = "auto", backend: str = "auto") -> torch.Tensor:
    """Channel-wise Gaunt tensor product ``out_k = Σ_ij G[i, j, k] x1_i x2_j``,
    G[i, j, k] = ∫ Y_i Y_j Y_k dΩ: the SH coefficients (degrees ≤ lmax_out) of the product of
    the functions Σ x1_i Y_i and Σ x2_j Y_j on the sphere.

    x1: (..., C, (L1+1)²), x2: (..., C', (L2+1)²), C' = C or one of them 1, the leading dims
    broadcast; float16, bfloat16, float32 (float64 on the torch backend), one dtype; any
    strides. Returns (..., C, (lmax_out+1)²) in that dtype, half precision computed in
    float32. lmax_out: 0..L1+L2 (default L1+L2). L1, L2 ≤ MAX_INPUT_DEGREE.
    Only paths with l1 + l2 + l3 even occur (G vanishes otherwise): there is no
    antisymmetric (cross-product-like) path; use a Clebsch–Gordan tensor product (e.g.
    e3nn's o3.TensorProduct) where those are needed.
    method: 'auto' | 'dense' | 'grid' | 'fourier' (module docstring); backend: 'auto' |
    'torch' | 'triton' (grid method; CUDA tensors, or CPU under TRITON_INTERPRET=1);
    env FASTSPEC_BACKEND replaces 'auto'. Autograd for both inputs (double backward too).
    Raises TypeError for a non-tensor or non-float input, ValueError for a last dim that is
    not (L+1)², channels that do not broadcast, lmax_out outside 0..L1+L2, an unknown
    method, or a method the backend does not run; RuntimeError for a backend that cannot run here;
    NotImplementedError for a backend without this op ('cuda', 'cpu', e.g. from FASTSPEC_BACKEND).
    """
    op = "gaunt_tensor_product"
    _check_tensor(op, "x1", x1)
    _check_tensor(op, "x2", x2)
    if x1.dtype != x2.dtype:
        raise TypeError(f"{op}: x1 and x2 must have one dtype, got {x1.dtype} and {x2.dtype}")
    if x1.device != x2.device:
        raise ValueError(f"{op}: x1 and x2 must be on one device, got {x1.device} and {x2.device}")
    if x1.dim() < 2 or x2.dim() < 2:
        raise ValueError(f"{op}: x1 and x2 must be (..., C, (L+1)²) with a channel dim, got shapes "
                         f"{tuple(x1.shape)} and {tuple(x2.shape)}")
    l1, l2 = _degree(op, "x1", x1), _degree(op, "x2", x2)
    c1, c2 = x1.shape[-2], x2.shape[-2]
    if c1 != c2 and 1 not in (c1, c2):
        raise ValueError(f"{op}: x1 and x2 must have the same number of channels or one of them 1, got {c1} and {c2}")
    try:
        lead = torch.broadcast_shapes(x1.shape[:-1], x2.shape[:-1])
    except RuntimeError as exc:
        raise ValueError(f"{op}: the leading dims of x1 {tuple(x1.shape[:-1])} and x2 {tuple(x2.shape[:-1])} "
                         "do not broadcast") from exc
    lmax_out = l1 + l2 if lmax_out is None else lmax_out
    if isinstance(lmax_out, bool) or not isinstance(lmax_out, int) or not 0 <= lmax_out <= l1 + l2:
        raise ValueError(f"{op}: lmax_out must be an int in 0..L1+L2 = 0..{l1 + l2} (the product has no higher "
                         f"degree), got {lmax_out!r}")
    if method not in METHODS:
        raise ValueError(f"{op}: method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    chosen = choose_backend(backend, x1.device, x1.dtype, method)
    _check_implemented(chosen)
    method = choose_method(method, chosen, l1, l2, lmax_out)
    reason = _unsupported(chosen, method, x1.dtype, l1, l2, lmax_out)
    if reason:
        raise ValueError(f"{op}: {reason}")
    x1 = x1.expand(*lead, x1.shape[-1])
    x2 = x2.expand(*lead, x2.shape[-1])
    return gaunt_op(x1, x2, lmax_out, method, chosen)


# ---------------------------------------------------------------------------- gaunt_power


@functools.lru_cache(maxsize=32)
def power_tables(lmax: int, nu: int, lmax_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Y (d, P), proj (P, d_out)) float64 on the CPU: the grid exact to degree ν·L + lmax_out."""
    points, weights = sphere_quadrature(nu * lmax + lmax_out)
    y = spherical_harmonics(max(lmax, lmax_out), points)
    return y[:, :num_coefficients(lmax)].T.contiguous(), (y[:, :num_coefficients(lmax_out)] * weights[:, None]).contiguous()


@functools.lru_cache(maxsize=64)
def _power_cast(lmax: int, nu: int, lmax_out: int, dtype: torch.dtype, device: torch.device):
    return tuple(t.to(device=device, dtype=dtype) for t in power_tables(lmax, nu, lmax_out))


@torch.library.custom_op("fastspec::gaunt_power", mutates_args=())
def gaunt_power_op(x: torch.Tensor, nu: int, lmax_out: int) -> torch.Tensor:
    """Registered op: x (..., (L+1)²) -> the degree-≤lmax_out coefficients of f^ν (torch
    ops, any device; half precision in float32)."""
    acc = _acc(x.dtype)
    y, proj = _power_cast(degree_of(x.shape[-1]), nu, lmax_out, acc, x.device)
    return (((x.to(acc) @ y) ** nu) @ proj).to(x.dtype)


@gaunt_power_op.register_fake
def _(x, nu, lmax_out):
    return x.new_empty(*x.shape[:-1], num_coefficients(lmax_out))


def _power_setup(ctx, inputs, output):
    x, ctx.nu, ctx.lmax_out = inputs
    ctx.save_for_backward(x)


def _power_backward(ctx, grad):
    # ∂out_k/∂x_i = ν ∫ f^(ν−1) Y_i Y_k dΩ: grad_x = ν · gaunt(f^(ν−1), grad) at degree L, with
    # f^(ν−1) exact at degree (ν−1)·L (f^0 = 1 = √(4π)·Y_00). Both are registered ops.
    (x,) = ctx.saved_tensors
    lmax, nu = degree_of(x.shape[-1]), ctx.nu
    if nu == 1:
        lower = torch.full((*x.shape[:-1], 1), math.sqrt(4 * math.pi), dtype=x.dtype, device=x.device)
    else:
        lower = gaunt_power_op(x, nu - 1, (nu - 1) * lmax)
    return nu * gaunt_op(lower, grad, lmax, "grid", "torch"), None, None


gaunt_power_op.register_autograd(_power_backward, setup_context=_power_setup)


def gaunt_power(x: torch.Tensor, nu: int, lmax_out: int | None = None) -> torch.Tensor:
    """The ν-fold Gaunt product x·x·…·x (MACE-Gaunt's many-body terms): the SH coefficients
    (degrees ≤ lmax_out, default ν·L) of f^ν, f = Σ x_i Y_i, computed on one quadrature grid
    exact to degree ν·L + lmax_out: f at the nodes, its ν-th power, one projection (the
    factors never leave the grid). x: (..., (L+1)²), float16/bfloat16/float32 (computed in
    float32) or float64, L ≤ MAX_INPUT_DEGREE; nu: 1..8. Torch ops on any device; autograd
    (the backward is a Gaunt product with f^(ν−1), so double backward works) and torch.compile.
    Raises TypeError/ValueError for a bad x, nu outside 1..8 or lmax_out outside 0..ν·L."""
    op = "gaunt_power"
    _check_tensor(op, "x", x)
    lmax = _degree(op, "x", x)
    if isinstance(nu, bool) or not isinstance(nu, int) or not 1 <= nu <= 8:
        raise ValueError(f"{op}: nu must be an int in 1..8, got {nu!r}")
    lmax_out = nu * lmax if lmax_out is None else lmax_out
    if isinstance(lmax_out, bool) or not isinstance(lmax_out, int) or not 0 <= lmax_out <= nu * lmax:
        raise ValueError(f"{op}: lmax_out must be an int in 0..nu·L = 0..{nu * lmax}, got {lmax_out!r}")
    return gaunt_power_op(x, nu, lmax_out)
