"""State-space layers on the fastspec SSM ops: S4D (convolution mode, the kernel by
``ssm_kernel``, the convolution by ``fft_conv``) and SelectiveSSM (the Mamba-1 mixer, by
``selective_scan``, with a ``step`` for decoding by ``selective_state_update``)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastspec.hippo import S4D_INITS, init_log_dt, s4d_init
from fastspec.ops.fftconv import fft_conv
from fastspec.ops.ssm import selective_scan, selective_state_update, ssm_kernel

_ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu, "tanh": torch.tanh, "identity": lambda x: x}
_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}


class S4D(torch.nn.Module):
    """S4D layer (Gu et al. 2022): y = act(K ∗ u + D·u) per channel, K = ``ssm_kernel`` of a
    diagonal SSM of ``d_state // 2`` complex modes (conjugates implied: state size d_state).

    u: (B, d_model, L), any L; float16/bfloat16/float32 (float64 with dtype=float64).
    Parameters: ``log_dt`` (H,), A = −exp(``log_A_real``) + i·``A_imag`` (H, N) (Re A < 0 by
    construction), ``B`` and ``C`` (H, N) complex, ``D`` (H,). Init: A and B by
    ``fastspec.hippo.s4d_init(init, ...)`` (legs, lin, inv, real), C complex standard normal,
    log Δ log-uniform in [dt_min, dt_max], D standard normal. ``discretization``: 'zoh' or
    'bilinear'. ``activation``: gelu, silu, relu, tanh or identity.
    """

    def __init__(self, d_model: int, d_state: int = 64, *, init: str = "legs", dt_min: float = 1e-3,
                 dt_max: float = 1e-1, discretization: str = "zoh", activation: str = "gelu", backend: str = "auto",
                 device=None, dtype=None):
        super().__init__()
        if init not in S4D_INITS:
            raise ValueError(f"S4D: init must be one of {', '.join(map(repr, S4D_INITS))}; got {init!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"S4D: activation must be one of {', '.join(map(repr, _ACTIVATIONS))}; got {activation!r}")
        if d_model < 1 or d_state < 2:
            raise ValueError(f"S4D: need d_model >= 1 and d_state >= 2, got {d_model}, {d_state}")
        real = dtype or torch.float32
        if real not in _COMPLEX_OF:
            raise TypeError(f"S4D: parameters are float32 or float64, got dtype={real}")
        self.d_model, self.d_state, self.init = d_model, d_state, init
        self.dt_range, self.discretization, self.activation, self.backend = (dt_min, dt_max), discretization, \
            activation, backend
        N, cdtype = d_state // 2, _COMPLEX_OF[real]
        self.log_dt = torch.nn.Parameter(torch.empty(d_model, device=device, dtype=real))
        self.log_A_real = torch.nn.Parameter(torch.empty(d_model, N, device=device, dtype=real))
        self.A_imag = torch.nn.Parameter(torch.empty(d_model, N, device=device, dtype=real))
        self.B = torch.nn.Parameter(torch.empty(d_model, N, device=device, dtype=cdtype))
        self.C = torch.nn.Parameter(torch.empty(d_model, N, device=device, dtype=cdtype))
        self.D = torch.nn.Parameter(torch.empty(d_model, device=device, dtype=real))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        H, N = self.C.shape
        A, B = s4d_init(self.init, H, N, dtype=torch.complex128)
        with torch.no_grad():
            self.log_dt.copy_(init_log_dt(H, *self.dt_range, dtype=torch.float64))
            self.log_A_real.copy_(torch.log(-A.real))
            self.A_imag.copy_(A.imag)
            self.B.copy_(B)
            self.C.copy_(torch.randn(H, N, dtype=torch.complex128))
            self.D.normal_()

    @property
    def A(self) -> torch.Tensor:
        """A (H, N) complex: −exp(log_A_real) + i·A_imag."""
        return torch.complex(-torch.exp(self.log_A_real), self.A_imag)

    def kernel(self, L: int) -> torch.Tensor:
        """K (H, L) real, by ``fastspec.ssm_kernel``."""
        return ssm_kernel(self.A, self.B, self.C, self.log_dt, L, discretization=self.discretization,
                          backend=self.backend)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u (B, d_model, L) → (B, d_model, L) in u's dtype."""
        if u.dim() != 3 or u.shape[1] != self.d_model:
            raise ValueError(f"S4D(d_model={self.d_model}): u must be (B, {self.d_model}, L), got {tuple(u.shape)}")
        y = fft_conv(u, self.kernel(u.shape[-1]), D=self.D, backend=self.backend)
        return _ACTIVATIONS[self.activation](y)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, init={self.init!r}, "
                f"discretization={self.discretization!r}, activation={self.activation!r}")


