"""Build script: pure Python everywhere, plus the extension `fastspec._C` (csrc/) where it can be
built: its C++ CPU kernels wherever torch and a C++ compiler are there, its CUDA kernels where
torch has CUDA and nvcc is found too.

FASTSPEC_BUILD_CPU and FASTSPEC_BUILD_CUDA decide each part: 0 skips it, 1 requires it (a
failure is an error), unset builds it when possible and otherwise says why it did not. A failed
optional part never breaks the install: the other part is built alone, and without either the
package is pure Python. Build with `pip install --no-build-isolation -e .` so that the
installed torch is the one the extension compiles against. TORCH_CUDA_ARCH_LIST and MAX_JOBS are
honoured.
"""
import glob
import os
import subprocess
import sys
import tempfile

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
CPU_SOURCES = sorted(glob.glob("csrc/**/*_cpu*.cpp", recursive=True))
CUDA_SOURCES = sorted(glob.glob("csrc/**/*.cu", recursive=True))
CUDA_LIBRARIES = ("cudart", "c10_cuda", "torch_cuda")


def _log(msg):
    print(f"fastspec setup: {msg}", file=sys.stderr)


def _mode(var):
    mode = os.environ.get(var, "").strip()
    if mode not in ("", "0", "1"):
        raise SystemExit(f"{var} must be 0 or 1, got {mode!r}")
    return mode


def _skip(part, var, mode, reason):
    """Log why a part is not built (an error if it is required)."""
    if mode == "1":
        raise SystemExit(f"{var}=1 but the {part} kernels cannot be built: {reason}")
    _log(f"not building the {part} kernels: {reason}")


def _cxx_error(cxx, flags):
    """None if `cxx` builds a small C++17 program (using OpenMP if -fopenmp is in flags), else why not."""
    body = "#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n" if "-fopenmp" in flags \
        else "#include <vector>\nint main() { return std::vector<int>(1).size() == 1 ? 0 : 1; }\n"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as f:
            f.write(body)
        try:
            done = subprocess.run([cxx, "-std=c++17", *flags, src, "-o", os.path.join(tmp, "probe")],
                                  capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"cannot run {cxx}: {exc}"
    return f"{cxx} {' '.join(flags)} failed: {done.stderr.strip()[-300:]}" if done.returncode else None


def _build_plan():
    """Return (extensions, cmdclass) for fastspec._C, or ([], {}) with the reasons logged."""
    cpu_mode, cuda_mode = _mode("FASTSPEC_BUILD_CPU"), _mode("FASTSPEC_BUILD_CUDA")
    for part, var, mode in (("CPU", "FASTSPEC_BUILD_CPU", cpu_mode), ("CUDA", "FASTSPEC_BUILD_CUDA", cuda_mode)):
        if mode == "0":
            _log(f"{var}=0: not building the {part} kernels")
    if cpu_mode == cuda_mode == "0":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as exc:
        reason = f"torch is not importable in the build environment ({exc}); use --no-build-isolation"
        for part, var, mode in (("CPU", "FASTSPEC_BUILD_CPU", cpu_mode), ("CUDA", "FASTSPEC_BUILD_CUDA", cuda_mode)):
            if mode != "0":
                _skip(part, var, mode, reason)
        return [], {}

    cpu, openmp = cpu_mode != "0", []
    if cpu:
        cxx = cpp_extension.get_cxx_compiler()
        error = _cxx_error(cxx, [])
        if error:
            _skip("CPU", "FASTSPEC_BUILD_CPU", cpu_mode, f"no working C++17 compiler ({error})")
            cpu = False
        elif _cxx_error(cxx, ["-fopenmp"]):
            _log(f"building the CPU kernels without OpenMP (one thread): {_cxx_error(cxx, ['-fopenmp'])}")
        else:
            openmp = ["-fopenmp"]
    cuda = cuda_mode != "0"
    if cuda:
        reasons = []
        if torch.version.cuda is None:
            reasons.append(f"torch {torch.__version__} is a build without CUDA")
        if cpp_extension.CUDA_HOME is None:
            reasons.append("nvcc / CUDA_HOME not found")
        if reasons:
            _skip("CUDA", "FASTSPEC_BUILD_CUDA", cuda_mode, "; ".join(reasons))
            cuda = False
    if not (cpu or cuda):
        return [], {}

    sources, macros, cxx_flags = ["csrc/bindings.cpp"], [], ["-O3", "-std=c++17"]
    if cpu:
        sources += CPU_SOURCES
        macros.append(("FASTSPEC_WITH_CPU", None))
        cxx_flags += ["-Wno-psabi", *openmp]
    if cuda:
        sources += CUDA_SOURCES
        macros.append(("FASTSPEC_WITH_CUDA", None))
    ext = (cpp_extension.CUDAExtension if cuda else cpp_extension.CppExtension)(
        name="fastspec._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        define_macros=macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17", "-lineinfo"]},
        extra_link_args=openmp,
    )
    required = (cpu and cpu_mode == "1") or (cuda and cuda_mode == "1")
    base = cpp_extension.BuildExtension.with_options(use_ninja=True)

    class OptionalBuildExt(base):
        """Build fastspec._C; if that fails and one part is optional, the other part alone
        (the CPU kernels without the CUDA ones first); if nothing required is left, a failure
        only says why."""

        def build_extension(self, ext):
            try:
                return super().build_extension(ext)
            except Exception as exc:  # noqa: BLE001 - any compiler failure
                drop = "CUDA" if cuda_mode != "1" else "CPU" if cpu_mode != "1" else None
                if not (cpu and cuda and drop):
                    raise
                _log(f"building fastspec._C failed, building it without the {drop} kernels: {exc}")
            if drop == "CUDA":
                ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
                ext.libraries = [lib for lib in ext.libraries if lib not in CUDA_LIBRARIES]
            else:
                ext.sources = [s for s in ext.sources if s not in CPU_SOURCES]
                ext.extra_compile_args["cxx"] = [f for f in ext.extra_compile_args["cxx"] if f not in openmp]
                ext.extra_link_args = []
            ext.define_macros = [d for d in ext.define_macros if d[0] != f"FASTSPEC_WITH_{drop}"]
            return super().build_extension(ext)

        def run(self):
            try:
                super().run()
            except Exception as exc:  # noqa: BLE001 - any compiler failure
                if required:
                    raise
                _log(f"building fastspec._C failed, continuing without it: {exc}")

    return [ext], {"build_ext": OptionalBuildExt}


ext_modules, cmdclass = _build_plan()

setup(
    packages=find_packages(include=["fastspec", "fastspec.*"]) + ["fastspec.triton_kernels"],
    package_dir={"fastspec.triton_kernels": "triton_kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass or {"build_ext": build_ext},
)
