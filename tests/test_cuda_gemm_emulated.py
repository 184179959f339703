"""The cuda-int8 GEMM kernel, run by the CPU emulator, against reference.qlinear bit for bit.

Shapes that are not multiples of the tile, extreme operands, zero points, multipliers,
shifts, biases and clamp bounds, both tile instantiations; one small case each under
ThreadSanitizer and AddressSanitizer (as separate processes).
"""
from __future__ import annotations

import pytest
import torch

from qcompile.backends.cuda import emulator
from qcompile.errors import BackendError
from qcompile.ops.reference import qlinear
from qcompile.quant_math import MAX_SHIFT

TILES = ["64x64", "128x128"]
INT32_MAX = 2**31 - 1


def random_problem(m: int, n: int, k: int, seed: int = 0, *, with_bias: bool = True) -> dict:
    """qlinear arguments with random int8 data and typical requantize parameters."""
    g = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g),
        x_zp=int(torch.randint(-128, 128, (), generator=g)),
        w=torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g),
        bias=torch.randint(-2**20, 2**20, (n,), dtype=torch.int32, generator=g)
        if with_bias else None,
        multiplier=torch.randint(2**30, 2**31, (n,), dtype=torch.int32, generator=g),
        shift=torch.randint(12, 24, (n,), dtype=torch.int32, generator=g),
        out_zp=int(torch.randint(-20, 20, (), generator=g)), qmin=-128, qmax=127)


def assert_matches_reference(problem: dict, tile: str) -> None:
    got = emulator.gemm_int8_emulated(**problem, tile=tile)
    want = qlinear(**problem)
    assert got.dtype == torch.int8 and got.shape == want.shape
    mismatch = (got != want).nonzero()
    assert mismatch.numel() == 0, f"{len(mismatch)} elements differ, first at {mismatch[:5]}"


@pytest.mark.parametrize("tile,m,n,k", [
    ("64x64", 1, 8, 16), ("64x64", 37, 45, 80), ("64x64", 70, 130, 144),
    ("128x128", 130, 70, 96), ("128x128", 5, 129, 48),
])
def test_random_shapes_match_reference(tile, m, n, k):
    assert_matches_reference(random_problem(m, n, k, seed=m * n + k), tile)


@pytest.mark.parametrize("tile", TILES)
def test_leading_dims_and_no_bias(tile):
    problem = random_problem(6, 24, 32, seed=1, with_bias=False)
    problem["x"] = problem["x"].reshape(2, 3, 32)
    assert_matches_reference(problem, tile)