class SelectiveSSM(torch.nn.Module):
    """The Mamba-1 mixer (Gu & Dao 2023; mamba_ssm's ``Mamba``) on fastspec's selective scan.

    hidden (B, L, d_model) → in_proj → x, z (d_inner = expand·d_model each) → causal
    depthwise conv (d_conv taps) + SiLU on x → x_proj → Δ (dt_rank), B, C (d_state each) →
    Δ = dt_proj(Δ) → selective_scan(x, Δ, A, B, C, D, z, delta_bias=dt_proj.bias,
    softplus) → out_proj. Mamba's initialisation: A = −(1 … d_state) per channel (A_log),
    D = 1, dt_proj.weight uniform in ±dt_scale/√dt_rank ('random') or constant, dt_proj.bias
    the inverse softplus of Δ log-uniform in [dt_min, dt_max] (at least dt_init_floor);
    the Linear and Conv1d layers otherwise as PyTorch initialises them.

    ``step(hidden, conv_state, ssm_state)`` decodes one token, updating the two states in
    place (``allocate_inference_cache`` makes them); ``forward(hidden, cache=(conv_state,
    ssm_state))`` fills them after a prompt, so decoding continues it. Token by token,
    ``step`` gives what ``forward`` gives.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int | str = "auto",
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init: str = "random", dt_scale: float = 1.0,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False, *, backend: str = "auto",
                 device=None, dtype=None):
        super().__init__()
        if dt_init not in ("random", "constant"):
            raise ValueError(f"SelectiveSSM: dt_init must be 'random' or 'constant', got {dt_init!r}")
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.backend = d_model, d_state, d_conv, backend
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.in_proj = torch.nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = torch.nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1,
                                      bias=conv_bias, **factory)
        self.x_proj = torch.nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = torch.nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        self.out_proj = torch.nn.Linear(self.d_inner, d_model, bias=bias, **factory)
        state = torch.float64 if dtype == torch.float64 else torch.float32  # A_log and D stay in the state's dtype
        self.A_log = torch.nn.Parameter(torch.empty(self.d_inner, d_state, device=device, dtype=state))
        self.D = torch.nn.Parameter(torch.empty(self.d_inner, device=device, dtype=state))
        self._init_ssm(dt_init, dt_scale, dt_min, dt_max, dt_init_floor)

    def _init_ssm(self, dt_init, dt_scale, dt_min, dt_max, dt_init_floor) -> None:
        std = self.dt_rank**-0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                self.dt_proj.weight.fill_(std)
            else:
                self.dt_proj.weight.uniform_(-std, std)
            dt = torch.exp(torch.rand(self.d_inner, dtype=torch.float64) * (math.log(dt_max) - math.log(dt_min))
                           + math.log(dt_min)).clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(bias) = dt
            self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float64)).expand_as(self.A_log))
            self.D.fill_(1.0)

    def _ssm_inputs(self, x: torch.Tensor):
        """x (..., d_inner) → (Δ before its bias, B, C) and A (d_inner, d_state)."""
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.linear(dt, self.dt_proj.weight), B, C, -torch.exp(self.A_log)

    def forward(self, hidden: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """hidden (B, L, d_model) → (B, L, d_model). With ``cache`` = (conv_state, ssm_state),
        those are overwritten with the states after the last token."""
        L = hidden.shape[1]
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each
        if cache is not None:
            cache[0].copy_(F.pad(x, (self.d_conv - L, 0)))  # the last d_conv inputs (zeros before the start)
        x = F.silu(self.conv1d(x)[..., :L])
        dt, B, C, A = self._ssm_inputs(x.transpose(1, 2))
        out = selective_scan(x, dt.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), self.D, z,
                             self.dt_proj.bias.to(A.dtype), True, return_last_state=cache is not None,
                             backend=self.backend)
        if cache is not None:
            out, last = out
            cache[1].copy_(last)
        return self.out_proj(out.transpose(1, 2))

    def allocate_inference_cache(self, batch: int, dtype: torch.dtype | None = None):
        """(conv_state (batch, d_inner, d_conv), ssm_state (batch, d_inner, d_state)), zeros; the
        SSM state in float32 (float64 for a float64 layer) unless ``dtype`` is given."""
        weight = self.out_proj.weight
        conv = torch.zeros(batch, self.d_inner, self.d_conv, device=weight.device, dtype=dtype or weight.dtype)
        ssm = torch.zeros(batch, self.d_inner, self.d_state, device=weight.device, dtype=dtype or self.A_log.dtype)
        return conv, ssm

    def step(self, hidden: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> torch.Tensor:
        """One token: hidden (B, 1, d_model) or (B, d_model) → the same shape; the states are
        updated in place."""
        squeeze = hidden.dim() == 3
        if squeeze and hidden.shape[1] != 1:
            raise ValueError(f"SelectiveSSM.step: decodes one token at a time, got hidden of shape "
                             f"{tuple(hidden.shape)}")
        x, z = self.in_proj(hidden[:, 0] if squeeze else hidden).chunk(2, dim=-1)  # (B, d_inner)
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = x
        x = (conv_state * self.conv1d.weight[:, 0]).sum(-1)
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = F.silu(x)
        dt, B, C, A = self._ssm_inputs(x)
        y = selective_state_update(ssm_state, x, dt, A, B, C, self.D, z, self.dt_proj.bias, True,
                                   backend=self.backend)
        out = self.out_proj(y)
        return out[:, None] if squeeze else out

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}"
