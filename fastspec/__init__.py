"""fastspec: fused GPU kernels for spectral and structured operators in PyTorch.

Ops: :func:`fwht` (fast Walsh–Hadamard transform), :func:`fft_conv` and :func:`fft_conv2d`
(FFT long convolutions), :func:`linear_scan` (first-order linear recurrences),
:func:`selective_scan` and :func:`selective_state_update` (Mamba's selective scan and its
decoding step), :func:`ssm_kernel` (the S4D convolution kernel), :func:`gaunt_tensor_product` and :func:`gaunt_power` (Gaunt
tensor products of spherical-harmonic coefficients), :func:`butterfly_multiply` and :func:`monarch_multiply`
(structured matrices); HiPPO matrices in :mod:`fastspec.hippo`, spherical harmonics and Gaunt tables in
:mod:`fastspec.spherical`, exact fast transforms as butterflies in :mod:`fastspec.butterfly`. Modules: :mod:`fastspec.nn`.
:func:`backends` reports which backends (torch, triton, cuda) run here and why not.
"""
from fastspec._backend import BackendInfo, backends
from fastspec.hadamard import hadamard_matrix, supported_sizes
from fastspec.ops.fftconv import fft_conv, fft_conv2d
from fastspec.ops.fwht import fwht
from fastspec.ops.gaunt import gaunt_power, gaunt_tensor_product
from fastspec.spherical import gaunt_coefficients, spherical_harmonics
from fastspec import spherical
from fastspec.ops.ssm import linear_scan, selective_scan, selective_state_update, ssm_kernel
from fastspec.ops.butterfly import butterfly_multiply, monarch_multiply
from fastspec import butterfly
from fastspec import nn

__version__ = "0.1.0"

__all__ = ["BackendInfo", "backends", "butterfly", "butterfly_multiply", "fft_conv", "fft_conv2d", "fwht", "gaunt_coefficients", "gaunt_power", "gaunt_tensor_product", "hadamard_matrix", "linear_scan", "monarch_multiply", "nn", "selective_scan", "selective_state_update", "spherical", "spherical_harmonics", "ssm_kernel", "supported_sizes", "__version__"]
