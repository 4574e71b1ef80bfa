"""fastspec: fused GPU kernels for spectral and structured operators in PyTorch.

Ops: :func:`fwht` (fast Walsh–Hadamard transform). Modules: :mod:`fastspec.nn`.
:func:`backends` reports which backends (torch, triton, cuda) run here and why not.
"""
from fastspec._backend import BackendInfo, backends
from fastspec.hadamard import hadamard_matrix, supported_sizes
from fastspec.ops.fwht import fwht
from fastspec import nn

__version__ = "0.1.0"

__all__ = ["BackendInfo", "backends", "fwht", "hadamard_matrix", "nn", "supported_sizes", "__version__"]
