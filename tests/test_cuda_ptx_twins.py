"""The CPU twins of ptx.cuh against the PTX ISA's own description of each instruction.

Each test builds operands in numpy, hands them to the lanes of a tiny emulated kernel
following the fragment layout formulas of the PTX ISA (written out again here, in the
documentation's direction: register element -> matrix row/column), runs the twin, and
compares what comes back with plain numpy arithmetic.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from qcompile.backends.cuda import emulator

PROBES = r"""
#include "ptx.cuh"

__global__ void mma_probe(const uint32_t* a, const uint32_t* b, const int32_t* c, int32_t* d) {
  unsigned lane = threadIdx.x;
  uint32_t af[4], bf[2];
  int32_t acc[4];
  for (int i = 0; i < 4; ++i) af[i] = a[4 * lane + i], acc[i] = c[4 * lane + i];
  for (int i = 0; i < 2; ++i) bf[i] = b[2 * lane + i];
  mma_m16n8k32_s8(acc, af, bf);
  for (int i = 0; i < 4; ++i) d[4 * lane + i] = acc[i];
}

__global__ void ldmatrix_probe(const uint8_t* rows, const int32_t* row_of_thread, uint32_t* out) {
  QC_SHARED(uint8_t, tile, 64 * 16);
  for (unsigned i = threadIdx.x; i < 64 * 16; i += blockDim.x) tile[i] = rows[i];
  __syncthreads();
  uint32_t r[4];
  ldmatrix_x4(r, tile + 16 * row_of_thread[threadIdx.x]);
  for (int i = 0; i < 4; ++i) out[4 * threadIdx.x + i] = r[i];
}

__global__ void cp_async_probe(const uint8_t* src, const int32_t* src_bytes, uint8_t* early,
                               uint8_t* late) {
  QC_SHARED(uint8_t, buf, 64 * 16);
  unsigned t = threadIdx.x;
  cp_async_16(buf + 16 * t, src + 16 * t);
  cp_async_commit();
  cp_async_16_zfill(buf + 16 * (32 + t), src + 16 * (32 + t), src_bytes[t]);
  cp_async_commit();
  cp_async_wait<1>();
  __syncthreads();
  for (int i = 0; i < 32; ++i) early[32 * t + i] = buf[32 * t + i];
  __syncthreads();
  cp_async_wait<0>();
  __syncthreads();
  for (int i = 0; i < 32; ++i) late[32 * t + i] = buf[32 * t + i];
}

