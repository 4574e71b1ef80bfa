"""Measurement helpers shared by ``python -m fastspec`` and ``bench/``.

Timing (:func:`median_ms`), input rotation against cache reuse (:func:`cache_copies`),
accuracy (:func:`rel_error`, :data:`TOLERANCE`), the backends worth running on a device,
run metadata, a progress iterator and a plain-text table.
"""
from __future__ import annotations

import datetime
import itertools
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence

import torch

from fastspec import _backend

TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 1.6e-2,
}
"""Largest accepted ||out - ref|| / ||ref|| against a float64 reference, per input dtype
(about four units of output rounding for the half types; float32 allows log2(n) stages)."""

CPU_CACHE_BYTES = 32 * 2**20
"""Assumed last-level cache on CPUs: inputs smaller than this are rotated."""


def median_ms(
    fn: Callable,
    inputs: Sequence[tuple] = ((),),
    *,
    device: torch.device | str,
    warmup_ms: float = 25.0,
    rep_ms: float = 100.0,
) -> float:
    """Median time in ms of ``fn(*args)``, cycling ``args`` through ``inputs``.

    CUDA: ``triton.testing.do_bench`` (CUDA events, L2 flushed before each call).
    Other devices: a ``perf_counter`` loop with a device sync around each call, after
    ``warmup_ms`` of warm-up; it stops once ``rep_ms`` has passed and 3 calls are done,
    or after ``5 * rep_ms`` whatever the count (so a slow call costs at most a few runs).
    """
    device = torch.device(device)
    cycle = itertools.cycle(inputs)

    def call():
        return fn(*next(cycle))

    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(call, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    sync = getattr(torch, device.type).synchronize
    start = time.perf_counter()
    while True:  # warm-up: at least one call
        call()
        sync()
        if (time.perf_counter() - start) * 1e3 >= warmup_ms:
            break
    times = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        call()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
        spent = (time.perf_counter() - start) * 1e3
        if (spent >= rep_ms and len(times) >= 3) or spent >= 5 * rep_ms:
            return statistics.median(times)


def cache_copies(nbytes: int, device: torch.device | str, max_copies: int = 8) -> int:
    """How many input sets of ``nbytes`` to rotate so that together they exceed twice the
    device's last-level cache (L2 on CUDA); 1 when one set already does."""
    device = torch.device(device)
    if device.type == "cuda":
        cache = torch.cuda.get_device_properties(device).L2_cache_size
    else:
        cache = CPU_CACHE_BYTES
    return max(1, min(max_copies, math.ceil(2 * cache / max(nbytes, 1))))


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf for a shape mismatch, NaN or inf in out."""
    if out.shape != ref.shape:
        return math.inf
    out, ref = out.detach().to(torch.float64), ref.detach().to(torch.float64)
    if not bool(torch.isfinite(out).all()):
        return math.inf
    return float(torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-300))


def usable_backends(device: torch.device | str, *, timing: bool) -> list[str]:
    """Backends that can run on ``device`` here; with ``timing``, without Triton on the
    CPU interpreter (correct but meaningless to time)."""
    device = torch.device(device)
    names = [b for b in _backend.NAMES if _backend.device_ok(b, device) is None]
    if timing and device.type != "cuda":
        names = [b for b in names if b != "triton"]
    return names


def default_device() -> torch.device:
    """The first CUDA GPU if there is one, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def device_name(device: torch.device | str) -> str:
    """Human-readable device name, e.g. 'NVIDIA H100 80GB HBM3' or 'cpu (2 threads)'."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"


def device_slug(device: torch.device | str) -> str:
    """Short file-name tag: 'h100', 'h200', 'a100', ... for GPUs, 'cpu' for the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    tokens = device_name(device).replace("-", " ").split()
    model = next((t for t in tokens if t[0].isalpha() and any(c.isdigit() for c in t)), None)
    return (model or "-".join(tokens[-2:])).lower()


def case_fields(op: str, shape: Sequence[int], dtype: torch.dtype) -> dict:
    """A record's identifying fields: op, shape as '256x4096', dtype as 'float32'."""
    return {"op": op, "shape": "x".join(map(str, shape)), "dtype": str(dtype).removeprefix("torch.")}


def run_info(device: torch.device | str) -> dict:
    """Fields every result record carries: device, library versions, date (UTC)."""
    import triton

    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
    }


def progress(items: Iterable, desc: str, label: Callable = str) -> Iterable:
    """Yield ``items`` with a tqdm bar on a terminal, else one printed line per item."""
    items = list(items)
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm

            yield from tqdm(items, desc=desc, leave=False)
            return
        except ImportError:
            pass
    for i, item in enumerate(items, 1):
        print(f"[{desc} {i}/{len(items)}] {label(item)}", flush=True)
        yield item


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Left-aligned text table of ``rows`` (dicts) over ``columns``; floats get 4
    significant digits, missing values print as '-'."""

    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.2e}" if 0 < abs(v) < 1e-3 or abs(v) >= 1e5 else f"{v:.4g}"
        return str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)
