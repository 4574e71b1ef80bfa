"""CPU emulation of the data movement of the CUDA FWHT kernel (csrc/fwht/fwht.cu).

No GPU is needed: this replays, with numpy, what every thread of every block does —
which elements it loads (layout 1), the butterflies over vector, lane and chunk bits,
the pieces of the shared-memory transpose, the butterflies after it (layout 2) and the
store — and checks the result against x @ H_n, plus the properties the kernel relies on:
every element read once and written once, loads/stores of a warp on consecutive 16-byte
vectors, shared-memory units of a warp consecutive (no bank conflicts), every slot of an
exchange piece written once before it is read.

The work split comes from fwht_detail::fwht_config in csrc/fwht/fwht.h (compiled with the
host C++ compiler when it and the CUDA headers are there; a Python mirror otherwise, and
the two are compared). The per-thread steps below mirror fwht_kernel: keep them in sync.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = os.path.join(ROOT, "csrc", "fwht", "fwht.h")
LOG2_SMEM_FLOATS = 13
FIELDS = ("lv", "lw", "lc", "lwi", "la", "lu", "lh")


def config_py(log2n: int, lv: int) -> dict:
    """Python mirror of fwht_detail::fwht_config."""
    c = dict.fromkeys(FIELDS, 0)
    c["lv"] = lv
    r = log2n - lv - 5
    lc_min = 5 - lv
    if r <= 0:
        c["lc"], c["lwi"] = 2, 2
    elif r <= lc_min:
        c["lc"], c["lwi"] = r, 2
    else:
        c["lc"] = max(lc_min, (r + 1) // 2)
        c["lw"] = r - c["lc"]
    if c["lw"] > 0:
        c["la"] = min(lv, 2)
        c["lu"] = lv - c["la"]
        c["lh"] = c["lc"] - c["lw"]
        while c["la"] + c["lu"] + 5 + 2 * c["lw"] + c["lh"] > LOG2_SMEM_FLOATS:
            if c["lh"] > 0:
                c["lh"] -= 1
            elif c["lu"] > 0:
                c["lu"] -= 1
            else:
                c["la"] -= 1
    return c


def _cuda_include():
    for d in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if d and os.path.exists(os.path.join(d, "include", "cuda_runtime.h")):
            return os.path.join(d, "include")
    return None


_CPP = r"""
#include <cstdio>
#include "fwht.h"
int main() {
  for (int lv = 2; lv <= 3; ++lv)
    for (int l = 0; l <= fastspec::kFwhtMaxLog2N; ++l) {
      const auto c = fastspec::fwht_detail::fwht_config(l, lv);
      std::printf("%d %d %d %d %d %d %d %d %d\n", lv, l, c.lv, c.lw, c.lc, c.lwi, c.la, c.lu, c.lh);
    }
}
"""


def config_table_cpp():
    """{(lv, log2n): config} from the real header, or None when it cannot be compiled here."""
    cxx = shutil.which("g++") or shutil.which("c++")
    inc = _cuda_include()
    if cxx is None or inc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "cfg.cpp"), os.path.join(tmp, "cfg")
        with open(src, "w") as f:
            f.write(_CPP)
        subprocess.run([cxx, "-std=c++17", "-I", os.path.dirname(HEADER), "-I", inc, src, "-o", exe],
                       check=True, capture_output=True)
        lines = subprocess.run([exe], check=True, capture_output=True, text=True).stdout.split("\n")
    table = {}
    for line in filter(None, lines):
        lv, log2n, *vals = map(int, line.split())
        table[(lv, log2n)] = dict(zip(FIELDS, vals))
    return table


@pytest.fixture(scope="module")
def cpp_table():
    return config_table_cpp()


def hadamard(n: int) -> np.ndarray:
    """H[i, j] = (-1)^popcount(i & j) (scipy.linalg.hadamard)."""
    i = np.arange(n)
    bits = np.bitwise_and.outer(i, i)
    parity = np.zeros_like(bits)
    while bits.any():
        parity ^= bits & 1
        bits >>= 1
    return 1.0 - 2.0 * parity


def reference(x: np.ndarray) -> np.ndarray:
    """x @ H_n along the last dim; H_n = H_a (x) H_b (Sylvester order) keeps matrices small."""
    rows, n = x.shape
    a = 1 << ((n.bit_length() - 1) // 2)
    b = n // a
    y = x.reshape(rows, a, b) @ hadamard(b)  # contract the low index bits
    return (y.transpose(0, 2, 1) @ hadamard(a)).transpose(0, 2, 1).reshape(rows, n)  # then the high


def test_reference_is_hadamard():
    x = np.random.default_rng(0).standard_normal((3, 64))
    np.testing.assert_allclose(reference(x), x @ hadamard(64), rtol=1e-12, atol=1e-12)
    assert (hadamard(4) == [[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]).all()


def emulate(x: np.ndarray, log2n: int, cfg: dict, scale: float) -> np.ndarray:
    """Run fwht_kernel's data movement on the flat array x (float64), return out."""
    lv, lw, lc, lwi, la, lu, lh = (cfg[k] for k in FIELDS)
    vec, nc = 1 << lv, 1 << lc
    total = x.size
    log_tile = lv + 5 + lw + lc + lwi
    num_tiles = -(-total // (1 << log_tile))
    threads = 32 << (lw + lwi)
    assert threads <= 512
    vec_bits = min(log2n, lv)
    lane_bits = min(max(log2n - lv, 0), 5)
    chunk_bits1 = max(log2n - lv - 5 - lw, 0)
    if lw == 0:
        assert log2n <= lv + 5 + lc
    else:
        assert lwi == 0 and log2n == log_tile and lw <= lc
        assert la + lu + 5 + 2 * lw + lh <= LOG2_SMEM_FLOATS and 0 <= la <= 2 and la + lu <= lv

    tid = np.arange(threads)
    lane, warp = tid & 31, tid >> 5
    w_row, w_ind = warp & ((1 << lw) - 1), warp >> lw
    off1 = (lane << lv) | (w_row << (lv + 5)) | (w_ind << (lv + 5 + lw + lc))

    out = np.full(total, np.nan)
    reads = np.zeros(total, dtype=np.int64)
    writes = np.zeros(total, dtype=np.int64)

    def check_warp_vectors(e):  # one load/store instruction: lanes on consecutive vectors
        e = e.reshape(-1, 32)
        assert (e == e[:, :1] + vec * np.arange(32)).all()

    for tile in range(num_tiles):
        base = tile << log_tile
        v = np.zeros((threads, nc, vec))
        for c in range(nc):  # load, layout 1
            e = base + off1 + (c << (lv + 5 + lw))
            check_warp_vectors(e)
            for i in range(vec):
                idx = e + i
                ok = idx < total
                v[ok, c, i] = x[idx[ok]]
                np.add.at(reads, idx[ok], 1)
        for b in range(vec_bits):  # vector bits: registers
            for i in range(vec):
                if not i & (1 << b):
                    a, bb = v[:, :, i].copy(), v[:, :, i | (1 << b)].copy()
                    v[:, :, i], v[:, :, i | (1 << b)] = a + bb, a - bb
        for b in range(lane_bits):  # lane bits: __shfl_xor_sync
            m = 1 << b
            other = v[(warp << 5) | (lane ^ m)]
            upper = ((lane & m) != 0)[:, None, None]
            v = np.where(upper, other - v, v + other)
        for j in range(chunk_bits1):  # chunk bits above the warp bits: registers
            for c in range(nc):
                if not c & (1 << j):
                    a, bb = v[:, c].copy(), v[:, c | (1 << j)].copy()
                    v[:, c], v[:, c | (1 << j)] = a + bb, a - bb
        off_store = off1
        if lw > 0:  # the exchange, in pieces
            kw, kh = 1 << lw, 1 << lh
            for hp in range(1 << (lc - lw - lh)):
                for ug in range(1 << (lv - la - lu)):
                    smem = np.full(1 << (la + lu + 5 + 2 * lw + lh), np.nan)
                    count = np.zeros(smem.size, dtype=np.int64)
                    for ul in range(1 << lu):
                        for hl in range(kh):
                            for lo in range(kw):
                                c = lo | ((hl | (hp << lh)) << lw)
                                u = (ug << lu) | ul
                                s = lane + 32 * (w_row + kw * (lo + kw * (hl + kh * ul)))
                                check = s.reshape(-1, 32)
                                assert (check == check[:, :1] + np.arange(32)).all()  # no bank conflicts
                                for a in range(1 << la):
                                    smem[(s << la) + a] = v[:, c, (u << la) + a]
                                    count[(s << la) + a] += 1
                    assert (count == 1).all(), "each slot of a piece written exactly once"
                    # __syncthreads()
                    for ul in range(1 << lu):
                        for hl in range(kh):
                            for lo in range(kw):
                                c = lo | ((hl | (hp << lh)) << lw)
                                u = (ug << lu) | ul
                                s = lane + 32 * (lo + kw * (w_row + kw * (hl + kh * ul)))
                                check = s.reshape(-1, 32)
                                assert (check == check[:, :1] + np.arange(32)).all()
                                for a in range(1 << la):
                                    v[:, c, (u << la) + a] = smem[(s << la) + a]
                    # __syncthreads()
            for j in range(lw):  # layout 2: former warp bits are chunk bits 0..lw-1
                for c in range(nc):
                    if not c & (1 << j):
                        a, bb = v[:, c].copy(), v[:, c | (1 << j)].copy()
                        v[:, c], v[:, c | (1 << j)] = a + bb, a - bb
            off_store = (lane << lv) | (w_row << (lv + 5 + lw))
        for c in range(nc):  # scale and store
            if lw > 0:
                lo, hi = c & ((1 << lw) - 1), c >> lw
                chunk_off = (lo << (lv + 5)) | (hi << (lv + 5 + 2 * lw))
            else:
                chunk_off = c << (lv + 5)
            e = base + off_store + chunk_off
            check_warp_vectors(e)
            for i in range(vec):
                idx = e + i
                ok = idx < total
                out[idx[ok]] = v[ok, c, i] * scale
                np.add.at(writes, idx[ok], 1)
    assert (reads == 1).all(), "every element read exactly once"
    assert (writes == 1).all(), "every element written exactly once"
    return out


def test_config_header_matches_mirror(cpp_table):
    if cpp_table is None:
        pytest.skip("no host C++ compiler or CUDA headers to compile csrc/fwht/fwht.h")
    for lv in (2, 3):
        for log2n in range(16):
            assert cpp_table[(lv, log2n)] == config_py(log2n, lv), (lv, log2n)


def _rows_for(log2n: int, cfg: dict) -> list[int]:
    tile_rows = max(1, (1 << (cfg["lv"] + 5 + cfg["lw"] + cfg["lc"] + cfg["lwi"])) >> log2n)
    # a partial tile, a full tile plus a bit, and (small n) a tail inside one vector
    rows = {1, 3, tile_rows + 1}
    if log2n <= 9:
        rows.add(2 * tile_rows + 5)
    return sorted(rows)


@pytest.mark.parametrize("lv", [2, 3], ids=["float32", "half"])
@pytest.mark.parametrize("log2n", range(16))
def test_mapping_computes_hadamard(lv, log2n, cpp_table):
    cfg = cpp_table[(lv, log2n)] if cpp_table is not None else config_py(log2n, lv)
    n = 1 << log2n
    rng = np.random.default_rng(1000 * lv + log2n)
    for rows in _rows_for(log2n, cfg):
        x = rng.standard_normal((rows, n))
        out = emulate(x.reshape(-1), log2n, cfg, scale=0.75).reshape(rows, n)
        np.testing.assert_allclose(out, reference(x) * 0.75, rtol=1e-12, atol=1e-10 * np.sqrt(n))
