"""Benchmark harness shared by every ``bench/bench_<family>.py``.

A family script describes each benchmark point as a :class:`Case` (inputs, the fastspec
backends to time, the baselines, a correctness check) and runs them inside a
:class:`Harness`. For each case the harness times ``torch.clone`` of the first input (the
copy floor), every baseline and every backend in the same run, on the same rotating
inputs; it checks each result once on fresh inputs and never times one that fails. With
``rounds`` > 1 the timings are interleaved: each round times every function in turn (the
order rotating from round to round), and a time is the median over the rounds, so that a
burst of load on a shared machine hits every function alike.
On CUDA it also measures the memory one call of each function allocates (peak_mb, and
baseline_peak_mb for the baseline a record compares with). A case that states the bytes
it must move at least (``floor_bytes``) gets its time over that floor at the copy
bandwidth of the same run (x_floor).
On exit, also after SIGTERM or an error, it prints a table and writes
``<out>/<family>-<device>.json`` (records as in DESIGN.md) and a PNG plot.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
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
    check(inputs, output) returns the relative error against a float64 reference
    (checks[name] replaces it for a baseline or backend of other semantics, e.g. another
    scale); a result passes within _timing.TOLERANCE of the dtype, or tolerances[name] (a
    baseline that computes in lower precision); target(backend, times_ms) may return a note
    on a speed target (times_ms holds 'clone', each baseline and each backend that ran).
    floor_bytes: the bytes any implementation must read and write (None: no floor);
    note: a remark every record of the case carries (e.g. why the shape is scaled down).
    """

    op: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[], tuple]
    candidates: dict[str, Callable]
    baselines: dict[str, Callable]
    check: Callable[[tuple, torch.Tensor], float]
    target: Callable[[str, dict[str, float]], str | None] | None = None
    checks: dict[str, Callable[[tuple, torch.Tensor], float]] = dataclasses.field(default_factory=dict)
    tolerances: dict[str, float] = dataclasses.field(default_factory=dict)
    floor_bytes: int | None = None
    note: str | None = None


def add_run_arguments(parser: argparse.ArgumentParser, quick: str, cpu_rounds: int = 3,
                      cpu_threads: int | None = None) -> None:
    """The options every family's command line has: --out, --quick (``quick`` says what it
    runs), --rounds and --threads (their help states the family's defaults)."""
    parser.add_argument("--out", help="output folder (default bench/results)")
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--rounds", type=int, help=f"interleaved timing rounds (default: {cpu_rounds} on CPU, 1 on GPU)")
    parser.add_argument("--threads", type=int, help=f"CPU threads (torch.set_num_threads; default: {cpu_threads or 'all'})")


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Timing of one family's run (the options of ``add_run_arguments`` applied to its defaults)."""

    device: torch.device
    rounds: int
    timing: dict

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"


def run_settings(args: argparse.Namespace, *, cpu_rep_ms: float = 200, gpu_rep_ms: float = 50,
                 quick_rep_ms: float = 20, warmup_ms: float = 10, cpu_rounds: int = 3, quick_rounds: int = 1,
                 cpu_threads: int | None = None) -> RunSettings:
    """Sets the torch threads (--threads, else ``cpu_threads`` on the CPU) and returns the
    device, the rounds (--rounds; else 1 on GPU, ``quick_rounds`` with --quick, ``cpu_rounds``)
    and the timing (``quick_rep_ms`` per function with --quick, after 5 ms of warm-up)."""
    device = _timing.default_device()
    gpu = device.type == "cuda"
    threads = args.threads or (None if gpu else cpu_threads)
    if threads:
        torch.set_num_threads(threads)
    rounds = args.rounds or (1 if gpu else quick_rounds if args.quick else cpu_rounds)
    if args.quick:
        timing = {"warmup_ms": 5, "rep_ms": quick_rep_ms}
    else:
        timing = {"warmup_ms": warmup_ms, "rep_ms": gpu_rep_ms if gpu else cpu_rep_ms}
    return RunSettings(device, rounds, timing)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def print_header(family: str, run: RunSettings, backends: list[str], peers: str = "") -> None:
    """The run's first line: the device, the backends timed, which peers were found, the rounds
    and the load (other jobs on the machine make CPU timings loose)."""
    print(f"{family} benchmark on {_timing.device_name(run.device)}: backends {backends}"
          f"{', ' + peers if peers else ''}; {run.rounds} round(s); load average {load_average()}", flush=True)


