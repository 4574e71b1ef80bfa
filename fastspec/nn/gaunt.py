"""Equivariant layers on Gaunt tensor products: GauntTensorProduct (two inputs, Luo et al.'s
parameterisation) and GauntSelfInteraction (MACE-Gaunt's many-body powers of one input)."""
from __future__ import annotations

import torch

from fastspec.ops.gaunt import gaunt_power, gaunt_tensor_product
from fastspec.spherical import num_coefficients


def _degree_index(lmax: int, device=None) -> torch.Tensor:
    """The degree l of each coefficient index l² + l + m, ((lmax+1)²,) int64."""
    return torch.repeat_interleave(torch.arange(lmax + 1, device=device),
                                   torch.arange(lmax + 1, device=device) * 2 + 1)


def _check(name: str, **degrees) -> None:
    for key, value in degrees.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key in ("channels", "correlation") else 0):
            raise ValueError(f"{name}: {key} must be a {'positive' if key in ('channels', 'correlation') else 'non-negative'} "
                             f"int, got {value!r}")


class GauntTensorProduct(torch.nn.Module):
    """out = w_out ⊙ gaunt_tensor_product(w1 ⊙ x1, w2 ⊙ x2, lmax_out): learnable weights per
    channel and degree on both inputs and the output (Luo, Chen, Zhang, ICLR 2024, Sec. 3.3),
    each broadcast over the orders m of its degree, so the layer stays equivariant.

    x1 (..., channels, (l1max+1)²), x2 (..., channels or 1, (l2max+1)²) (a single channel is weighted per channel, so
    the product is per channel) -> (..., channels,
    (lmax_out+1)²). Parameters weight1 (channels, l1max+1), weight2 (channels, l2max+1),
    weight_out (channels, lmax_out+1), initialised to ones (the plain Gaunt product).
    method and backend go to gaunt_tensor_product.
    """

    def __init__(self, l1max: int, l2max: int, lmax_out: int, channels: int, *, method: str = "auto",
                 backend: str = "auto", device=None, dtype=None):
        super().__init__()
        _check("GauntTensorProduct", l1max=l1max, l2max=l2max, lmax_out=lmax_out, channels=channels)
        if lmax_out > l1max + l2max:
            raise ValueError(f"GauntTensorProduct: lmax_out must be at most l1max + l2max = {l1max + l2max}, got {lmax_out}")
        self.l1max, self.l2max, self.lmax_out, self.channels = l1max, l2max, lmax_out, channels
        self.method, self.backend = method, backend
        kw = {"device": device, "dtype": dtype}
        self.weight1 = torch.nn.Parameter(torch.ones(channels, l1max + 1, **kw))
        self.weight2 = torch.nn.Parameter(torch.ones(channels, l2max + 1, **kw))
        self.weight_out = torch.nn.Parameter(torch.ones(channels, lmax_out + 1, **kw))
        for name, lmax in (("index1", l1max), ("index2", l2max), ("index_out", lmax_out)):
            self.register_buffer(name, _degree_index(lmax, device), persistent=False)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        out = gaunt_tensor_product(x1 * self.weight1[:, self.index1], x2 * self.weight2[:, self.index2], self.lmax_out,
                                   method=self.method, backend=self.backend)
        return out * self.weight_out[:, self.index_out]

    def extra_repr(self) -> str:
        return f"l1max={self.l1max}, l2max={self.l2max}, lmax_out={self.lmax_out}, channels={self.channels}"


class GauntSelfInteraction(torch.nn.Module):
    """out = Σ_{ν=1..correlation} w_ν ⊙ gaunt_power(w_in ⊙ x, ν, lmax_out): the many-body
    products of one input (MACE-Gaunt's symmetric contraction, Luo et al. Sec. 4.2), with
    learnable weights per channel and degree on the input and per order ν, channel and degree
    on the output.

    x (..., channels, (lmax+1)²) -> (..., channels, (lmax_out+1)²), lmax_out ≤ lmax (ν = 1
    needs it). Parameters weight_in (channels, lmax+1) = 1, weight_out (correlation,
    channels, lmax_out+1) = 1/correlation.
    """

    def __init__(self, lmax: int, correlation: int, lmax_out: int, channels: int, *, device=None, dtype=None):
        super().__init__()
        _check("GauntSelfInteraction", lmax=lmax, correlation=correlation, lmax_out=lmax_out, channels=channels)
        if lmax_out > lmax or correlation > 8:
            raise ValueError(f"GauntSelfInteraction: need lmax_out ≤ lmax and correlation ≤ 8, got lmax_out={lmax_out}, "
                             f"lmax={lmax}, correlation={correlation}")
        self.lmax, self.correlation, self.lmax_out, self.channels = lmax, correlation, lmax_out, channels
        kw = {"device": device, "dtype": dtype}
        self.weight_in = torch.nn.Parameter(torch.ones(channels, lmax + 1, **kw))
        self.weight_out = torch.nn.Parameter(torch.full((correlation, channels, lmax_out + 1), 1 / correlation, **kw))
        self.register_buffer("index_in", _degree_index(lmax, device), persistent=False)
        self.register_buffer("index_out", _degree_index(lmax_out, device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[-2:] != (self.channels, num_coefficients(self.lmax)):
            raise ValueError(f"GauntSelfInteraction: x must be (..., {self.channels}, {num_coefficients(self.lmax)}), "
                             f"got {tuple(x.shape)}")
        a = x * self.weight_in[:, self.index_in]
        w = self.weight_out[:, :, self.index_out]
        return sum(w[nu - 1] * gaunt_power(a, nu, self.lmax_out) for nu in range(1, self.correlation + 1))

    def extra_repr(self) -> str:
        return f"lmax={self.lmax}, correlation={self.correlation}, lmax_out={self.lmax_out}, channels={self.channels}"
