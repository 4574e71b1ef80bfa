"""``python -m fastspec``: self-check every op against its float64 reference on this
device, then a short benchmark against a baseline.

Options: ``--quick`` (fewer sizes, shorter timing), ``--no-bench``, ``--json PATH``.
Exits non-zero if any check fails. Full benchmarks: ``bench/`` in the repository.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
from collections.abc import Callable, Collection

import torch

import fastspec
from fastspec import _timing
from fastspec.hippo import init_log_dt, s4d_init
from fastspec.butterfly import random_orthogonal_twiddle
from fastspec.ops import butterfly as butterfly_ops
from fastspec.ops import fftconv as fftconv_ops
from fastspec.ops import gaunt as gaunt_ops
from fastspec.ops import ssm as ssm_ops
from fastspec.reference.butterfly import butterfly_per_factor, butterfly_reference, monarch_reference, monarch_two_bmm
from fastspec.reference.fftconv import fft_conv_pytorch, fft_conv_reference
from fastspec.reference.fwht import fwht_dense, fwht_reference
from fastspec.reference.gaunt import gaunt_reference
from fastspec.reference.ssm import linear_scan_reference, selective_scan_reference, ssm_kernel_reference

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclasses.dataclass(frozen=True)
class Family:
    """One op family as the main job sees it.

    ``make(shape, dtype, device)`` returns the op's inputs (a tuple); ``op(*inputs,
    backend=)`` runs it; ``reference(*inputs)`` is the float64 result; ``baseline(device)``
    gives (name, fn(*inputs)) to time against. Shapes are keyed by device type.
    ``backends()`` names the backends that implement the op (None: every backend).
    """

    name: str
    make: Callable[..., tuple]
    op: Callable[..., torch.Tensor]
    reference: Callable[..., torch.Tensor]
    baseline: Callable[[torch.device], tuple[str, Callable]]
    check_shapes: dict[str, list[tuple[int, ...]]]
    bench_cases: dict[str, list[tuple[tuple[int, ...], torch.dtype]]]
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES
    backends: Callable[[], Collection[str]] | None = None

    def runs_on(self, backend: str) -> bool:
        return self.backends is None or backend in self.backends()


def _fwht_baseline(device):
    """CPU: the dense matmul x @ (H * scale). CUDA: torch.clone of x (the copy floor)."""
    if device.type == "cuda":
        return "clone", torch.clone
    return "matmul", lambda x: fwht_dense(x, x.shape[-1] ** -0.5)


def _fftconv_make(gated: bool):
    """make(shape, dtype, device) for fft_conv: (u, k) or (u, k, pregate, postgate, D); a
    causal filter as long as the sequence, scaled by 1/sqrt(L)."""

    def make(shape, dtype, device):
        B, H, L = shape
        u = torch.randn(shape, dtype=dtype, device=device)
        k = torch.randn(H, L, dtype=dtype, device=device) / L**0.5
        if not gated:
            return u, k
        return u, k, *(torch.randn(shape, dtype=dtype, device=device) for _ in range(2)), torch.randn(
            H, dtype=dtype, device=device)

    return make


def _gates(rest):
    return dict(zip(("pregate", "postgate", "D"), rest))


def _linear_scan_make(shape, dtype, device):
    """(gates uniform in (0, 1), tokens standard normal), each (B, C, T)."""
    return torch.rand(shape, device=device).to(dtype), torch.randn(shape, device=device).to(dtype)


def _selective_make(shape, dtype, device):
    """A Mamba layer's (u, delta, A, B, C, D, z, delta_bias) for (B, D, L), N = 16: Δ after
    softplus in 1e-3 … 0.1, A = −(1 … 16), input-dependent B and C."""
    batch, channels, L = shape
    state = torch.float64 if dtype == torch.float64 else torch.float32
    u, delta, z = (torch.randn(shape, device=device).to(dtype) for _ in range(3))
    A = -torch.arange(1, 17, device=device, dtype=state).expand(channels, 16).contiguous()
    B, C = (torch.randn(batch, 16, L, device=device).to(dtype) for _ in range(2))
    dt = torch.exp(torch.rand(channels, device=device, dtype=state) * (math.log(0.1) - math.log(1e-3))
                   + math.log(1e-3))
    return u, delta * 0.5, A, B, C, torch.ones(channels, device=device, dtype=state), z, dt + torch.log(
        -torch.expm1(-dt))


def _gaunt_make(shape, dtype, device):
    """(x1, x2) of shape (rows, C, (L+1)²) for (rows, C, L)."""
    rows, channels, lmax = shape
    return tuple(torch.randn(rows, channels, (lmax + 1) ** 2, device=device).to(dtype) for _ in range(2))


def _kernel_make(shape, dtype, device):
    """S4D-Lin (A, B), C complex normal, log Δ in [log 1e-3, log 0.1], for (H, N, L); and
    arange(L), which carries L."""
    H, N, L = shape
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    A, B = s4d_init("lin", H, N, dtype=cdtype)
    log_dt = init_log_dt(H, dtype=dtype)
    return (*(t.to(device) for t in (A, B, torch.randn(H, N, dtype=cdtype), log_dt)),
            torch.arange(L, device=device))


def _butterfly_make(shape, dtype, device):
    """(twiddle, x) for x (batch, nstacks, n): two blocks of random orthogonal twiddles."""
    batch, nstacks, n = shape
    return random_orthogonal_twiddle(nstacks, 2, n, dtype, device), torch.randn(shape, device=device).to(dtype)


def _monarch_make(shape, dtype, device):
    """(x, w1, w2) for x (batch, n), n a square: √n blocks of √n × √n."""
    batch, n = shape
    b = math.isqrt(n)
    w1, w2 = (torch.randn(b, b, b, device=device) / math.sqrt(b) for _ in range(2))
    return torch.randn(shape, device=device).to(dtype), w1.to(dtype), w2.to(dtype)


FAMILIES = [
    Family(
        name="fwht",
        make=lambda shape, dtype, device: (torch.randn(shape, dtype=dtype, device=device),),
        op=lambda x, backend: fastspec.fwht(x, x.shape[-1] ** -0.5, backend=backend),
        reference=lambda x: fwht_reference(x, x.shape[-1] ** -0.5),
        baseline=_fwht_baseline,
        check_shapes={  # 11008 = 172·64 (Llama-2-7B's MLP width) and 4080 = 1020·4: the largest block
            "cpu": [(4, 256), (3, 12 * 64), (2, 3, 40 * 32), (2, 4096), (2, 11008)],
            "cuda": [(4, 256), (3, 12 * 64), (2, 3, 40 * 32), (64, 4096), (16, 32768), (2, 2**20), (64, 11008),
                     (8, 4080), (4, 27648)],
        },
        bench_cases={
            "cpu": [((256, 4096), torch.float32), ((64, 11008), torch.float32)],
            "cuda": [((16 * 2048, n), torch.float16) for n in (256, 1024, 4096, 16384, 11008)],
        },
    ),
    *(Family(
        name="fft_conv" + (" gated" if gated else ""),
        make=_fftconv_make(gated),
        op=lambda u, k, *rest, backend: fastspec.fft_conv(u, k, **_gates(rest), backend=backend),
        reference=lambda u, k, *rest: fft_conv_reference(u, k, **_gates(rest)),
        baseline=lambda device: ("pytorch", lambda u, k, *rest: fft_conv_pytorch(u, k, **_gates(rest))),
        check_shapes={  # odd lengths (777, 1000) have no power-of-two FFT
            "cpu": [(2, 4, 777), (1, 3, 1), (2, 3, 1000), (2, 4, 4096)],
            "cuda": [(2, 8, 777), (1, 3, 1), (4, 16, 4096), (2, 4, 16384)],
        },
        bench_cases={  # the CPU size plain, its GPU size gated
            "cpu": [] if gated else [((8, 64, 4096), torch.float32)],
            "cuda": [((64, 768, 4096), torch.float16)] if gated else [],
        },
        backends=lambda: fftconv_ops._IMPLS,
    ) for gated in (False, True)),
    Family(
        name="linear_scan",
        make=_linear_scan_make,
        op=lambda a, b, backend: fastspec.linear_scan(a, b, backend=backend),
        reference=linear_scan_reference,
        baseline=lambda device: ("clone", lambda a, b: b.clone()) if device.type == "cuda" else (
            "pytorch-loop", linear_scan_reference),
        check_shapes={"cpu": [(2, 3, 1), (2, 4, 1000), (1, 3, 4096)],
                      "cuda": [(2, 3, 1), (4, 64, 1000), (8, 1536, 4096)]},
        bench_cases={"cpu": [((2, 64, 4096), torch.float32)], "cuda": [((8, 1536, 65536), torch.float32)]},
        backends=lambda: ssm_ops._LINEAR_SCAN,
    ),
    Family(
        name="selective_scan",
        make=_selective_make,
        op=lambda *t, backend: fastspec.selective_scan(*t, True, backend=backend),
        reference=lambda *t: selective_scan_reference(*t, True),
        baseline=lambda device: ("pytorch-loop", lambda *t: selective_scan_reference(*t, True, dtype=torch.float32)),
        check_shapes={"cpu": [(2, 4, 1), (2, 8, 77), (1, 4, 1000)], "cuda": [(2, 8, 77), (8, 256, 2048)]},
        bench_cases={"cpu": [((2, 64, 2048), torch.float32)], "cuda": [((8, 2048, 2048), torch.bfloat16)]},
        backends=lambda: ssm_ops._SELECTIVE,
    ),
    Family(
        name="ssm_kernel",
        make=_kernel_make,
        op=lambda *t, backend: fastspec.ssm_kernel(*t[:4], t[4].numel(), backend=backend),
        reference=lambda *t: ssm_kernel_reference(*t[:4], t[4].numel()),
        baseline=lambda device: ("materialised", lambda *t: ssm_kernel_reference(*t[:4], t[4].numel(),
                                                                                 dtype=torch.complex64)),
        check_shapes={"cpu": [(2, 4, 1), (4, 64, 1000), (2, 64, 16384)], "cuda": [(4, 64, 1000), (64, 64, 16384)]},
        bench_cases={"cpu": [((16, 64, 16384), torch.float32)], "cuda": [((1024, 64, 16384), torch.float32)]},
        dtypes=(torch.float32, torch.float64),
        backends=lambda: ssm_ops._VANDERMONDE,
    ),
    Family(
        name="gaunt_tensor_product",
        make=_gaunt_make,
        op=lambda x1, x2, backend: fastspec.gaunt_tensor_product(x1, x2, backend=backend),
        reference=gaunt_reference,
        baseline=lambda device: ("dense", lambda x1, x2: fastspec.gaunt_tensor_product(x1, x2, method="dense",
                                                                                       backend="torch")),
        check_shapes={"cpu": [(3, 2, 1), (4, 3, 4), (2, 2, 8)], "cuda": [(3, 2, 1), (64, 16, 4), (256, 32, 8)]},
        bench_cases={"cpu": [((1024, 32, 4), torch.float32)], "cuda": [((4096, 128, 6), torch.float32)]},
        backends=lambda: gaunt_ops._IMPLS,
    ),
    Family(
        name="butterfly_multiply",
        make=_butterfly_make,
        op=lambda tw, x, backend: fastspec.butterfly_multiply(tw, x, increasing_stride=False, backend=backend),
        reference=lambda tw, x: butterfly_reference(tw, x, False),
        baseline=lambda device: ("pytorch-per-factor", lambda tw, x: butterfly_per_factor(tw, x, False)),
        check_shapes={"cpu": [(4, 2, 256), (3, 1, 1024), (2, 1, 2**14)],
                      "cuda": [(4, 2, 256), (64, 1, 4096), (16, 1, 2**15)]},  # 2^15: Triton's two-launch path
        bench_cases={"cpu": [((1024, 1, 1024), torch.float32)], "cuda": [((16384, 1, 4096), torch.float32)]},
        backends=lambda: butterfly_ops._BUTTERFLY,
    ),
    Family(
        name="monarch_multiply",
        make=_monarch_make,
        op=lambda x, w1, w2, backend: fastspec.monarch_multiply(x, w1, w2, backend=backend),
        reference=monarch_reference,
        baseline=lambda device: ("two-bmm", monarch_two_bmm),
        check_shapes={"cpu": [(4, 256), (3, 1024)], "cuda": [(64, 1024), (64, 4096)]},
        bench_cases={"cpu": [((1024, 1024), torch.float32)], "cuda": [((16384, 4096), torch.bfloat16)]},
        backends=lambda: butterfly_ops._MONARCH,
    ),
]


def _for_device(table: dict, device: torch.device):
    """The entry of ``table`` for this device type ('cpu' for anything but CUDA)."""
    return table["cuda" if device.type == "cuda" else "cpu"]


def family_op(fam: Family) -> str:
    """The op a family exercises: its name's first word ('fft_conv gated' -> 'fft_conv')."""
    return fam.name.split()[0]


