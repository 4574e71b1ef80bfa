"""Long-convolution layers on fastspec.fft_conv: FFTConv (a learned long filter, Hyena's
fftconv as a module) and Conv1dFFT (a depthwise nn.Conv1d for long kernels)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastspec.ops.fftconv import MODES, FilterSpectrum, fft_conv, prepare_filter


class FFTConv(torch.nn.Module):
    """y = postgate · conv(u · pregate, k) + D · u over the last dim, one learned filter per
    channel (Hyena's ``fftconv`` with an explicit filter); u (B, channels, L), L ≤ max_len.

    Parameters: ``filter`` (channels, max_len) for ``causal`` and ``circular``, (channels,
    2·max_len − 1) with lag 0 at index max_len − 1 for ``bidirectional``; ``D`` (channels,)
    if ``use_D``. A sequence shorter than max_len uses the filter's lags −(L−1)…L−1 (its
    first L taps; for ``bidirectional`` the 2L − 1 around lag 0). The gates are optional
    arguments of ``forward`` (Hyena passes its projections there).

    Initialisation: each filter is Gaussian noise under an exponential decay exp(−r·|s|/max_len)
    over the lag s, with rates r log-spaced over the channels from ln(100)/0.3 to ln(100)/1.5
    (Hyena's ExponentialModulation: the filter falls to 1% between 30% and 150% of max_len),
    scaled to unit norm per channel; D is standard normal (as Hyena's bias).

    In eval mode the filter's spectrum (``prepare_filter``) is computed once and reused while
    the filter is the same tensor with the same version counter (an optimizer step or
    ``load_state_dict`` changes it) and the length, dtype and device are the same; train
    mode, and ``torch.compile``, compute it every call.
    """

    def __init__(self, channels: int, max_len: int, *, mode: str = "causal", use_D: bool = True,
                 backend: str = "auto", device=None, dtype=None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"FFTConv: mode must be one of {', '.join(map(repr, MODES))}; got {mode!r}")
        if channels < 1 or max_len < 1:
            raise ValueError(f"FFTConv: channels and max_len must be at least 1, got {channels}, {max_len}")
        self.channels, self.max_len, self.mode, self.backend = channels, max_len, mode, backend
        taps = 2 * max_len - 1 if mode == "bidirectional" else max_len
        self.filter = torch.nn.Parameter(torch.empty(channels, taps, device=device, dtype=dtype))
        self.D = torch.nn.Parameter(torch.empty(channels, device=device, dtype=dtype)) if use_D else None
        self._spectrum: tuple[tuple, FilterSpectrum] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        lag = torch.arange(self.filter.shape[1], dtype=torch.float64)
        if self.mode == "bidirectional":
            lag = (lag - (self.max_len - 1)).abs()
        rates = torch.logspace(math.log10(math.log(100) / 0.3), math.log10(math.log(100) / 1.5), self.channels,
                               dtype=torch.float64)
        taps = torch.randn(self.filter.shape, dtype=torch.float64) * torch.exp(-rates[:, None] * lag / self.max_len)
        with torch.no_grad():
            self.filter.copy_(taps / taps.norm(dim=1, keepdim=True))
            if self.D is not None:
                self.D.normal_()

    def taps(self, length: int) -> torch.Tensor:
        """The filter as fft_conv takes it for sequences of ``length`` (a view)."""
        if self.mode == "bidirectional":
            return self.filter[:, self.max_len - length: self.max_len + length - 1]
        return self.filter[:, :length]

    def _cached_spectrum(self, k: torch.Tensor, u: torch.Tensor) -> FilterSpectrum:
        key = (self.filter, self.filter._version, u.shape[-1], u.dtype, u.device)
        if self._spectrum is None or self._spectrum[0][0] is not key[0] or self._spectrum[0][1:] != key[1:]:
            spectrum = prepare_filter(k, u.shape[-1], mode=self.mode, dtype=u.dtype, backend=self.backend)
            self._spectrum = (key, spectrum)
        return self._spectrum[1]

    def forward(self, u: torch.Tensor, pregate: torch.Tensor | None = None,
                postgate: torch.Tensor | None = None) -> torch.Tensor:
        """u, gates: (B, channels, L) with L ≤ max_len -> (B, channels, L) in u's dtype."""
        if u.dim() != 3 or u.shape[1] != self.channels or not 1 <= u.shape[-1] <= self.max_len:
            raise ValueError(f"FFTConv(channels={self.channels}, max_len={self.max_len}): u must be "
                             f"(B, {self.channels}, L) with 1 <= L <= {self.max_len}, got shape {tuple(u.shape)}")
        k = self.taps(u.shape[-1])
        spectrum = None
        if not self.training and not torch.compiler.is_compiling():
            spectrum = self._cached_spectrum(k, u)
        return fft_conv(u, k, mode=self.mode, pregate=pregate, postgate=postgate, D=self.D, spectrum=spectrum,
                        backend=self.backend)

    def train(self, mode: bool = True) -> FFTConv:
        self._spectrum = None
        return super().train(mode)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, max_len={self.max_len}, mode={self.mode!r}, use_D={self.D is not None}"


class Conv1dFFT(torch.nn.Module):
    """Depthwise ``nn.Conv1d(channels, channels, kernel_size, groups=channels, padding=...,
    padding_mode=..., bias=...)`` computed by FFT, for long kernels (stride 1, dilation 1).

    Same parameters and state_dict: ``weight`` (channels, 1, kernel_size), ``bias``
    (channels,) or None, initialised as nn.Conv1d does. padding: 'valid', 'same' (even
    kernels pad one more on the right, as torch) or an int (both sides); padding_mode:
    'zeros', 'reflect', 'replicate' or 'circular'. Input (B, channels, L) or (channels, L).

    Conv1d correlates: out[t] = Σ_j w[j]·x_padded[t+j] + bias, a convolution with the
    flipped kernel. Zero padding of at most kernel_size − 1 in all (as 'same' and 'valid')
    is left implicit: fft_conv(mode='bidirectional') with the flipped kernel placed at the
    lags it covers, and the output is its first L_out entries. Other paddings pad x first
    (F.pad, as Conv1d does) and take the 'valid' part the same way.
    """

    def __init__(self, channels: int, kernel_size: int, padding: str | int | tuple[int] = 0, bias: bool = True,
                 padding_mode: str = "zeros", *, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        if isinstance(padding, tuple) and len(padding) == 1:
            padding = padding[0]
        if padding not in ("same", "valid") and not (isinstance(padding, int) and padding >= 0):
            raise ValueError(f"Conv1dFFT: padding must be 'same', 'valid' or an int >= 0, got {padding!r}")
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"Conv1dFFT: padding_mode must be 'zeros', 'reflect', 'replicate' or 'circular', "
                             f"got {padding_mode!r}")
        if channels < 1 or kernel_size < 1:
            raise ValueError(f"Conv1dFFT: channels and kernel_size must be at least 1, got {channels}, {kernel_size}")
        self.channels, self.kernel_size, self.padding_mode, self.backend = channels, kernel_size, padding_mode, backend
        self.padding = 0 if padding == "valid" else padding
        if padding == "same":
            left = (kernel_size - 1) // 2
            self._pads = (left, kernel_size - 1 - left)
        else:
            self._pads = (self.padding, self.padding)
        self.weight = torch.nn.Parameter(torch.empty(channels, 1, kernel_size, device=device, dtype=dtype))
        self.bias = torch.nn.Parameter(torch.empty(channels, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As nn.Conv1d: kaiming-uniform weight (a = √5), bias uniform in ±1/√kernel_size."""
        torch.nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.kernel_size)
            torch.nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_conv1d(cls, conv: torch.nn.Conv1d, *, backend: str = "auto") -> Conv1dFFT:
        """The same layer as a depthwise ``conv`` (groups = in = out channels, stride and
        dilation 1), sharing its weight and bias values."""
        if not (conv.groups == conv.in_channels == conv.out_channels and conv.stride == (1,)
                and conv.dilation == (1,)):
            raise ValueError(f"Conv1dFFT.from_conv1d: needs a depthwise Conv1d (groups = in = out channels) with "
                             f"stride 1 and dilation 1, got {conv}")
        layer = cls(conv.in_channels, conv.kernel_size[0], conv.padding if isinstance(conv.padding, str)
                    else conv.padding[0], conv.bias is not None, conv.padding_mode, backend=backend,
                    device=conv.weight.device, dtype=conv.weight.dtype)
        layer.load_state_dict(conv.state_dict())
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, channels, L) or (channels, L) -> (…, channels, L_out), L_out = L + pads − kernel_size + 1."""
        unbatched = x.dim() == 2
        if unbatched:
            x = x[None]
        if x.dim() != 3 or x.shape[1] != self.channels:
            raise ValueError(f"Conv1dFFT(channels={self.channels}): x must be (B, {self.channels}, L) or "
                             f"({self.channels}, L), got shape {tuple(x.shape)}")
        K, (left, right) = self.kernel_size, self._pads
        span = max(left, K - 1 - left)  # the lags the kernel covers, around lag 0
        if self.padding_mode != "zeros" or left + right > K - 1 or span >= x.shape[-1]:
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, (left, right), mode=mode)
            left = right = 0
            span = K - 1
        out_len = x.shape[-1] + left + right - K + 1
        if out_len < 1:
            raise ValueError(f"Conv1dFFT: kernel_size {K} is longer than the padded input ({x.shape[-1] + left + right})")
        # out[t] = Σ_j w[j]·x[t + j − left] = Σ_s w[left − s]·x[t − s]: the flipped kernel at lags
        # left−K+1 … left, i.e. at indices span+left−K+1 … span+left of a centred filter.
        k = F.pad(self.weight[:, 0].flip(-1), (span + left - K + 1, span - left))
        y = fft_conv(x, k, mode="bidirectional", backend=self.backend)[..., :out_len]
        y = y + self.bias[:, None].to(y.dtype) if self.bias is not None else y.contiguous()
        return y[0] if unbatched else y

    def extra_repr(self) -> str:
        return (f"{self.channels}, kernel_size={self.kernel_size}, padding={self.padding!r}, "
                f"bias={self.bias is not None}, padding_mode={self.padding_mode!r}")