def extreme_channels(n: int, k: int) -> dict:
    """Per-channel parameters at the ends of their ranges: multipliers 2^31-1, 2^30, 1 and
    0; shifts 1, 31 and MAX_SHIFT; biases as large as int32 allows for this K."""
    headroom = k * 255 * 128
    multipliers = [INT32_MAX, 2**30, 1, 0, INT32_MAX, 12345, 2**31 - 2, 3]
    shifts = [1, MAX_SHIFT, 1, 7, 31, 1, MAX_SHIFT - 20, 2]
    biases = [INT32_MAX - headroom, -INT32_MAX - 1 + headroom, 0, -1, 1, 2**24, -2**24, 17]
    reps = -(-n // len(multipliers))
    as_tensor = lambda values: torch.tensor((values * reps)[:n], dtype=torch.int32)  # noqa: E731
    return dict(multiplier=as_tensor(multipliers), shift=as_tensor(shifts), bias=as_tensor(biases))


def extreme_operands(kind: str, m: int, n: int, k: int):
    """(x, x_zp, w) at the ends of the int8 range."""
    g = torch.Generator().manual_seed(len(kind))
    full = lambda shape, v: torch.full(shape, v, dtype=torch.int8)  # noqa: E731
    if kind == "x -128, zp 127, w -128":
        return full((m, k), -128), 127, full((n, k), -128)
    if kind == "x 127, zp -128, w 127":
        return full((m, k), 127), -128, full((n, k), 127)
    if kind == "x 127, zp -128, w -127":
        return full((m, k), 127), -128, full((n, k), -127)
    pick = lambda values, shape: torch.tensor(values, dtype=torch.int8)[  # noqa: E731
        torch.randint(len(values), shape, generator=g)]
    return pick([-128, 127], (m, k)), 0, pick([-128, -127, 127], (n, k))


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("bounds", [(-128, 127), (0, 127), (0, 6), (-128, -128), (127, 127)])
@pytest.mark.parametrize("operands", ["x -128, zp 127, w -128", "x 127, zp -128, w 127",
                                      "x 127, zp -128, w -127", "mixed"])
def test_extremes_match_reference(tile, bounds, operands):
    m, n, k = 19, 24, 64
    x, x_zp, w = extreme_operands(operands, m, n, k)
    problem = dict(x=x, x_zp=x_zp, w=w, out_zp=0, qmin=bounds[0], qmax=bounds[1],
                   **extreme_channels(n, k))
    assert_matches_reference(problem, tile)


@pytest.mark.parametrize("out_zp", [-128, 127])
def test_output_zero_point_extremes(out_zp):
    problem = random_problem(17, 40, 112, seed=out_zp)
    problem["out_zp"] = out_zp
    assert_matches_reference(problem, "64x64")


def test_kernel_restrictions_are_typed_errors():
    problem = random_problem(4, 8, 24)
    with pytest.raises(emulator.KernelConstraintError, match="K % 16"):
        emulator.gemm_int8_emulated(**problem)
    problem = random_problem(4, 8, 32)
    with pytest.raises(emulator.KernelConstraintError, match="tile"):
        emulator.gemm_int8_emulated(**problem, tile="32x32")
    problem["shift"][0] = 0
    with pytest.raises(BackendError, match="shifts"):
        emulator.gemm_int8_emulated(**problem)


def test_build_failures_are_typed_and_carry_the_log(monkeypatch):
    with pytest.raises(emulator.KernelBuildError) as info:
        emulator.build('#include "emulate.h"\nint broken( {\n')
    assert isinstance(info.value, BackendError) and "error" in info.value.log
    monkeypatch.setenv("QC_EMULATOR_CXX", "no-such-compiler-qc")
    with pytest.raises(emulator.CompilerNotFoundError):
        emulator.build("int main() { return 0; }\n", executable=True)


def require_sanitizer(name: str) -> None:
    reason = emulator.sanitizer_unavailable_reason(name)
    if reason is not None:
        pytest.skip(f"-fsanitize={name} unusable on this machine: {reason}")


@pytest.mark.parametrize("sanitizer", ["thread", "address"])
def test_small_gemm_is_clean_under_sanitizer(sanitizer):
    require_sanitizer(sanitizer)
    problem = random_problem(20, 24, 160, seed=9)
    got = emulator.gemm_int8_sanitized(sanitizer, **problem, tile="64x64")
    assert torch.equal(got, qlinear(**problem))


def test_thread_sanitizer_sees_races_in_emulated_kernels():
    """A kernel that reads shared memory without __syncthreads is a reported race."""
    require_sanitizer("thread")
    racy = ('#include "emulate.h"\n'
            "__global__ void racy(int* out) { QC_SHARED(int, v, 1);\n"
            "  if (threadIdx.x == 0) v[0] = 1;\n  out[threadIdx.x] = v[0]; }\n"
            "int main() { int out[2]; return qc_launch(racy, dim3(1), dim3(2), out); }\n")
    exe = emulator.build(racy, executable=True, sanitizer="thread")
    done = emulator.run_executable([str(exe)], "racy kernel")
    assert done.returncode != 0 and "data race" in done.stderr


def test_gemm_source_compiles_with_nvrtc(tmp_path):
    """The file the emulator runs is the file the GPU runs: NVRTC accepts it for compute_80."""
    from qcompile.backends.cuda import toolchain
    if toolchain.problems():
        pytest.skip(f"CUDA pip packages missing: {toolchain.problems()}")
    from qcompile.backends.cuda import nvrtc
    ptx = nvrtc.compile_ptx(emulator.GEMM_SOURCE, "gemm", include_dirs=(str(emulator.KERNEL_DIR),),
                            cache_dir=str(tmp_path)).ptx
    for needle in ("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32", "ldmatrix.sync",
                   "cp.async.cg.shared.global", ".entry qc_gemm_int8_64x64",
                   ".entry qc_gemm_int8_128x128"):
        assert needle in ptx
    assert ".local" not in ptx, "accumulators spilled to local memory"
