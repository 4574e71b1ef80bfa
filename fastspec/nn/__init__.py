"""Drop-in nn.Modules built on fastspec ops."""
from fastspec.nn.hadamard import HadamardTransform

__all__ = ["HadamardTransform"]
