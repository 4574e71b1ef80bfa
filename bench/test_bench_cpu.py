"""CPU microbenchmarks through pytest-benchmark: ``pytest bench/ --benchmark-only``.

Small sizes; each benchmarked result is also checked against the float64 reference.
GPU timings go through bench/harness.py instead.
"""
import functools

import pytest

pytest.importorskip("pytest_benchmark")

import torch  # noqa: E402

import fastspec  # noqa: E402
from fastspec import _timing  # noqa: E402

from bench_fwht import butterfly, check  # noqa: E402

from fastspec.reference.fwht import fwht_dense  # noqa: E402

SHAPES = [(64, 1024), (64, 12 * 64)]


def _fwht_candidates(n):
    scale = n**-0.5
    fns = {"torch": functools.partial(fastspec.fwht, scale=scale, backend="torch"),
           "matmul": functools.partial(fwht_dense, scale=scale)}
    if fastspec.backends()["cpu"].available:
        fns["cpu"] = functools.partial(fastspec.fwht, scale=scale, backend="cpu")
    if n & (n - 1) == 0:
        fns["butterfly"] = functools.partial(butterfly, scale=scale)
    return fns


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", ["torch", "cpu", "matmul", "butterfly"])
def test_fwht_cpu(benchmark, shape, impl):
    fns = _fwht_candidates(shape[-1])
    if impl not in fns:
        pytest.skip(f"{impl} needs n = 2^k" if impl == "butterfly" else f"{impl}: {fastspec.backends()[impl].reason}")
    benchmark.group = f"fwht {'x'.join(map(str, shape))} float32"
    x = torch.randn(shape)
    out = benchmark(fns[impl], x)
    assert check((x,), out) <= _timing.TOLERANCE[torch.float32]
