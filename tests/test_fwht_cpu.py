"""The C++ CPU kernel (backend "cpu", csrc/fwht/fwht_cpu*): what the backend-parametrised tests
in test_fwht.py do not reach — thread counts, instruction sets, the half conversions bit for bit,
many rows and few long ones, the base-block (m) axis, and its op's own checks. CPU tensors
throughout, so that on a GPU machine too (where the others run on CUDA tensors)."""
import os

import pytest
import torch

import fastspec
from fastspec.hadamard import check_size, hadamard_block, sylvester
from fastspec.ops import fwht as ops
from fastspec.reference.fwht import fwht_reference

from conftest import AVAILABLE, assert_close_to_reference, random_input

CPU = fastspec.backends()["cpu"]
pytestmark = pytest.mark.skipif(not CPU.available, reason=f"cpu: {CPU.reason}")
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture
def threads():
    """torch.set_num_threads for one test (restored after)."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture
def isa():
    """fastspec._C.cpu_isa for one test (the best one restored after)."""
    import fastspec._C as ext

    yield ext.cpu_isa
    ext.cpu_isa("")


def test_built_where_ci_requires_it():
    """.ci/run installs with FASTSPEC_BUILD_CPU=1: there the backend must be available (a broken
    build fails the install, a missing kernel this test)."""
    if os.environ.get("FASTSPEC_BUILD_CPU") != "1":
        pytest.skip("FASTSPEC_BUILD_CPU is not 1")
    assert CPU.available, CPU.reason


# --------------------------------------------------------------------------- same bits


# (rows, n): many short rows; few long rows, fewer than threads (each step of a row is split
# between threads); a base block; rows shorter than a vector.
SPLITS = [(1000, 256), (33, 4096), (1, 2**20), (3, 2**16), (5, 12 * 2**12), (1, 28 * 2**15), (7, 4), (9, 12)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,n", SPLITS, ids=str)
def test_thread_counts_give_the_same_bits(threads, dtype, rows, n):
    x = random_input((rows, n), dtype, device="cpu")
    results = []
    for count in (1, 2, 4):
        threads(count)
        results.append(fastspec.fwht(x, 0.5, backend="cpu"))
    assert all(torch.equal(r, results[0]) for r in results[1:])
    assert_close_to_reference(results[0], fwht_reference(x, 0.5))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_instruction_sets_give_the_same_bits(isa, dtype):
    """Every instruction set this CPU runs (generic vectors, AVX2, AVX-512) computes each element
    with the same operations in the same order."""
    names = [name for name in ("generic", "avx2", "avx512f") if _can_use(isa, name)]
    for rows, n in SPLITS + [(17, 2**10), (3, 2**14)]:
        x = random_input((rows, n), dtype, device="cpu")
        results = {}
        for name in names:
            isa(name)
            results[name] = fastspec.fwht(x, 0.25, backend="cpu")
        for name in names[1:]:
            assert torch.equal(results[name], results["generic"]), (name, rows, n)


def _can_use(isa, name):
    try:
        isa(name)
    except ValueError:
        return False
    return True


def test_isa_names(isa):
    assert isa() in ("generic", "avx2", "avx512f")
    assert isa("generic") == "generic"
    with pytest.raises(ValueError, match="'sse9' is not available.*'generic', 'avx2', 'avx512f'"):
        isa("sse9")
    assert isa() == "generic"  # a bad name changes nothing
    assert "generic" in fastspec.backends()["cpu"].reason


# --------------------------------------------------------------------------- conversions


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [1, 64], ids=["one lane", "vectors"])
def test_half_conversions_bit_for_bit(dtype, n):
    """Every 16-bit pattern (normals, subnormals, ±0, ±inf, NaN) through the kernel: row r of
    the input is v_r at position 0 and zeros elsewhere, so every output is v_r·scale (column 0
    of H_n is all ones), computed in float32 and rounded once; torch rounds the same product to
    nearest even. (A zero comes out +0 where n > 1: -0 + 0 = +0, as in the plain product.)"""
    values = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    x = torch.zeros(values.numel(), n, dtype=dtype)
    x[:, 0] = values
    for scale in (1.0, 0.75, 2.0**-7, 3.0e3):
        out = fastspec.fwht(x, scale, backend="cpu")
        expect = (values.float() * scale).to(dtype)[:, None].expand(-1, n)
        nan, zero = expect.isnan(), expect == 0
        assert torch.equal(out.isnan(), nan) and bool((out[zero] == 0).all())
        same = ~nan & ~zero
        assert torch.equal(out[same].view(torch.int16), expect[same].view(torch.int16)), scale


# --------------------------------------------------------------------------- sizes, blocks


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,n", [(2000, 64), (257, 1024), (2, 2**20), (1, 2**20)], ids=str)
def test_many_rows_and_long_rows(threads, dtype, rows, n):
    threads(2)
    x = random_input((rows, n), dtype, device="cpu")
    assert_close_to_reference(fastspec.fwht(x, n**-0.5, backend="cpu"), fwht_reference(x, n**-0.5))


@pytest.mark.parametrize("m", [12, 20, 28])
@pytest.mark.parametrize("k", [0, 1, 3, 5, 9, 12, 15])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_base_block_axis(m, k, dtype):
    """n = m·2^k: the mix over the m sub-rows, before rows shorter than a vector, within a
    block, and beyond a block (outer passes)."""
    if m * 2**k > 2**20:
        pytest.skip("n > 2^20")
    x = random_input((3, m * 2**k), dtype, device="cpu")
    assert_close_to_reference(fastspec.fwht(x, 0.5, backend="cpu"), fwht_reference(x, 0.5))


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("k", [0, 4, 13])
def test_registered_blocks(transpose, k):
    """A 40×40 named block and the rows-rotated (non-symmetric) H_12, transposed or not."""
    h40 = hadamard_block(40)
    ops.register_block("test.cpu-h40", h40)
    h12 = hadamard_block(12)[torch.roll(torch.arange(12), 1)]
    ops.register_block("test.rows-rotated-12", h12)
    for name, h in (("test.cpu-h40", h40), ("test.rows-rotated-12", h12)):
        x = random_input((3, h.shape[0] * 2**k), torch.float32, device="cpu")
        out = ops.fwht_op(x, 0.5, transpose, name, "cpu")
        assert_close_to_reference(out, fwht_reference(x, 0.5, transpose=transpose, block=h))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_largest_block_sums_round_once(dtype):
    """m = 1024 (Sylvester's H_1024 as a named block): the mix sums 1024 terms in float64 and
    rounds once, so float32 stays within the tolerance rule."""
    ops.register_block("test.cpu-h1024", sylvester(1024))
    x = random_input((3, 1024 * 4), dtype, device="cpu")
    out = ops.fwht_op(x, 0.5, False, "test.cpu-h1024", "cpu")
    assert_close_to_reference(out, fwht_reference(x, 0.5, block=sylvester(1024)))


def test_block_order_limit(monkeypatch):
    monkeypatch.setattr(ops, "CPU_MAX_BLOCK", 8)
    with pytest.raises(ValueError, match="cpu backend takes base blocks of order up to 8, got order 12"):
        fastspec.fwht(torch.ones(2, 12 * 4), backend="cpu")
    assert ops._auto_choice(torch.device("cpu"), torch.float32, 12 * 4, 12) == "torch"


@pytest.mark.skipif("cpu" not in AVAILABLE, reason="fastspec._C has no CPU kernels here")
@pytest.mark.parametrize("n,expect", [(4096, "cpu"), (12 * 64, "cpu"), (36 * 64, "cpu"), (76 * 64, "torch"), (172 * 64, "torch"),
                                      (108 * 256, "torch")])
def test_auto_by_block_order(n, expect):
    """auto on CPU tensors: the C++ kernel up to m = 40, torch's matmul for larger blocks (AUTO_CPU)."""
    m, _ = check_size(n)
    assert ops.choose_backend("auto", torch.device("cpu"), torch.float32, n, m) == expect


# --------------------------------------------------------------------------- the op itself


@pytest.mark.parametrize("dtype,n,m", [(torch.float32, 64, 1), (torch.bfloat16, 12 * 8, 12), (torch.float64, 20, 20)],
                         ids=str)
def test_opcheck_kernel_op(dtype, n, m):
    x = random_input((3, n), dtype, device="cpu")
    block = hadamard_block(m).contiguous() if m > 1 else None
    torch.library.opcheck(torch.ops.fastspec.fwht_cpu.default, (x, 0.5, block))


def test_kernel_op_rejects_what_it_cannot_do():
    op = torch.ops.fastspec.fwht_cpu
    h12 = hadamard_block(12).contiguous()
    with pytest.raises(RuntimeError, match="x must be float32, float64, float16 or bfloat16, got Int"):
        op(torch.ones(2, 16, dtype=torch.int32), 1.0, None)
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        op(torch.ones(16, 2).T, 1.0, None)
    with pytest.raises(RuntimeError, match="0-dim"):
        op(torch.tensor(1.0), 1.0, None)
    with pytest.raises(RuntimeError, match="last dim must be m·2\\^k <= 1048576 with m = 1, got 24"):
        op(torch.ones(2, 24), 1.0, None)
    with pytest.raises(RuntimeError, match="with m = 12, got 40"):
        op(torch.ones(2, 40), 1.0, h12)
    with pytest.raises(RuntimeError, match="block must be a contiguous float64 CPU matrix of shape \\(m, m\\)"):
        op(torch.ones(2, 48), 1.0, h12.float())
    with pytest.raises(RuntimeError, match="block must be .* got Double cpu of shape \\[12, 6\\]"):
        op(torch.ones(2, 48), 1.0, h12[:, :6].contiguous())
    with pytest.raises(RuntimeError, match="every entry of block must be \\+1 or -1"):
        op(torch.ones(2, 48), 1.0, h12 * 2)