def self_check(device: torch.device, quick: bool, families: list[Family]) -> list[dict]:
    """Each family x usable backend x shape x dtype against its float64 reference; a
    combination the op rejects as unsupported (ValueError) is a SKIP."""
    cases = []
    for fam in families:
        shapes = _for_device(fam.check_shapes, device)
        for backend in filter(fam.runs_on, _timing.usable_backends(device, timing=False)):
            for shape in shapes[:2] if quick else shapes:
                cases += [(fam, backend, shape, dtype) for dtype in fam.dtypes]
    rows = []
    for fam, backend, shape, dtype in _timing.progress(cases, "check", lambda c: f"{c[0].name} {c[1]} {c[2]} {c[3]}"):
        row = {**_timing.case_fields(fam.name, shape, dtype), "backend": backend, "tol": _timing.TOLERANCE[dtype]}
        inputs = fam.make(shape, dtype, device)
        try:
            row["rel_err"] = _timing.rel_error(fam.op(*inputs, backend=backend), fam.reference(*inputs))
            row["status"] = "PASS" if row["rel_err"] <= row["tol"] else "FAIL"
        except (ValueError, NotImplementedError) as exc:  # the op's validation: not supported here
            row["status"], row["note"] = "SKIP", str(exc)
        except Exception as exc:  # noqa: BLE001 - any other error is a failure
            row["status"], row["note"] = "FAIL", f"{type(exc).__name__}: {exc}"
        rows.append(row)
    return rows