def with_control(baselines: dict[str, Callable], name: str, device: torch.device) -> dict[str, Callable]:
    """``baselines`` plus, on the CPU, baseline ``name`` once more as "<name> again": the ratio
    of the two times (``control_note``) is how far apart two timings of one function land in
    this run (a shared 2-core machine moves a millisecond-long call by 10–20% between runs),
    against which a speedup near 1 is read."""
    if torch.device(device).type == "cuda":
        return baselines
    fn = baselines[name]
    return {**baselines, f"{name} again": lambda *args, **kwargs: fn(*args, **kwargs)}


def control_note(times: dict[str, float], name: str) -> str:
    """" (noise: <name> / <name> again 1.03)" where ``with_control`` timed it twice, else ""."""
    again = f"{name} again"
    return f" (noise: {name} / {again} {times[name] / times[again]:.2f})" if name in times and again in times else ""


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class Harness:
    """Runs cases on one device and reports them; use as a context manager."""

    def __init__(self, family: str, device: torch.device, out_dir: str | Path | None = None,
                 *, warmup_ms: float = 25.0, rep_ms: float = 100.0, rounds: int = 1):
        self.family, self.device = family, torch.device(device)
        self.out_dir = Path(out_dir) if out_dir else RESULTS
        self.timing = {"warmup_ms": warmup_ms, "rep_ms": rep_ms / rounds}
        self.rounds = rounds
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
        print(f"load average at the end: {load_average()}", flush=True)
        self.report()
        return False

    def _check(self, name: str, fn, case: Case) -> dict:
        """Run fn once on fresh inputs and check it: rel_err, the bytes it moves, and status
        ('ok', 'skip: ...' or 'FAIL: ...')."""
        res = {"rel_err": None, "moved": None}
        try:
            fresh = case.make()
            out = fn(*fresh)
            res["rel_err"] = err = case.checks.get(name, case.check)(fresh, out)
            res["moved"] = _nbytes(fresh) + out.numel() * out.element_size()
            del fresh, out
            tol = case.tolerances.get(name, _timing.TOLERANCE[case.dtype])
            return {**res, "status": "ok" if err <= tol else f"FAIL: rel_err {err:.3g} > {tol:g}"}
        except NOT_SUPPORTED as exc:
            return {**res, "status": f"skip: {exc}"}
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            return {**res, "status": "skip: out of memory"}
        except Exception as exc:  # noqa: BLE001 - reported, the run goes on
            return {**res, "status": f"FAIL: {type(exc).__name__}: {exc}"}

    def _time(self, fns: dict[str, Callable], sets: list[tuple]) -> dict[str, float | None]:
        """Median ms of each function on ``sets``, over ``self.rounds`` interleaved rounds
        (None for one that runs out of memory)."""
        samples: dict[str, list[float]] = {name: [] for name in fns}
        names = list(fns)
        for r in range(self.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                if samples[name] is None:
                    continue
                try:
                    samples[name].append(_timing.median_ms(fns[name], sets, device=self.device, **self.timing))
                except torch.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    samples[name] = None
        return {name: statistics.median(s) if s else None for name, s in samples.items()}

    def _peak_mb(self, fn, args) -> float | None:
        """Memory one call allocates beyond what is already held (CUDA only), MiB."""
        if self.device.type != "cuda":
            return None
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        held = torch.cuda.memory_allocated(self.device)
        fn(*args)
        torch.cuda.synchronize(self.device)
        return (torch.cuda.max_memory_allocated(self.device) - held) / 2**20

    def run(self, case: Case) -> None:
        """Measure one case: clone, baselines and candidates; append its records."""
        sets = [case.make()]
        sets += [case.make() for _ in range(_timing.cache_copies(_nbytes(sets[0]), self.device) - 1)]
        base = {name: self._check(name, fn, case) for name, fn in case.baselines.items()}
        for name, res in base.items():
            if res["status"] != "ok":
                print(f"  baseline {name} at {case.shape} {case.dtype}: {res['status']}", flush=True)
        cand = {name: self._check(name, fn, case) for name, fn in case.candidates.items()}
        fns = {"clone": lambda x, *rest: x.clone()}
        fns.update({name: fn for name, fn in {**case.baselines, **case.candidates}.items()
                    if {**base, **cand}[name]["status"] == "ok"})
        measured = self._time(fns, sets)
        for name, res in {**base, **cand}.items():
            res["ms"] = measured.get(name)
            moved = res.pop("moved")
            res["gbps"] = moved / res["ms"] / 1e6 if res["ms"] else None
            res["peak_mb"] = self._peak_mb(fns[name], sets[0]) if res["ms"] else None
        clone_ms = measured["clone"]
        floor_ms = None
        if case.floor_bytes and clone_ms:  # clone reads and writes the first input once
            floor_ms = clone_ms * case.floor_bytes / (2 * _nbytes(sets[0][:1]))
        del sets
        times = {"clone": clone_ms} if clone_ms else {}
        times.update({k: r["ms"] for k, r in {**base, **cand}.items() if r["ms"]})
        fields = _timing.case_fields(case.op, case.shape, case.dtype)
        for backend, res in cand.items():
            self.failures += res["status"].startswith("FAIL")
            ms = res.pop("ms")
            extra = {**res, "clone_ms": clone_ms, "copy_fraction": clone_ms / ms if ms and clone_ms else None,
                     "floor_ms": floor_ms, "x_floor": ms / floor_ms if ms and floor_ms else None,
                     "target": case.target(backend, times) if case.target and ms else None, "note": case.note}
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
        if any(r.get("x_floor") for r in self.records):
            columns.append("x floor")
        for r in self.records:
            key = (r["op"], r["shape"], r["dtype"], r["backend"])
            row = rows.setdefault(key, {
                "op": r["op"], "shape": r["shape"], "dtype": r["dtype"], "backend": r["backend"],
                "ms": r["ms"], "GB/s": r["gbps"], "rel_err": r["rel_err"], "peak MB": r["peak_mb"],
                "x clone": 1 / r["copy_fraction"] if r["copy_fraction"] else None, "x floor": r.get("x_floor"),
                "target": r["target"], "status": r["status"]})
            if r["baseline"] not in (None, "clone"):
                col = f"vs {r['baseline']}"
                row[col] = r["speedup"]
                columns += [col] if col not in columns else []
                if r.get("baseline_peak_mb"):
                    row[f"{r['baseline']} MB"] = r["baseline_peak_mb"]
        columns += ["rel_err", "peak MB"]
        columns += sorted({c for row in rows.values() for c in row if c.endswith(" MB") and c != "peak MB"})
        columns += ["target", "status"]
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
        """Time relative to torch.clone per shape, one panel per op (row) and dtype (column),
        one line per backend and baseline."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no plot")
            return
        series: dict[tuple[str, str], dict[str, dict[str, float]]] = {}  # (op, dtype) -> line -> shape -> x clone
        for r in self.records:
            lines = series.setdefault((r["op"], r["dtype"]), {})
            if r["copy_fraction"]:
                lines.setdefault(r["backend"], {})[r["shape"]] = 1 / r["copy_fraction"]
            if r["baseline"] not in (None, "clone") and r["baseline_ms"] and r["clone_ms"]:
                lines.setdefault(f"baseline {r['baseline']}", {})[r["shape"]] = r["baseline_ms"] / r["clone_ms"]
        series = {key: lines for key, lines in series.items() if lines}
        if not series:
            return
        ops, dtypes = list(dict.fromkeys(k[0] for k in series)), list(dict.fromkeys(k[1] for k in series))
        fig, axes = plt.subplots(len(ops), len(dtypes), figsize=(6 * len(dtypes), 4.5 * len(ops)), squeeze=False)
        for (op, dtype), lines in series.items():
            ax = axes[ops.index(op)][dtypes.index(dtype)]
            shapes = list(dict.fromkeys(s for line in lines.values() for s in line))
            for name, pts in lines.items():
                xs = [i for i, s in enumerate(shapes) if s in pts]
                style = "x--" if name.startswith("baseline") else "o-"
                ax.plot(xs, [pts[shapes[i]] for i in xs], style, label=name)
            ax.axhline(1.0, color="gray", lw=0.8)
            ax.set_xticks(range(len(shapes)), shapes, rotation=45, ha="right", fontsize=7)
            ax.set_yscale("log")
            ax.set_ylabel("time / torch.clone time")
            ax.set_title(f"{op} {dtype}")
            ax.legend(fontsize=7)
        for ax in axes.flat:
            if not ax.has_data():
                ax.set_visible(False)
        fig.suptitle(f"{self.info['device']}, {self.info['date']}", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print(f"wrote {path}")
