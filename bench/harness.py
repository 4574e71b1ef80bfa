"""Benchmark harness shared by every ``bench/bench_<family>.py``.

A family script describes each benchmark point as a :class:`Case` (inputs, the fastspec
backends to time, the baselines, a correctness check) and runs them inside a
:class:`Harness`. For each case the harness times ``torch.clone`` of the first input (the
copy floor), every baseline and every backend in the same run, on the same rotating
inputs (interleaved over ``rounds`` rounds where asked); it checks each result once on
fresh inputs and never times one that fails.
On exit, also after SIGTERM or an error, it prints a table and writes
``<out>/<family>-<device>.json`` (records as in DESIGN.md) and a PNG plot.
"""
from __future__ import annotations

import dataclasses
import json
import signal
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from fastspec import _timing

RESULTS = Path(__file__).resolve().parent / "results"
NOT_SUPPORTED = (ValueError, NotImplementedError)
"""Errors that mean 'this input is not supported here' (the ops' validation): a skip."""


@dataclasses.dataclass
class Case:
    """One benchmark point: an op at one shape and dtype.

    make() returns fresh random inputs (a tuple) on the device; candidates maps a
    fastspec backend, and baselines a baseline name, to fn(*inputs) -> output;
    check(inputs, output) returns the relative error against a float64 reference;
    target(backend, times_ms) may return a note on a speed target (times_ms holds
    'clone', each baseline and each backend that ran).
    """

    op: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[], tuple]
    candidates: dict[str, Callable]
    baselines: dict[str, Callable]
    check: Callable[[tuple, torch.Tensor], float]
    target: Callable[[str, dict[str, float]], str | None] | None = None


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class Harness:
    """Runs cases on one device and reports them; use as a context manager."""

    def __init__(self, family: str, device: torch.device, out_dir: str | Path | None = None,
                 *, warmup_ms: float = 25.0, rep_ms: float = 100.0, rounds: int = 1):
        self.family, self.device, self.rounds = family, torch.device(device), rounds
        self.out_dir = Path(out_dir) if out_dir else RESULTS
        self.timing = {"warmup_ms": warmup_ms, "rep_ms": rep_ms}
        self.info = _timing.run_info(self.device)
        self.records: list[dict] = []
        self.failures = 0

    def __enter__(self):
        def stop(signum, frame):
            raise SystemExit(128 + signum)

        self._old_handler = signal.signal(signal.SIGTERM, stop)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._old_handler)
        self.report()
        return False

    def _check(self, fn, case: Case) -> dict:
        """Run fn once on fresh inputs against the reference: rel_err, the bytes it moved and
        status ('ok', 'skip: ...' or 'FAIL: ...')."""
        res = {"rel_err": None, "moved": None}
        try:
            fresh = case.make()
            out = fn(*fresh)
            res["rel_err"] = err = case.check(fresh, out)
            res["moved"] = _nbytes(fresh) + out.numel() * out.element_size()
            del fresh, out
            tol = _timing.TOLERANCE[case.dtype]
            return {**res, "status": "ok" if err <= tol else f"FAIL: rel_err {err:.3g} > {tol:g}"}
        except NOT_SUPPORTED as exc:
            return {**res, "status": f"skip: {exc}"}
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            return {**res, "status": "skip: out of memory"}
        except Exception as exc:  # noqa: BLE001 - reported, the run goes on
            return {**res, "status": f"FAIL: {type(exc).__name__}: {exc}"}

    def _time(self, fns: dict, sets: list[tuple]) -> dict:
        """Median ms of each fn on ``sets``; with several rounds, each round times every fn
        once (interleaved, so load that comes and goes hits all alike) and the result is the
        median over the rounds. A fn that raises gets its status string instead."""
        samples: dict = {name: [] for name in fns}
        for _ in range(self.rounds):
            for name, fn in fns.items():
                if isinstance(samples[name], str):
                    continue
                try:
                    samples[name].append(_timing.median_ms(fn, sets, device=self.device, **self.timing))
                except torch.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    samples[name] = "skip: out of memory"
                except Exception as exc:  # noqa: BLE001 - reported, the run goes on
                    samples[name] = f"FAIL: {type(exc).__name__}: {exc}"
        return {name: v if isinstance(v, str) else statistics.median(v) for name, v in samples.items()}

    def _peak_mb(self, fn, args) -> float | None:
        """Memory one call allocates beyond what is already held (CUDA only), MiB."""
        if self.device.type != "cuda":
            return None
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        held = torch.cuda.memory_allocated(self.device)
        try:
            fn(*args)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            return None
        torch.cuda.synchronize(self.device)
        return (torch.cuda.max_memory_allocated(self.device) - held) / 2**20

    def run(self, case: Case) -> None:
        """Measure one case: clone, baselines and candidates; append its records."""
        sets = [case.make()]
        sets += [case.make() for _ in range(_timing.cache_copies(_nbytes(sets[0]), self.device) - 1)]
        named = {**{("baseline", n): fn for n, fn in case.baselines.items()},
                 **{("candidate", n): fn for n, fn in case.candidates.items()}}
        res = {key: self._check(fn, case) for key, fn in named.items()}
        timed = {("clone", "clone"): lambda x, *rest: x.clone(),
                 **{key: fn for key, fn in named.items() if res[key]["status"] == "ok"}}
        times_ms = self._time(timed, sets)
        clone_ms = times_ms.pop(("clone", "clone"))
        clone_ms = clone_ms if isinstance(clone_ms, float) else None
        for key, r in res.items():
            ms = times_ms.get(key)
            if isinstance(ms, str):
                r["status"] = ms
            ok = isinstance(ms, float)
            r["ms"], r["gbps"] = (ms, r["moved"] / ms / 1e6) if ok else (None, None)
            r["peak_mb"] = self._peak_mb(named[key], sets[0]) if ok else None
            del r["moved"]
        del sets
        base = {n: r for (kind, n), r in res.items() if kind == "baseline"}
        cand = {n: r for (kind, n), r in res.items() if kind == "candidate"}
        for name, r in base.items():
            if r["status"] != "ok":
                print(f"  baseline {name} at {case.shape} {case.dtype}: {r['status']}", flush=True)
        times = {"clone": clone_ms} if clone_ms else {}
        times.update({k: r["ms"] for k, r in {**base, **cand}.items() if r["ms"]})
        fields = _timing.case_fields(case.op, case.shape, case.dtype)
        for backend, res in cand.items():
            self.failures += res["status"].startswith("FAIL")
            ms = res.pop("ms")
            extra = {**res, "clone_ms": clone_ms, "copy_fraction": clone_ms / ms if ms and clone_ms else None,
                     "target": case.target(backend, times) if case.target and ms else None}
            baselines = [b for b in times if b not in cand] if ms else []
            for b in baselines or [None]:
                bms = times.get(b)
                self.records.append({"op": fields["op"], "backend": backend, "baseline": b,
                                     "shape": fields["shape"], "dtype": fields["dtype"], "ms": ms,
                                     "baseline_ms": bms, "speedup": bms / ms if bms and ms else None,
                                     "baseline_peak_mb": base[b]["peak_mb"] if b in base else None,
                                     **self.info, **extra})

    def rows(self) -> tuple[list[dict], list[str]]:
        """One table row per (case, backend), with a 'vs <baseline>' column per baseline."""
        rows, columns = {}, ["op", "shape", "dtype", "backend", "ms", "GB/s", "x clone"]
        for r in self.records:
            key = (r["op"], r["shape"], r["dtype"], r["backend"])
            row = rows.setdefault(key, {
                "op": r["op"], "shape": r["shape"], "dtype": r["dtype"], "backend": r["backend"],
                "ms": r["ms"], "GB/s": r["gbps"], "rel_err": r["rel_err"], "peak MB": r["peak_mb"],
                "x clone": 1 / r["copy_fraction"] if r["copy_fraction"] else None,
                "target": r["target"], "status": r["status"]})
            if r["baseline"] not in (None, "clone"):
                col = f"vs {r['baseline']}"
                row[col] = r["speedup"]
                columns += [col] if col not in columns else []
        columns += ["rel_err", "peak MB", "target", "status"]
        return list(rows.values()), columns

    def report(self) -> None:
        """Print the table; write the JSON records and the PNG plot."""
        if not self.records:
            print("no results")
            return
        rows, columns = self.rows()
        print(f"\n{self.family} on {self.info['device']} ({self.info['date']}, torch {self.info['torch']}, "
              f"triton {self.info['triton']}); ms = median; x clone = ms / torch.clone ms; "
              "vs <baseline> = baseline ms / ms")
        print(_timing.format_table(rows, columns))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        stem = self.out_dir / f"{self.family}-{_timing.device_slug(self.device)}"
        stem.with_suffix(".json").write_text(json.dumps(self.records, indent=1))
        print(f"wrote {stem.with_suffix('.json')}")
        self.plot(stem.with_suffix(".png"))

    def plot(self, path: Path) -> None:
        """Time relative to torch.clone per shape, one panel per dtype, one line per
        backend and baseline."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no plot")
            return
        series: dict[str, dict[str, dict[str, float]]] = {}  # dtype -> line -> shape -> x clone
        for r in self.records:
            lines = series.setdefault(r["dtype"], {})
            if r["copy_fraction"]:
                lines.setdefault(r["backend"], {})[r["shape"]] = 1 / r["copy_fraction"]
            if r["baseline"] not in (None, "clone") and r["baseline_ms"] and r["clone_ms"]:
                lines.setdefault(f"baseline {r['baseline']}", {})[r["shape"]] = r["baseline_ms"] / r["clone_ms"]
        series = {d: lines for d, lines in series.items() if lines}
        if not series:
            return
        fig, axes = plt.subplots(1, len(series), figsize=(6 * len(series), 4.5), squeeze=False)
        for ax, (dtype, lines) in zip(axes[0], series.items(), strict=True):
            shapes = list(dict.fromkeys(s for line in lines.values() for s in line))
            for name, pts in lines.items():
                xs = [i for i, s in enumerate(shapes) if s in pts]
                style = "x--" if name.startswith("baseline") else "o-"
                ax.plot(xs, [pts[shapes[i]] for i in xs], style, label=name)
            ax.axhline(1.0, color="gray", lw=0.8)
            ax.set_xticks(range(len(shapes)), shapes, rotation=45, ha="right", fontsize=7)
            ax.set_yscale("log")
            ax.set_ylabel("time / torch.clone time")
            ax.set_title(f"{self.family} {dtype}")
            ax.legend(fontsize=7)
        fig.suptitle(f"{self.info['device']}, {self.info['date']}", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print(f"wrote {path}")
