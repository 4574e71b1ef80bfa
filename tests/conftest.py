"""Shared fixtures: where tests run, which backends they cover, and the tolerance rule.

Without a GPU, Triton kernels run on the CPU interpreter: TRITON_INTERPRET=1 must be set
before triton is imported, so it is set here, first.
"""
import os
import subprocess
import zlib

import pytest
import torch

# Before triton is imported: its standard library (tl.zeros, ...) is decorated at import
# as interpreted or compiled functions, by this variable.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402

import fastspec  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
AVAILABLE = {name for name, info in fastspec.backends().items() if info.available}


def backend_params(*names):
    """pytest params over the named backends; unavailable ones are skipped with the reason,
    and the cuda backend carries the `cuda` mark. The tests put their data on DEVICE, so on a
    GPU the cpu backend is left to tests/test_fwht_cpu.py (which uses CPU tensors everywhere)."""
    infos = fastspec.backends()
    params = []
    for name in names or ("torch", "triton", "cuda", "cpu"):
        marks = [pytest.mark.cuda] if name == "cuda" else []
        if not infos[name].available:
            marks.append(pytest.mark.skip(reason=f"{name}: {infos[name].reason}"))
        elif name == "cpu" and DEVICE.type != "cpu":
            marks.append(pytest.mark.skip(reason=f"cpu: the tests run on {DEVICE.type} tensors here"))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


# Per-dtype tolerance (DESIGN.md): the kernel's error against the float64 reference may be
# at most twice the error of the reference computed in that dtype, plus a small floor.
# "The reference in that dtype" is the exact result rounded once to the dtype: the best
# any computation in that dtype can do (a dense in-dtype matmul is no better).
# float32's floor makes the allowance about 2e-7 (twice one rounding is ~5e-8): the README's
# promise, so a kernel that loses bits (a two-part TF32 split: ~5e-7) fails.
_FLOOR = {torch.float64: 1e-12, torch.float32: 1.5e-7, torch.float16: 1e-4, torch.bfloat16: 1e-3}


def _rel_err(out: torch.Tensor, ref: torch.Tensor, dim=None) -> torch.Tensor:
    diff = (out.double() - ref).flatten(1) if dim else (out.double() - ref).flatten()
    base = ref.flatten(1) if dim else ref.flatten()
    return diff.norm(dim=-1) / base.norm(dim=-1).clamp_min(1e-300)


def assert_close_to_reference(out: torch.Tensor, ref64: torch.Tensor, floor: float | None = None) -> None:
    """out: the kernel's result; ref64: the float64 reference. Checked over the whole
    tensor and row by row (NaN fails). ``floor`` replaces the dtype's floor where a family
    states a larger one (e.g. the log2(n) roundings of a float32 FFT)."""
    assert out.shape == ref64.shape, (out.shape, ref64.shape)
    ref64 = ref64.to(out.device)
    ref_in_dtype = ref64.to(out.dtype)
    floor = _FLOOR[out.dtype] if floor is None else floor
    total, allowed = _rel_err(out, ref64), 2 * _rel_err(ref_in_dtype, ref64) + floor
    assert total <= allowed, f"relative error {total:.3e} > allowed {allowed:.3e} ({out.dtype})"
    if out.dim() > 1 and out.shape[0] > 1:
        rows = _rel_err(out.reshape(out.shape[0], -1), ref64.reshape(out.shape[0], -1), dim=1)
        ref_rows = _rel_err(ref_in_dtype.reshape(out.shape[0], -1), ref64.reshape(out.shape[0], -1), dim=1)
        worst = int(rows.argmax())
        assert rows.max() <= 2 * ref_rows.max() + floor, f"row {worst}: relative error {rows[worst]:.3e}"


SEED = int(os.environ.setdefault("FASTSPEC_TEST_SEED", str(torch.randint(0, 2**31, ()).item())))
"""Set in the environment here so that pytest-xdist workers, started after this import, share
the seed the header prints (each would draw its own otherwise)."""


def pytest_report_header(config):
    return f"fastspec: device={DEVICE}, backends={sorted(AVAILABLE)}, FASTSPEC_TEST_SEED={SEED}"


@pytest.fixture(autouse=True)
def _seed_each_test(request):
    """Fresh data every session (the seed is in the header: rerun with FASTSPEC_TEST_SEED)."""
    torch.manual_seed(SEED + zlib.crc32(request.node.nodeid.encode()))


def random_input(shape, dtype, device=DEVICE) -> torch.Tensor:
    """Normal random data (never zeros); magnitudes realistic for every dtype."""
    return torch.randn(shape, dtype=torch.float64).to(device=device, dtype=dtype)


CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
"""cuobjdump as Triton ships it: reads sm_90 machine code here, without a CUDA toolkit."""


def cuobjdump(flag: str, cubin: str) -> str:
    """The output of ``cuobjdump FLAG CUBIN`` (the test is skipped where the tool is missing)."""
    if not os.path.exists(CUOBJDUMP):
        pytest.skip(f"no cuobjdump at {CUOBJDUMP}")
    return subprocess.run([CUOBJDUMP, flag, cubin], capture_output=True, text=True, check=True).stdout
