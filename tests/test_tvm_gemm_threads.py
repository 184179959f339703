"""TVM int8 GEMM kernels on several threads, and every tuner tile candidate, stay bit-exact.

TVM's thread pool takes its size from TVM_NUM_THREADS when it is first used (and
`runtime.config_threadpool` can only lower it; by default it uses one thread per core), so the
threaded checks run in one child process started with TVM_NUM_THREADS=3 that configures 3
threads (more than this VM's 2 cores, and an odd split; TVM_BIND_THREADS=0: no pinning).
The row counts straddle each kernel's own thresholds (`parallel_min_rows`,
`pack_parallel_min_rows`), so the serial and the parallel loops both run. Extreme values are
covered by test_tvm_qlinear.py; the code paths they take do not depend on the thread count.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

pytest.importorskip("tvm")

from qcompile.backends.tvm import cpu_features  # noqa: E402
from qcompile.backends.tvm.gemm_layout import (DEFAULT_TILE, TILE_CANDIDATES,  # noqa: E402
                                               GemmSpec)
from qcompile.backends.tvm.gemm_tir import (kernel, pack_parallel_min_rows,  # noqa: E402
                                            parallel_min_rows)
from qcompile.backends.tvm.qlinear import build_qlinear, build_qlinear_f32  # noqa: E402
from qcompile.ops.float_out import qlinear_f32  # noqa: E402
from qcompile.ops.reference import qlinear  # noqa: E402

THREADS = 3
CHILD_TIMEOUT_S = 600
# (mode, N, K): ragged against every path's column block and k group
THREADED_CASES = [("int8", 100, 37), ("f32", 200, 1001)]
# the k loop's multiply-add in LLVM IR, per path (regular expressions)
MULTIPLY_ADD = {"avx512-vnni": r"@llvm\.x86\.avx512\.vpdpbusd\.512",
                "avx2": r"@llvm\.x86\.avx2\.pmadd\.wd", "generic": r"mul (nsw )?<16 x i32>"}


def _supported_paths() -> list:
    return cpu_features.detect().paths()


@pytest.fixture(params=cpu_features.PATHS)
def path(request):
    if request.param not in _supported_paths():
        pytest.skip(f"this CPU cannot run the {request.param} path "
                    f"(has: {', '.join(_supported_paths())})")
    return request.param


def _layer(n, k, seed):
    """Weights and per-channel constants of one random layer, and the generator for x."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    bias = torch.randint(-2**20, 2**20, (n,), dtype=torch.int32, generator=g)
    mult = torch.randint(2**30, 2**31, (n,), dtype=torch.int32, generator=g)
    shift = torch.randint(16, 41, (n,), dtype=torch.int32, generator=g)
    scale = torch.rand(n, generator=g) * 1e-3 + 1e-6
    return (w, bias, mult, shift, scale), g


def _row_counts(spec) -> list:
    """M values on both sides of the kernel's serial / parallel thresholds."""
    tiles, pack = parallel_min_rows(spec), pack_parallel_min_rows(spec)
    return sorted({m for m in (1, tiles - 1, tiles, tiles + 7, pack - 1, pack, pack + 5) if m})


def _same_bits(got, want) -> bool:
    as_int = torch.int8 if got.dtype == torch.int8 else torch.int32
    return got.dtype == want.dtype and torch.equal(got.view(as_int), want.view(as_int))


def _mismatches(path, mode, n, k, tile=None, rows=None) -> list:
    """The kernels (and M) where the result differs from the reference, as text."""
    (w, bias, mult, shift, scale), g = _layer(n, k, n * 31 + k)
    if mode == "int8":
        kern = build_qlinear(w, 9, bias, mult, shift, -7, -128, 127, path=path, tile=tile)
    else:
        kern = build_qlinear_f32(w, 3, bias.float(), scale, path=path, tile=tile)
    rows = rows or _row_counts(kern.spec)
    x = torch.randint(-128, 128, (max(rows), k), dtype=torch.int8, generator=g)
    want = qlinear(x, 9, w, bias, mult, shift, -7, -128, 127) if mode == "int8" else \
        qlinear_f32(x, 3, w, bias.float(), scale)
    return [f"{kern} M={m}" for m in rows if not _same_bits(kern(x[:m]), want[:m])]


def threaded_report(paths) -> dict:
    """Run in the child: the pool size it got, and the mismatches per path."""
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(1, THREADS)  # default: one per core
    report = {"threads": int(tvm.get_global_func("runtime.NumThreads")())}
    for p in paths:
        report[p] = [bad for case in THREADED_CASES for bad in _mismatches(p, *case)]
    return report


@pytest.fixture(scope="module")
def threaded():
    """The child's report, computed once for every path this CPU runs."""
    env = dict(os.environ, TVM_NUM_THREADS=str(THREADS), TVM_BIND_THREADS="0")
    proc = subprocess.run([sys.executable, __file__, *_supported_paths()], env=env, check=False,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_threaded_kernels_are_exact(path, threaded):
    assert threaded["threads"] == THREADS
    assert threaded[path] == []


def _llvm_ir(spec) -> str:
    import tvm

    func = kernel(spec).with_attr("global_symbol", "qgemm")
    exe = tvm.compile(tvm.IRModule({"qgemm": func}), target=cpu_features.llvm_target(spec.path))
    return exe.mod.inspect_source("ll")


def _basic_blocks(llvm_ir: str) -> list:
    return re.split(r"\n(?=[\w.]+:)", llvm_ir)


def test_accumulators_stay_in_registers(path):
    """TVM lowers the parallel loop body to its own LLVM function (__tvm_parallel_lambda*):
    it must not allocate from the workspace, and in every basic block with the SIMD
    multiply-add (the k loop, serial and parallel) the accumulators are SSA values: no store
    and no reload of an int32 vector."""
    spec = GemmSpec(path, 100, 37)
    assert parallel_min_rows(spec) > 1  # so the kernel has a serial and a parallel loop
    llvm_ir = _llvm_ir(spec)
    lambdas = [f for f in llvm_ir.split("\ndefine ") if "@__tvm_parallel_lambda" in f.split("(")[0]]
    assert lambdas, "no parallel closure generated"
    assert not any("TVMBackendAllocWorkspace" in f for f in lambdas)
    k_loops = [b for b in _basic_blocks(llvm_ir) if re.search(MULTIPLY_ADD[path], b)]
    assert len(k_loops) >= 2  # the serial and the parallel loop
    for block in k_loops:
        assert "store " not in block
        assert not re.search(r"load <\d+ x i32>", block)


def test_tile_candidates_start_with_the_default():
    assert set(TILE_CANDIDATES) == set(DEFAULT_TILE)
    for p, tiles in TILE_CANDIDATES.items():
        assert tiles[0] == DEFAULT_TILE[p]
        assert len(set(tiles)) == len(tiles)


@pytest.mark.parametrize("p,tile", [pytest.param(p, t, id=f"{p}-{t[0]}x{t[1]}")
                                    for p, ts in TILE_CANDIDATES.items() for t in ts])
def test_tile_candidate_builds_and_is_exact(p, tile):
    if p not in _supported_paths():
        pytest.skip(f"this CPU cannot run the {p} path")
    assert _mismatches(p, "int8", 100, 37, tile=tile, rows=[13, 1]) == []


if __name__ == "__main__":  # the child process of `threaded`
    print(json.dumps(threaded_report(sys.argv[1:])))
