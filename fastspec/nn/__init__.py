"""Drop-in nn.Modules built on fastspec ops."""
from fastspec.nn.butterfly import Butterfly, MonarchLinear, ReplaceReport, replace_linear
from fastspec.nn.fftconv import Conv1dFFT, FFTConv
from fastspec.nn.gaunt import GauntSelfInteraction, GauntTensorProduct
from fastspec.nn.hadamard import HadamardTransform
from fastspec.nn.ssm import S4D, SelectiveSSM

__all__ = ["Butterfly", "Conv1dFFT", "FFTConv", "GauntSelfInteraction", "GauntTensorProduct", "HadamardTransform", "MonarchLinear", "ReplaceReport", "S4D", "SelectiveSSM", "replace_linear"]
