"""Triton kernels and their launchers, one file per op family (installed as
fastspec.triton_kernels; a top-level ``triton_kernels`` would clash with Triton's own)."""
from fastspec._backend import triton_interpreted

if triton_interpreted():
    from fastspec.triton_kernels._interpreter import patch

    patch()
