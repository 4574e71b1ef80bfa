"""Reference state-space-model ops, written for clarity: sequential loops over time and the
materialised Vandermonde matrix, in float64 by default; the tests check every backend
against these and take their gradients by autograd.

- ``linear_scan_reference``: x_t = a_t·x_{t−1} + b_t, one step at a time.
- ``selective_scan_reference``: mamba_ssm's ``selective_scan_fn`` as its definition reads
  (a loop over L; ``dtype=torch.float32`` is mamba's ``selective_scan_ref``, the PyTorch loop
  the benchmarks time), plus an initial state.
- ``selective_state_update_reference``: one decoding step (single- and multi-head forms).
- ``selective_scan_parallel_pytorch``: the benchmarks' vectorised PyTorch baseline, the
  whole-length doubling scan (Hillis–Steele, as pure-PyTorch Mamba ports do it) over the
  materialised (B, D, N, L) decays and inputs, float32.
- ``ssm_kernel_reference``: the S4D kernel as the product of C·B̄ with the (N, L)
  Vandermonde matrix of powers of Ā (S4D's ``log_vandermonde_naive``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _wide(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype.is_complex else torch.float64


def linear_scan_reference(gates: torch.Tensor, tokens: torch.Tensor, initial: torch.Tensor | None = None, *,
                          reverse: bool = False) -> torch.Tensor:
    """x_t = gates_t·x_{t−1} + tokens_t along the last dim (x_{−1} = initial, or 0), or with
    ``reverse`` x_t = gates_t·x_{t+1} + tokens_t (x_T = initial). gates, tokens (B, C, T),
    initial (B, C); float64 (complex128 for complex input)."""
    wide = _wide(tokens.dtype)
    a, b = gates.to(wide), tokens.to(wide)
    x = torch.zeros(b.shape[:-1], dtype=wide, device=b.device) if initial is None else initial.to(wide)
    out = torch.empty_like(b)
    steps = range(b.shape[-1] - 1, -1, -1) if reverse else range(b.shape[-1])
    for t in steps:
        x = a[..., t] * x + b[..., t]
        out[..., t] = x
    return out


def _per_channel(M: torch.Tensor, D: int) -> torch.Tensor:
    """B or C as (batch or 1, D, N, L or 1): (D, N) fixed, (B, N, L) shared by all channels,
    (B, G, N, L) channel d reading group d // (D / G)."""
    if M.dim() == 2:
        return M[None, :, :, None]
    if M.dim() == 3:
        return M[:, None]
    return M.repeat_interleave(D // M.shape[1], dim=1)


def _delta(delta, delta_bias, softplus, dtype):
    """Δ = softplus(delta + delta_bias) (or without softplus) in ``dtype``."""
    dt = delta.to(dtype) if delta_bias is None else delta.to(dtype) + delta_bias.to(dtype)[:, None]
    return F.softplus(dt) if softplus else dt


def _output(y, u, D, z, dtype):
    """(y + D·u)·silu(z) in ``dtype``."""
    if D is not None:
        y = y + D.to(dtype)[:, None] * u.to(dtype)
    return y if z is None else y * F.silu(z.to(dtype))


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                             initial_state=None, return_last_state=False, *, dtype=torch.float64):
    """mamba_ssm's selective scan, step by step in ``dtype``; per batch b, channel d, state n:

        Δ_t = softplus(delta_t + delta_bias) (or without softplus),  x_{−1} = initial_state (or 0)
        x_t[n] = exp(Δ_t·A[n])·x_{t−1}[n] + Δ_t·B_t[n]·u_t
        y_t = Σ_n C_t[n]·x_t[n] + D·u_t,   out_t = y_t·silu(z_t)

    u, delta, z (B, D, L); A (D, N); B, C (D, N), (B, N, L) or (B, G, N, L); D, delta_bias (D,);
    initial_state (B, D, N). Returns out (B, D, L) and, with ``return_last_state``, x_{L−1}
    (B, D, N), both in ``dtype``.
    """
    u, delta, A = u.to(dtype), _delta(delta, delta_bias, delta_softplus, dtype), A.to(dtype)
    channels = u.shape[1]
    Bc, Cc = (_per_channel(M.to(dtype), channels) for M in (B, C))
    x = u.new_zeros(u.shape[0], channels, A.shape[1]) if initial_state is None else initial_state.to(dtype)
    ys = []
    for t in range(u.shape[-1]):
        dt = delta[..., t, None]
        x = torch.exp(dt * A) * x + dt * Bc[..., min(t, Bc.shape[-1] - 1)] * u[..., t, None]
        ys.append((x * Cc[..., min(t, Cc.shape[-1] - 1)]).sum(-1))
    out = _output(torch.stack(ys, dim=-1), u, D, z, dtype)
    return (out, x) if return_last_state else out


