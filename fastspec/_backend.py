"""Which backends exist here, and which one a call uses.

Backends: ``torch`` (vectorised PyTorch, any device), ``triton`` (GPU; CPU tensors only
under the Triton interpreter, ``TRITON_INTERPRET=1`` set before fastspec is imported),
``cuda`` (the CUDA kernels of the compiled extension ``fastspec._C``, CUDA tensors) and
``cpu`` (its C++ kernels, CPU tensors). A backend asked for by name that
cannot run the call raises; it never falls back. ``auto`` asks the op's choice table;
the environment variable ``FASTSPEC_BACKEND`` replaces ``auto`` (an explicit argument wins).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import os

import torch

NAMES = ("torch", "triton", "cuda", "cpu")


@dataclasses.dataclass(frozen=True)
class BackendInfo:
    """Whether a backend can run here; ``reason`` says why not (or how it runs)."""

    available: bool
    reason: str


def triton_interpreted() -> bool:
    """True when Triton kernels run on the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _import_reason(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - report whatever broke the import
        return f"cannot import {module}: {type(exc).__name__}: {exc}"
    return None


def _info(name: str) -> BackendInfo:
    """Whether one backend is usable here, and why not."""
    if name == "torch":
        return BackendInfo(True, "PyTorch ops, any device")
    if name == "triton":
        triton_err = _import_reason("triton")
        if triton_err:
            return BackendInfo(False, triton_err)
        if triton_interpreted():
            return BackendInfo(True, "Triton interpreter (TRITON_INTERPRET=1): CPU tensors too")
        if torch.cuda.is_available():
            return BackendInfo(True, "Triton on CUDA")
        return BackendInfo(False, "no CUDA GPU (set TRITON_INTERPRET=1 to run on the CPU)")
    ext_err = _import_reason("fastspec._C")
    if ext_err:
        return BackendInfo(False, f"extension not built ({ext_err})")
    ext = importlib.import_module("fastspec._C")
    if name == "cuda":
        if not ext.with_cuda:
            return BackendInfo(False, "fastspec._C is built without the CUDA kernels (no CUDA at install)")
        if not torch.cuda.is_available():
            return BackendInfo(False, "fastspec._C is built but no CUDA GPU is visible")
        return BackendInfo(True, "fastspec._C on CUDA")
    if not ext.with_cpu:
        return BackendInfo(False, "fastspec._C is built without the CPU kernels (FASTSPEC_BUILD_CPU=0 at install)")
    threads = "OpenMP" if ext.with_openmp else "one thread: built without OpenMP"
    return BackendInfo(True, f"fastspec._C C++ kernels on CPU ({ext.cpu_isa()}, {threads})")


def backends() -> dict[str, BackendInfo]:
    """Report which backends are usable here and why not."""
    return {name: _info(name) for name in NAMES}


def device_ok(backend: str, device: torch.device) -> str | None:
    """None if ``backend`` can run on ``device`` here, else the reason it cannot."""
    if backend == "torch":
        return None
    info = _info(backend)
    if not info.available:
        return info.reason
    if backend == "cpu":
        return None if device.type == "cpu" else f"it runs on CPU tensors, got a {device.type} tensor"
    if device.type == "cuda" or (backend == "triton" and triton_interpreted() and device.type == "cpu"):
        return None
    return f"it runs on CUDA tensors{' (and CPU under TRITON_INTERPRET=1)' if backend == 'triton' else ''}, got a {device.type} tensor"


def resolve(op: str, backend: str, device: torch.device, auto_choice) -> str:
    """The concrete backend for one call.

    ``auto_choice()`` is the op's table lookup, called only for ``auto``; a named
    backend that cannot run on ``device`` raises RuntimeError with the reason.
    """
    if backend not in ("auto",) + NAMES:
        raise ValueError(f"{op}: backend must be one of {', '.join(map(repr, ('auto',) + NAMES))}; got {backend!r}")
    if backend == "auto":
        backend = os.environ.get("FASTSPEC_BACKEND", "auto") or "auto"
        if backend not in ("auto",) + NAMES:
            raise ValueError(f"FASTSPEC_BACKEND must be one of {', '.join(('auto',) + NAMES)}; got {backend!r}")
        if backend == "auto":
            return auto_choice()
    reason = device_ok(backend, device)
    if reason is not None:
        raise RuntimeError(f"{op}: backend {backend!r} is not usable for this call: {reason}")
    return backend


def eager_plain(*tensors: torch.Tensor | None) -> bool:
    """True when a call runs eagerly (not traced by torch.compile) on plain tensors and
    parameters only (no other subclasses: fake tensors among them): an op may then run its
    body without its registered custom op, whose Python dispatch costs more than a small call's
    work (about 140 µs on the 2-core development CPU); the result is the same bit for bit."""
    return not torch.compiler.is_compiling() and all(type(t) in _PLAIN for t in tensors if t is not None)


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def eager_untracked(*tensors: torch.Tensor | None) -> bool:
    """``eager_plain`` with nothing for autograd to record: an op's forward body may run
    directly, since no backward will be asked of it."""
    present = [t for t in tensors if t is not None]
    if not eager_plain(*present):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in present))
