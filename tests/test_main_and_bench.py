"""The main job and the benchmark script run end to end (small sizes)."""
import json
import sys
from pathlib import Path

import pytest
import torch

import fastspec
from fastspec.__main__ import FAMILIES, family_op, main

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("op", sorted({family_op(f) for f in FAMILIES}))
def test_main_job_checks_and_benchmarks(tmp_path, capsys, op):
    """The main job, one op at a time (CI spreads them over its processes)."""
    report = tmp_path / "main.json"
    assert main(["--quick", "--op", op, "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "Self-check" in out and "Benchmark" in out and "FAIL" not in out
    data = json.loads(report.read_text())
    assert data["checks"] and all(c["status"] in ("PASS", "SKIP") for c in data["checks"])
    assert {c["backend"] for c in data["checks"]} >= {"torch"}
    assert all(r["ms"] > 0 or r["note"].startswith("skip:") for r in data["bench"])


def test_bench_fwht_writes_records(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_fwht

    assert bench_fwht.main(["--quick", "--sizes", "64", "12", "--out", str(tmp_path)]) == 0
    (result,) = tmp_path.glob("fwht-*.json")
    records = json.loads(result.read_text())
    required = {"op", "backend", "baseline", "shape", "dtype", "ms", "baseline_ms", "speedup",
                "device", "torch", "triton", "date"}
    assert records and all(required <= set(r) for r in records)
    assert list(tmp_path.glob("fwht-*.png"))
    sys.modules.pop("bench_fwht", None)


def test_profile_script_launches_and_checks(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    import profile_fwht

    backends = [b for b in ("torch", "triton") if fastspec.backends()[b].available]
    assert profile_fwht.main(["--rows", "4", "--sizes", "64", "2048", "--dtypes", "float32", "--backends", *backends]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * len(backends) and all(line.endswith(" ok") for line in lines)
    sys.modules.pop("profile_fwht", None)


def test_fftconv_profile_script_launches_and_checks(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    import profile_fftconv

    assert profile_fftconv.main(["--lengths", "100", "--batch", "2", "--channels", "3", "--backends", "torch",
                                 "--dtypes", "float32", "--backward"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].endswith(" ok")
    sys.modules.pop("profile_fftconv", None)


def test_bench_fftconv_writes_records(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_fftconv

    assert bench_fftconv.main(["--quick", "--batch", "2", "--channels", "4", "--out", str(tmp_path)]) == 0
    (result,) = tmp_path.glob("fftconv-*.json")
    records = json.loads(result.read_text())
    assert {r["op"] for r in records} == {"fft_conv", "fft_conv gated fwd+bwd"}
    assert all(r["status"] == "ok" and r["x_floor"] > 0 and "vs pytorch >= 1" in r["target"] for r in records)
    assert {r["baseline"] for r in records} >= {"pytorch", "clone"}
    assert all("baseline_peak_mb" in r and r["note"] is None for r in records)
    cuda = torch.device("cuda")  # the GPU shapes: B·H·L at most 2^28, and a note where scaled
    assert bench_fftconv.shape_for(4096, cuda, None, None) == (64, 768, 4096)
    assert bench_fftconv.shape_for(8192, cuda, None, None) == (42, 768, 8192)
    assert bench_fftconv.shape_for(2**20, cuda, None, None) == (1, 256, 2**20)
    assert bench_fftconv.scale_note((64, 768, 4096), cuda) is None
    assert "from 64 x 768 to 1 x 256" in bench_fftconv.scale_note((1, 256, 2**20), cuda)
    assert bench_fftconv.floor_bytes((2, 3, 4), torch.float16, True, True) == (4 + 7) * 24 * 2
    sys.modules.pop("bench_fftconv", None)


def test_bench_ssm_writes_records(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_ssm

    returned = bench_ssm.main(["--quick", "--out", str(tmp_path)])
    (result,) = tmp_path.glob("ssm-*.json")
    records = json.loads(result.read_text())
    assert returned == 0, [r for r in records if r["status"] != "ok"]
    assert {r["op"] for r in records} == {"selective_scan", "selective_scan fwd+bwd", "linear_scan", "ssm_kernel",
                                          "selective_state_update"}
    assert all(r["status"] == "ok" for r in records), [r for r in records if r["status"] != "ok"]
    assert {r["baseline"] for r in records} >= {"pytorch-loop", "pytorch-parallel", "materialised", "pytorch-step",
                                                "clone"}
    sys.modules.pop("bench_ssm", None)


def test_bench_gaunt_writes_records(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_gaunt

    assert bench_gaunt.main(["--quick", "--out", str(tmp_path)]) == 0
    (result,) = tmp_path.glob("gaunt-*.json")
    records = json.loads(result.read_text())
    assert {r["op"] for r in records} == {"gaunt_tensor_product", "gaunt_tensor_product fwd+bwd"}
    assert all(r["status"] == "ok" and r["x_floor"] > 0 and r["note"] == "auto chose method='grid'" for r in records)
    assert {r["baseline"] for r in records} >= {"dense", "clone"} | ({"e3nn"} if bench_gaunt._e3nn() else set())
    sys.modules.pop("bench_gaunt", None)


def test_bench_butterfly_writes_records(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_butterfly

    assert bench_butterfly.main(["--quick", "--batch", "8", "--sizes", "64", "--out", str(tmp_path)]) == 0
    (result,) = tmp_path.glob("butterfly-*.json")
    records = json.loads(result.read_text())
    assert {r["op"] for r in records} == {"butterfly", "butterfly fwd+bwd", "monarch", "monarch fwd+bwd"}
    assert all(r["status"] == "ok" for r in records), [r for r in records if r["status"] != "ok"]
    assert {r["baseline"] for r in records} >= {"dense", "pytorch-per-factor", "two-bmm", "clone"}
    sys.modules.pop("bench_butterfly", None)


@pytest.mark.parametrize("name,n", [("dft", 8), ("dft", 16), ("hadamard", 8), ("dct", 8),
                                    pytest.param("dct", 16, marks=pytest.mark.slow)])
def test_learn_transform_recovers_small_transforms(monkeypatch, name, n):
    """bench/learn_transform.py at N = 8 and 16: a butterfly (with the learned permutation for
    the DFT and the DCT) learns the transform to the paper's accuracy (RMSE < 1e-4) in one start;
    the DCT at 16 (slow) takes the best of the script's three starts of 800 steps (seed 0 sticks
    in a local minimum)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import learn_transform

    if (name, n) == ("dct", 16):
        assert learn_transform.best_of_starts(name, n, 800, restarts=3) < 1e-4
    else:
        assert learn_transform.learn(name, n, 300, seed=0) < 1e-4
    sys.modules.pop("learn_transform", None)
