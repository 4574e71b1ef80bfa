"""Build script: pure Python everywhere; `fastspec._C` (csrc/) only where CUDA is there.

FASTSPEC_BUILD_CUDA=0 never builds the extension, =1 requires it (a failure is an error),
unset builds it when torch has CUDA and nvcc is found, and otherwise says why it did not.
Build the extension with `pip install --no-build-isolation -e .` so that the installed
torch is the one it compiles against. TORCH_CUDA_ARCH_LIST and MAX_JOBS are honoured.
"""
import glob
import os
import sys

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


def _log(msg):
    print(f"fastspec setup: {msg}", file=sys.stderr)


def _cuda_build_plan():
    """Return (extensions, cmdclass) for fastspec._C, or ([], {}) with the reason logged."""
    mode = os.environ.get("FASTSPEC_BUILD_CUDA", "").strip()
    if mode not in ("", "0", "1"):
        raise SystemExit(f"FASTSPEC_BUILD_CUDA must be 0 or 1, got {mode!r}")
    if mode == "0":
        _log("FASTSPEC_BUILD_CUDA=0: not building the CUDA extension")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as exc:
        reason = f"torch is not importable in the build environment ({exc}); use --no-build-isolation"
        if mode == "1":
            raise SystemExit(f"FASTSPEC_BUILD_CUDA=1 but {reason}")
        _log(f"not building the CUDA extension: {reason}")
        return [], {}
    reasons = []
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is a build without CUDA")
    if cpp_extension.CUDA_HOME is None:
        reasons.append("nvcc / CUDA_HOME not found")
    if reasons:
        if mode == "1":
            raise SystemExit("FASTSPEC_BUILD_CUDA=1 but the CUDA extension cannot be built: " + "; ".join(reasons))
        _log("not building the CUDA extension: " + "; ".join(reasons))
        return [], {}
    sources = ["csrc/bindings.cpp"] + sorted(glob.glob("csrc/**/*.cu", recursive=True))
    ext = cpp_extension.CUDAExtension(
        name="fastspec._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={
            "cxx": ["-O3", "-std=c++17"],
            "nvcc": ["-O3", "-std=c++17", "-lineinfo"],
        },
    )
    base = cpp_extension.BuildExtension.with_options(use_ninja=True)

    class OptionalBuildExt(base):
        """Build fastspec._C; unless FASTSPEC_BUILD_CUDA=1, a failure only says why."""

        def run(self):
            try:
                super().run()
            except Exception as exc:  # noqa: BLE001 - any compiler failure
                if mode == "1":
                    raise
                _log(f"building the CUDA extension failed, continuing without it: {exc}")

    return [ext], {"build_ext": OptionalBuildExt}


ext_modules, cmdclass = _cuda_build_plan()

setup(
    packages=find_packages(include=["fastspec", "fastspec.*"]) + ["fastspec.triton_kernels"],
    package_dir={"fastspec.triton_kernels": "triton_kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass or {"build_ext": build_ext},
)