def selective_scan_parallel_pytorch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The selective scan (as ``selective_scan_reference``, no initial state) by log2(L)
    doubling passes over the full (B, D, N, L) tensors of decays exp(Δ·A) and inputs Δ·B·u,
    in float32; returns out in u's dtype."""
    f32 = torch.float32
    dt = _delta(delta, delta_bias, delta_softplus, f32)
    channels = u.shape[1]
    a = torch.exp(dt[:, :, None] * A[None, :, :, None])
    b = (dt * u.to(f32))[:, :, None] * _per_channel(B.to(f32), channels)
    step = 1
    while step < u.shape[-1]:
        b = torch.cat([b[..., :step], b[..., step:] + a[..., step:] * b[..., :-step]], dim=-1)
        a = torch.cat([a[..., :step], a[..., step:] * a[..., :-step]], dim=-1)
        step *= 2
    return _output((b * _per_channel(C.to(f32), channels)).sum(2), u, D, z, f32).to(u.dtype)


def selective_state_update_reference(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One step of the selective scan from ``state``, in float64, not in place: returns
    (new_state, out). Single-head: state (B, D, N), x/dt/z (B, D), A (D, N), B/C (B, N),
    D/dt_bias (D,). Multi-head: state (B, H, D, N), x/dt/z (B, H, D), A (H, D, N), B/C
    (B, G, N) (head h reads group h // (H / G)), D/dt_bias (H, D)."""
    f64 = torch.float64
    dt = dt.to(f64) if dt_bias is None else dt.to(f64) + dt_bias.to(f64)
    if dt_softplus:
        dt = F.softplus(dt)
    if state.dim() == 4:
        B, C = (M.to(f64).repeat_interleave(state.shape[1] // M.shape[1], dim=1)[:, :, None] for M in (B, C))
    else:
        B, C = B.to(f64)[:, None], C.to(f64)[:, None]
    x64 = x.to(f64)
    new_state = torch.exp(dt[..., None] * A.to(f64)) * state.to(f64) + dt[..., None] * B * x64[..., None]
    out = (new_state * C).sum(-1)
    if D is not None:
        out = out + D.to(f64) * x64
    if z is not None:
        out = out * F.silu(z.to(f64))
    return new_state, out


def ssm_kernel_reference(A, B, C, log_dt, L: int, discretization: str = "zoh", *,
                         dtype: torch.dtype = torch.complex128) -> torch.Tensor:
    """K (H, L) = 2·Re Σ_n C[h,n]·B̄[h,n]·Ā[h,n]^l by materialising the (H, N, L) matrix
    Ā^l = exp(l·log Ā) in ``dtype`` (complex128: the reference; complex64: S4D's
    ``log_vandermonde_naive``, the benchmarks' baseline). Δ = exp(log_dt);
    ZOH: Ā = exp(ΔA), B̄ = (Ā − 1)/A·B; bilinear: Ā = (1 + ΔA/2)/(1 − ΔA/2), B̄ = Δ·B/(1 − ΔA/2).
    A, B, C (H, N) complex; log_dt (H,) real. Returns the real dtype of ``dtype``."""
    dt = torch.exp(log_dt.to(dtype.to_real()))[:, None]
    A, B, C = A.to(dtype), B.to(dtype), C.to(dtype)
    if discretization == "zoh":
        log_a = dt * A
        b_bar = (torch.exp(log_a) - 1) / A * B
    else:
        log_a = torch.log((1 + dt * A / 2) / (1 - dt * A / 2))
        b_bar = dt * B / (1 - dt * A / 2)
    powers = torch.exp(log_a[..., None] * torch.arange(L, device=A.device, dtype=dtype.to_real()))
    return 2 * torch.einsum("hn,hnl->hl", C * b_bar, powers).real