extern "C" int run_mma(const uint32_t* a, const uint32_t* b, const int32_t* c, int32_t* d) {
  return qc_launch(mma_probe, dim3(1), dim3(32), a, b, c, d);
}
extern "C" int run_ldmatrix(const uint8_t* rows, const int32_t* row_of_thread, uint32_t* out) {
  return qc_launch(ldmatrix_probe, dim3(1), dim3(64), rows, row_of_thread, out);
}
extern "C" int run_cp_async(const uint8_t* src, const int32_t* src_bytes, uint8_t* early,
                            uint8_t* late) {
  return qc_launch(cp_async_probe, dim3(1), dim3(32), src, src_bytes, early, late);
}
"""

LANES = np.arange(32)
GROUP, THREAD_IN_GROUP = LANES >> 2, LANES % 4


@pytest.fixture(scope="module")
def probes():
    lib = emulator.load(PROBES)
    for name in ("run_mma", "run_ldmatrix", "run_cp_async"):
        getattr(lib, name).restype = ctypes.c_int
    return lib


def aligned(values: np.ndarray) -> np.ndarray:
    """A copy of `values` whose data starts on a 64-byte boundary (cp.async wants 16)."""
    raw = np.zeros(values.nbytes + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64
    out = raw[start:start + values.nbytes].view(values.dtype).reshape(values.shape)
    out[...] = values
    return out


def ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


# ---- mma.m16n8k32.row.col.s32.s8.s8.s32 ------------------------------------------------

def a_fragments(a: np.ndarray) -> np.ndarray:
    """[32 lanes, 16 elements] of A (16x32): row groupID for a0..a3 and a8..a11, else
    groupID + 8; column threadID_in_group * 4 + (i & 3), plus 16 for i >= 8."""
    out = np.zeros((32, 16), dtype=np.int8)
    for i in range(16):
        row = GROUP + (0 if (i < 4 or 8 <= i < 12) else 8)
        col = THREAD_IN_GROUP * 4 + (i & 3) + (16 if i >= 8 else 0)
        out[:, i] = a[row, col]
    return out


def b_fragments(b: np.ndarray) -> np.ndarray:
    """[32, 8] of B (32x8): row threadID_in_group * 4 + (i & 3), plus 16 for i >= 4;
    column groupID."""
    out = np.zeros((32, 8), dtype=np.int8)
    for i in range(8):
        out[:, i] = b[THREAD_IN_GROUP * 4 + (i & 3) + (16 if i >= 4 else 0), GROUP]
    return out


def c_positions(i: int):
    """Row and column of accumulator c_i: groupID (+8 for c2, c3), threadID_in_group*2 + i%2."""
    return GROUP + (8 if i >= 2 else 0), THREAD_IN_GROUP * 2 + (i & 1)


def run_mma(probes, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    a_regs = aligned(a_fragments(a).view(np.uint32))
    b_regs = aligned(b_fragments(b).view(np.uint32))
    c_regs = aligned(np.stack([c[c_positions(i)] for i in range(4)], axis=1).astype(np.int32))
    d_regs = aligned(np.zeros((32, 4), dtype=np.int32))
    assert probes.run_mma(ptr(a_regs), ptr(b_regs), ptr(c_regs), ptr(d_regs)) == 0
    d = np.zeros((16, 8), dtype=np.int32)
    for i in range(4):
        d[c_positions(i)] = d_regs[:, i]
    return d


def expected_mma(a, b, c) -> np.ndarray:
    """A @ B + C in int32 arithmetic that wraps modulo 2^32 (mma without .satfinite)."""
    exact = a.astype(np.int64) @ b.astype(np.int64) + c.astype(np.int64)
    return ((exact + 2**31) % 2**32 - 2**31).astype(np.int32)


@pytest.mark.parametrize("case", ["random", "all -128", "mixed extremes", "wraps"])
def test_mma_twin_matches_the_documented_layout(probes, case):
    rng = np.random.default_rng(7)
    a = rng.integers(-128, 128, (16, 32)).astype(np.int8)
    b = rng.integers(-128, 128, (32, 8)).astype(np.int8)
    c = rng.integers(-2**20, 2**20, (16, 8)).astype(np.int32)
    if case == "all -128":
        a[:], b[:] = -128, -128
    elif case == "mixed extremes":
        a = rng.choice(np.array([-128, 127], np.int8), (16, 32))
        b = rng.choice(np.array([-128, -127, 127], np.int8), (32, 8))
    elif case == "wraps":
        a[:], b[:], c[:] = 127, 127, 2**31 - 1000
    np.testing.assert_array_equal(run_mma(probes, a, b, c), expected_mma(a, b, c))


def test_mma_twin_sees_every_element(probes):
    """A single non-zero element of A (or B) must reach exactly the outputs it should."""
    b = np.random.default_rng(11).integers(-128, 128, (32, 8)).astype(np.int8)
    for row, col in [(0, 0), (8, 3), (2, 20), (9, 17), (15, 31), (7, 12)]:
        a = np.zeros((16, 32), dtype=np.int8)
        a[row, col] = 3
        c = np.zeros((16, 8), dtype=np.int32)
        np.testing.assert_array_equal(run_mma(probes, a, b, c), expected_mma(a, b, c))


# ---- ldmatrix.sync.aligned.m8n8.x4.shared.b16 ------------------------------------------

def expected_ldmatrix(rows: np.ndarray, row_of_thread: np.ndarray) -> np.ndarray:
    """Lane 8i + j of a warp addresses row j of matrix i (8 x 8 b16 elements); lane l gets
    in register i the elements at row l // 4, columns 2 (l % 4) and 2 (l % 4) + 1."""
    halves = rows.view(np.uint16).reshape(64, 8)
    out = np.zeros((64, 4), dtype=np.uint32)
    for warp in range(2):
        addr = row_of_thread[32 * warp:32 * warp + 32]
        for i in range(4):
            matrix = halves[addr[8 * i:8 * i + 8]]
            lo = matrix[LANES // 4, 2 * (LANES % 4)].astype(np.uint32)
            hi = matrix[LANES // 4, 2 * (LANES % 4) + 1].astype(np.uint32)
            out[32 * warp + LANES, i] = lo | (hi << 16)
    return out


def test_ldmatrix_twin_matches_the_documented_layout(probes):
    rng = np.random.default_rng(3)
    rows = aligned(rng.integers(0, 256, (64, 16)).astype(np.uint8))
    row_of_thread = aligned(np.concatenate([rng.permutation(64)[:32] for _ in range(2)])
                            .astype(np.int32))
    out = aligned(np.zeros((64, 4), dtype=np.uint32))
    assert probes.run_ldmatrix(ptr(rows), ptr(row_of_thread), ptr(out)) == 0
    np.testing.assert_array_equal(out, expected_ldmatrix(rows, row_of_thread))


# ---- cp.async ---------------------------------------------------------------------------

def run_cp_async(probes):
    rng = np.random.default_rng(5)
    src = aligned(rng.integers(0, 256, 64 * 16).astype(np.uint8))
    src_bytes = aligned(np.where(np.arange(32) % 3 == 0, 0, 16).astype(np.int32))
    early, late = aligned(np.zeros(1024, np.uint8)), aligned(np.zeros(1024, np.uint8))
    assert probes.run_cp_async(ptr(src), ptr(src_bytes), ptr(early), ptr(late)) == 0
    return src, src_bytes, early, late


def test_cp_async_copies_and_zero_fills(probes):
    src, src_bytes, _, late = run_cp_async(probes)
    np.testing.assert_array_equal(late[:512], src[:512])
    chunks, want = late[512:].reshape(32, 16), src[512:].reshape(32, 16).copy()
    want[src_bytes == 0] = 0
    np.testing.assert_array_equal(chunks, want)


def test_cp_async_wait_retires_all_but_the_newest_groups(probes):
    """After wait_group 1 the first group is complete. The twin fills the destination of a
    copy in flight with 0xCD until its wait, so a kernel that reads it early reads garbage."""
    src, _, early, _ = run_cp_async(probes)
    np.testing.assert_array_equal(early[:512], src[:512])
    assert (early[512:] == 0xCD).all()