def bench(device: torch.device, quick: bool, families: list[Family]) -> list[dict]:
    """Each family's bench cases: every timeable backend against the family's baseline
    (a backend that rejects the size gets ms None and a "skip:" note; one that fails
    otherwise gets the error as note, and fails the run)."""
    timing = {"warmup_ms": 10, "rep_ms": 30} if quick else {"warmup_ms": 25, "rep_ms": 100}
    info = _timing.run_info(device)
    cases = [(fam, shape, dtype) for fam in families
             for shape, dtype in _for_device(fam.bench_cases, device)]
    records = []
    for fam, shape, dtype in _timing.progress(cases, "bench", lambda c: f"{c[0].name} {c[1]} {c[2]}"):
        first = fam.make(shape, dtype, device)
        nbytes = sum(t.numel() * t.element_size() for t in first)
        inputs = [first] + [fam.make(shape, dtype, device) for _ in range(_timing.cache_copies(nbytes, device) - 1)]
        base_name, base_fn = fam.baseline(device)
        base_ms = _timing.median_ms(base_fn, inputs, device=device, **timing)
        for backend in filter(fam.runs_on, _timing.usable_backends(device, timing=True)):
            rec = {**_timing.case_fields(fam.name, shape, dtype), "backend": backend, "baseline": base_name,
                   "ms": None, "baseline_ms": base_ms, "speedup": None, **info}
            try:
                op = functools.partial(fam.op, backend=backend)
                rec["ms"] = _timing.median_ms(op, inputs, device=device, **timing)
                rec["speedup"] = base_ms / rec["ms"]
            except (ValueError, NotImplementedError) as exc:  # the op's validation: not supported here
                rec["note"] = f"skip: {exc}"
            except Exception as exc:  # noqa: BLE001 - reported in the table, fails the run
                rec["note"] = f"{type(exc).__name__}: {exc}"
            records.append(rec)
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastspec", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and shorter timing")
    parser.add_argument("--no-bench", action="store_true", help="self-check only")
    parser.add_argument("--json", metavar="PATH", help="also write checks and timings as JSON here")
    ops = sorted({family_op(f) for f in FAMILIES})
    parser.add_argument("--op", action="append", choices=ops, metavar="OP",
                        help=f"only this op's families (repeatable; default all: {', '.join(ops)})")
    args = parser.parse_args(argv)
    families = [f for f in FAMILIES if args.op is None or family_op(f) in args.op]

    device = _timing.default_device()
    info = _timing.run_info(device)
    print(f"fastspec {fastspec.__version__} on {info['device']}: torch {info['torch']}, triton {info['triton']}")
    for name, b in fastspec.backends().items():
        print(f"  backend {name:7s} {'available' if b.available else 'unavailable'}: {b.reason}")

    checks = self_check(device, args.quick, families)
    print("\nSelf-check (relative error vs float64 reference):")
    print(_timing.format_table(checks, ["op", "backend", "shape", "dtype", "rel_err", "tol", "status", "note"]))
    failed = sum(r["status"] == "FAIL" for r in checks)
    print(f"{len(checks) - failed} of {len(checks)} checks passed or skipped, {failed} failed")

    records = []
    if not args.no_bench:
        records = bench(device, args.quick, families)
        print("\nBenchmark (median ms; speedup = baseline ms / ms):")
        print(_timing.format_table(records, ["op", "shape", "dtype", "backend", "ms", "baseline", "baseline_ms",
                                             "speedup", "note"]))
        failed += sum(r["ms"] is None and not r.get("note", "").startswith("skip:") for r in records)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**info, "checks": checks, "bench": records}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
