"""Build CUDA C++ sources from csrc/ for the CPU, to run their kernels in tests without a GPU.

The sources are compiled unchanged by the host C++ compiler against the small runtime in
tests/cuda_emu_include/ (one OS thread per CUDA thread, see cuda_emu.h); the only rewrites
are the launch syntax and `extern __shared__` arrays (rewrite_for_host). Misaligned vector
accesses, which fault on a GPU, are caught by UBSan's alignment check.
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import os
import re
import shutil
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INCLUDE = os.path.join(ROOT, "tests", "cuda_emu_include")
_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^;{}]*?>)?)\s*<<<([^;]*?)>>>\s*\(([^;]*)\)\s*;")
_DYNAMIC_SHARED = re.compile(r"extern\s+__shared__\s+(__align__\(\d+\)\s+)?([\w:]+)\s+(\w+)\s*\[\s*\]\s*;")
FLAGS = ["-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", "-fno-strict-aliasing", "-ffp-contract=off",
         "-fsanitize=alignment", "-Wall", "-Wno-unknown-pragmas"]


def rewrite_for_host(source: str) -> str:
    """The two constructs that are not C++: `k<<<g, b, s, st>>>(a);` becomes
    `cuda_emu::launch(g, b, s, st, &k, [&] { k(a); });` and `extern __shared__ T name[];`
    becomes a pointer to the launch's dynamic shared memory."""
    def launch(m):
        config = [c.strip() for c in m.group(2).split(",")]
        config += ["0", "nullptr"][len(config) - 2:]
        kernel = f"reinterpret_cast<const void*>(&{m.group(1)})"
        return f"cuda_emu::launch({', '.join(config)}, {kernel}, [&] {{ {m.group(1)}({m.group(3)}); }});"
    out, count = _LAUNCH.subn(launch, source)
    assert count or "<<<" not in source, "a launch the rewrite does not understand"
    return _DYNAMIC_SHARED.sub(r"\2* \3 = reinterpret_cast<\2*>(cuda_emu::dynamic_shared());", out)


def unavailable_reason() -> str | None:
    """Why kernels cannot be built here (None if they can)."""
    if shutil.which("g++") is None:
        return "no g++"
    probe = "_Float16 h = 1.0f; int main() { return static_cast<int>(h) - 1; }\n"
    done = subprocess.run(["g++", "-x", "c++", "-std=c++20", "-fsyntax-only", "-"], input=probe, capture_output=True, text=True)
    return None if done.returncode == 0 else "g++ without _Float16"


SCHEDULES = {"parallel": 0, "ascending": 1, "descending": 2}
"""Thread orders of a block (cuda_emu::Schedule): set with set_schedule(lib, name)."""
_SCHEDULE_ENTRY = """
#include "cuda_emu.h"
extern "C" void cuda_emu_set_schedule(int s) { cuda_emu::schedule = static_cast<cuda_emu::Schedule>(s); }
"""


def set_schedule(lib: ctypes.CDLL, name: str) -> None:
    lib.cuda_emu_set_schedule(SCHEDULES[name])


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def build(cu_files: list[str], entry: str, cache_dir: str) -> ctypes.CDLL:
    """Compile `cu_files` (paths under csrc/) plus `entry` (C++ with extern "C" functions)
    into a shared library in cache_dir and load it."""
    sources = {os.path.basename(f): rewrite_for_host(_read(f)) for f in cu_files}
    sources["entry.cpp"] = entry + _SCHEDULE_ENTRY
    includes = sorted({os.path.dirname(os.path.abspath(f)) for f in cu_files} | {INCLUDE, os.path.join(ROOT, "csrc")})
    key = hashlib.sha256(repr(sorted(sources.items())).encode())
    for d in includes:  # the headers too, in subfolders (csrc/common/...): rebuild when they change
        for folder, subfolders, names in sorted(os.walk(d)):
            subfolders.sort()
            for name in sorted(n for n in names if n.endswith(".h")):
                key.update(_read(os.path.join(folder, name)).encode())
    lib = os.path.join(cache_dir, f"emu-{key.hexdigest()[:16]}.so")
    if not os.path.exists(lib):
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for name, text in sources.items():
                paths.append(os.path.join(tmp, os.path.splitext(name)[0] + ".cpp"))
                with open(paths[-1], "w") as f:
                    f.write(text)
            cmd = ["g++", *FLAGS, *(f"-I{d}" for d in includes), *paths, "-o", lib + ".tmp"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[-6000:]
            os.replace(lib + ".tmp", lib)
    return ctypes.CDLL(lib)


def build_cached(request, tmp_path_factory, cu_files: list[str], entry: str) -> ctypes.CDLL:
    """``build`` into pytest's cache (kept between runs: a library is rebuilt only when its
    sources change), or a temporary folder under ``-p no:cacheprovider``; for a module-scoped
    fixture of a test file."""
    cache = getattr(request.config, "cache", None)
    cache_dir = str(cache.mkdir("cuda_emu")) if cache is not None else str(tmp_path_factory.mktemp("cuda_emu"))
    return build(cu_files, entry, cache_dir)


GUARD = 8
"""Elements on both sides of a ``guarded`` output, to catch stray writes."""


def guarded(shape, dtype, offset: int = 0):
    """An all-7.0 output tensor inside a buffer with GUARD elements on both sides, and those two
    guards (views, to check afterwards that they are still 7.0); ``offset`` extra elements in
    front shift the output off 16-byte alignment."""
    import torch

    numel, start = math.prod(shape), GUARD + offset
    buf = torch.full((numel + 2 * GUARD + offset,), 7.0, dtype=dtype)
    return buf[start: start + numel].view(shape), (buf[:start], buf[start + numel:])
