"""Drop-in replacements for other libraries, on fastspec's kernels.

Each module reproduces one library's public names, argument order and numerical
semantics (padding, matrices, layouts) on every device and backend; switching is an
import change. Differences, where the peer has a bug, are listed in the module docstring.

- :mod:`fastspec.compat.fast_hadamard_transform`: fast-hadamard-transform 1.1.0
  (Dao-AILab), ``hadamard_transform`` and ``hadamard_transform_12N/20N/28N/40N``.
- :mod:`fastspec.compat.flashfftconv`: FlashFFTConv (HazyResearch/flash-fft-conv),
  ``FlashFFTConv(seqlen, dtype, use_32_butterfly)``.
- :mod:`fastspec.compat.mamba_ssm`: mamba_ssm's ``selective_scan_fn`` and
  ``selective_state_update`` (state-spaces/mamba).
"""
