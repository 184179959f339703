"""The cuda-int8 elementwise kernels, run by the CPU emulator, against the reference kernels
bit for bit: requantize, qadd, qclamp, quantize, dequantize.

Lengths that leave vector tails, data starting at every offset modulo 4 (scalar head, then
vectors), inputs whose offsets differ (scalar path only), grids small enough that threads
walk several strides; extreme zero points, multipliers, shifts, scales and NaN/inf. Then
NVRTC compiles elementwise.cuh for sm_80 and sm_90: no spills, vector loads in the SASS.
"""
from __future__ import annotations

import re

import pytest
import torch
from qcompile.backends.cuda import emulator_ops as ops
from qcompile.backends.cuda import toolchain

from qcompile.errors import BackendError
from qcompile.ops import reference as ref
from qcompile.quant_math import MAX_SHIFT, MIN_SCALE

INT32_MIN, INT32_MAX = -2**31, 2**31 - 1
SIZES = [1, 3, 5, 8, 257, 1030]
ALL_INT8 = torch.arange(-128, 128, dtype=torch.int8)


def at_offset(values: torch.Tensor, offset: int) -> torch.Tensor:
    """`values` copied into a fresh buffer starting `offset` elements past its aligned start."""
    buf = torch.empty(len(values) + offset, dtype=values.dtype)
    buf[offset:] = values
    return buf[offset:]


def random_int8(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-128, 128, (n,), dtype=torch.int8, generator=g)


def assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal dtype, shape and bits (float32 compared as int32, so -0.0 != 0.0)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if got.dtype == torch.float32:
        got, want = got.view(torch.int32), want.view(torch.int32)
    bad = (got != want).nonzero()
    assert bad.numel() == 0, f"{len(bad)} elements differ, first at {bad[:5].flatten().tolist()}"


# ---- requantize, qclamp ------------------------------------------------------------------

REQUANT = [  # in_zp, multiplier, shift, out_zp, qmin, qmax
    (5, 1518500250, 31, -3, -128, 127),
    (-128, INT32_MAX, 1, 127, -128, 127),
    (127, INT32_MAX, MAX_SHIFT, -128, -128, 127),
    (0, 2**30, 31, 0, -128, 127),               # (q - zp) / 2: every tie, both signs
    (3, 1, 1, 0, -128, 127),
    (-7, 0, 5, 9, 0, 6),
    (INT32_MIN, INT32_MAX, 31, INT32_MAX, -128, 127),
    (INT32_MAX, INT32_MAX, MAX_SHIFT, INT32_MIN, -128, -128),
    (1, 2**31 - 2, 40, 127, 127, 127),
]


@pytest.mark.parametrize("params", REQUANT)
def test_requantize_extremes_on_every_int8(params):
    q = ALL_INT8.repeat(3)
    assert_same(ops.requantize_emulated(q, *params), ref.requantize(q, *params))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_requantize_lengths_and_offsets(n, offset):
    q = at_offset(random_int8(n, seed=n + offset), offset)
    assert_same(ops.requantize_emulated(q, *REQUANT[0]), ref.requantize(q, *REQUANT[0]))


@pytest.mark.parametrize("bounds", [(-128, 127), (0, 127), (0, 6), (-128, -128), (127, 127)])
@pytest.mark.parametrize("offset", [0, 3])
def test_qclamp(bounds, offset):
    x = at_offset(torch.cat([ALL_INT8, random_int8(37, seed=offset)]), offset)
    assert_same(ops.qclamp_emulated(x, *bounds), ref.qclamp(x, *bounds))


def test_grid_stride_loops_and_oversized_grids():
    n = 4 * 256 * 3 + 7                         # one block walks the grid stride 4 times
    q = at_offset(random_int8(n, seed=1), 2).reshape(-1)
    want = ref.requantize(q, *REQUANT[0])
    for max_blocks in (1, 2, 64):
        assert_same(ops.requantize_emulated(q, *REQUANT[0], max_blocks=max_blocks), want)


def test_misaligned_output_takes_the_scalar_path():
    q = at_offset(random_int8(1030, seed=2), 1).reshape(10, 103)
    out = at_offset(torch.zeros(1030, dtype=torch.int8), 2).view(10, 103)
    got = ops.requantize_emulated(q, *REQUANT[0], out=out)
    assert got.data_ptr() == out.data_ptr()
    assert_same(got, ref.requantize(q, *REQUANT[0]))


def test_empty_and_multidimensional():
    empty = torch.empty(0, 3, dtype=torch.int8)
    assert ops.qclamp_emulated(empty, 0, 6).shape == (0, 3)
    x = random_int8(2 * 3 * 5, seed=3).reshape(2, 3, 5)
    assert_same(ops.qclamp_emulated(x, -3, 9), ref.qclamp(x, -3, 9))


# ---- qadd --------------------------------------------------------------------------------

QADD = [  # a_zp, a_multiplier, b_zp, b_multiplier, shift, out_zp, qmin, qmax
    (3, 1518500250, -9, 1073741824, 31, 2, -128, 127),
    (-128, INT32_MAX, 127, INT32_MAX, 1, 127, -128, 127),
    (127, INT32_MAX, -128, 1, MAX_SHIFT, -128, -128, 127),
    (0, 2**30, 0, 2**30, 31, 0, -128, 127),     # (a + b) / 2: every tie
    (INT32_MIN, INT32_MAX, INT32_MIN, INT32_MAX, 62, 0, -128, 127),  # int64 wraps
    (5, 0, -5, 12345, 7, -20, 0, 6),
]


@pytest.mark.parametrize("params", QADD)
def test_qadd_on_every_pair_of_int8(params):
    a = ALL_INT8.repeat_interleave(256)
    b = ALL_INT8.repeat(256)
    a_zp, a_m, b_zp, b_m, *rest = params
    assert_same(ops.qadd_emulated(a, a_zp, a_m, b, b_zp, b_m, *rest),
                ref.qadd(a, a_zp, a_m, b, b_zp, b_m, *rest))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("offsets", [(0, 0), (1, 1), (3, 3), (1, 2), (0, 3)])
def test_qadd_lengths_and_offsets(n, offsets):
    a = at_offset(random_int8(n, seed=n), offsets[0])
    b = at_offset(random_int8(n, seed=n + 1), offsets[1])
    a_zp, a_m, b_zp, b_m, *rest = QADD[0]
    assert_same(ops.qadd_emulated(a, a_zp, a_m, b, b_zp, b_m, *rest),
                ref.qadd(a, a_zp, a_m, b, b_zp, b_m, *rest))


def test_qadd_broadcasting_is_left_to_torch():
    a, b = random_int8(12, 0).reshape(3, 4), random_int8(4, 1)
    with pytest.raises(ops.KernelConstraintError, match="broadcasting") as info:
        ops.qadd_emulated(a, 0, 2**30, b, 0, 2**30, 31, 0, -128, 127)
    assert isinstance(info.value, BackendError)


# ---- quantize, dequantize ----------------------------------------------------------------

def quantize_inputs(scale: float, seed: int) -> torch.Tensor:
    """Random magnitudes, exact ties, the clamp edges and IEEE special values."""
    g = torch.Generator().manual_seed(seed)
    s = torch.tensor(scale, dtype=torch.float32)
    ties = (torch.arange(-140, 140, dtype=torch.float32) + 0.5) * s
    edges = torch.tensor([127.5, 126.5, -128.5, -127.5, 0.5, -0.5, 1e-3, -1e-3]) * s
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-45,
                            -1e-45, 1.17e-38, 3.4028235e38, -3.4028235e38])
    noise = torch.randn(301, generator=g) * torch.logspace(-6, 6, 301) * s
    return torch.cat([ties, edges, special, noise])


@pytest.mark.parametrize("scale", [0.5, 0.1, 1.0, MIN_SCALE, 1e-45, 1e-46, 3e38, 1e39])
@pytest.mark.parametrize("zp,qmin,qmax", [(0, -128, 127), (-128, -128, 127), (127, -128, 127),
                                          (3, 0, 6), (300, -128, 127), (INT32_MAX, -5, 5)])
def test_quantize_matches_reference(scale, zp, qmin, qmax):
    x = quantize_inputs(scale, seed=zp & 0xFFFF)
    assert_same(ops.quantize_emulated(x, scale, zp, qmin, qmax),
                ref.quantize(x, scale, zp, qmin, qmax))


@pytest.mark.parametrize("offset", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_quantize_offsets_and_input_dtypes(offset, dtype):
    x = at_offset(quantize_inputs(0.1, seed=offset).to(dtype), offset)
    assert_same(ops.quantize_emulated(x, 0.1, -3, -128, 127), ref.quantize(x, 0.1, -3, -128, 127))


@pytest.mark.parametrize("scale", [0.1, 1.0, MIN_SCALE, 1e-45, 3.4e38, 1e39])
@pytest.mark.parametrize("zp", [0, -128, 127, INT32_MIN, INT32_MAX])
def test_dequantize_matches_reference(scale, zp):
    q = ALL_INT8.repeat(2)
    assert_same(ops.dequantize_emulated(q, scale, zp), ref.dequantize(q, scale, zp))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_dequantize_lengths_and_offsets(n, offset):
    q = at_offset(random_int8(n, seed=n), offset)
    assert_same(ops.dequantize_emulated(q, 0.37, 11), ref.dequantize(q, 0.37, 11))


def test_out_of_range_arguments_are_typed_errors():
    q = random_int8(8, 0)
    with pytest.raises(ops.KernelConstraintError, match="shift"):
        ops.requantize_emulated(q, 0, 2**30, 0, 0, -128, 127)
    with pytest.raises(ops.KernelConstraintError, match="qmin"):
        ops.qclamp_emulated(q, 5, 4)
    with pytest.raises(ops.KernelConstraintError, match="scale"):
        ops.quantize_emulated(q.float(), float("inf"), 0, -128, 127)
    with pytest.raises(ops.KernelConstraintError, match="int32"):
        ops.dequantize_emulated(q, 1.0, 2**31)


# ---- NVRTC + SASS ------------------------------------------------------------------------

VECTOR_ACCESS = {  # the 4-element moves of the vector path, per kernel
    "qc_requantize": ("LDG.E", "STG.E"), "qc_qadd": ("LDG.E", "STG.E"),
    "qc_qclamp": ("LDG.E", "STG.E"), "qc_quantize": ("LDG.E.128", "STG.E"),
    "qc_dequantize": ("LDG.E", "STG.E.128"),
}
EXPECT = {"qc_quantize": ("FCHK", "FRND"), "qc_dequantize": ("FMUL",)}  # IEEE div, rint


def memory_opcodes(sass_text: str, function: str) -> set[str]:
    """Full opcodes (with modifiers) of the global loads and stores of one function."""
    found, current = set(), None
    for line in sass_text.splitlines():
        header = re.match(r"^\s*Function\s*:\s*(\S+)", line)
        if header:
            current = header.group(1)
        elif current == function:
            found.update(re.findall(r"\b((?:LDG|STG)(?:\.[A-Z0-9_]+)*)\s", line))
    return found


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvrtc_compiles_without_spills_and_with_vector_access(arch, tmp_path):
    if toolchain.problems():
        pytest.skip(f"CUDA pip packages missing: {toolchain.problems()}")
    from qcompile.backends.cuda import nvrtc, sass
    compiled = nvrtc.compile_kernel('#include "elementwise.cuh"\n', "qc_elementwise", arch,
                                    include_dirs=(str(ops.emulator.KERNEL_DIR),),
                                    cache_dir=tmp_path)
    text = sass.sass_text(compiled.cubin)
    for kernel, moves in VECTOR_ACCESS.items():
        problems = sass.check_kernel(compiled, expect=EXPECT.get(kernel, ()), function=kernel,
                                     sass=text)
        assert problems == [], f"{arch}: {problems}"
        assert compiled.resources[kernel]["stack_frame"] == 0
        missing = set(moves) - memory_opcodes(text, kernel)
        assert not missing, f"{arch} {kernel}: no {missing} in the SASS"


# ---- AddressSanitizer --------------------------------------------------------------------

BOUNDS_DRIVER = r'''#include "elementwise.cuh"
#include <memory>

/* Every kernel on exactly sized heap arrays starting a and b elements past an allocation:
 * a vector load or store past either end is an AddressSanitizer report. */
int main() {
  const int offsets[][2] = {{0, 0}, {1, 1}, {3, 3}, {1, 2}, {2, 0}};
  int rc = 0;
  for (int n : {3, 5, 1030})
    for (const auto& o : offsets) {
      std::unique_ptr<int8_t[]> x(new int8_t[n + o[0]]), z(new int8_t[n + o[0]]);
      std::unique_ptr<int8_t[]> y(new int8_t[n + o[1]]);
      std::unique_ptr<float[]> f(new float[n + o[0]]), g(new float[n + o[1]]);
      int8_t *xp = x.get() + o[0], *zp = z.get() + o[0], *yp = y.get() + o[1];
      float *fp = f.get() + o[0], *gp = g.get() + o[1];
      for (int i = 0; i < n; ++i) xp[i] = (int8_t)(i * 7), zp[i] = (int8_t)(i * 13), fp[i] = i;
      rc |= qc_requantize_launch(xp, yp, n, 3, 1 << 30, 31, 0, -128, 127, 2);
      rc |= qc_qadd_launch(xp, zp, yp, n, 1, 1 << 30, -1, 1 << 29, 31, 0, -128, 127, 2);
      rc |= qc_qclamp_launch(xp, yp, n, -5, 5, 2);
      rc |= qc_quantize_launch(fp, yp, n, 0.5f, 0, -128, 127, 2);
      rc |= qc_dequantize_launch(xp, gp, n, 0.5f, 0, 2);
    }
  return rc;
}
'''


def test_vector_paths_stay_inside_the_arrays_under_address_sanitizer():
    reason = ops.emulator.sanitizer_unavailable_reason("address")
    if reason is not None:
        pytest.skip(f"-fsanitize=address unusable on this machine: {reason}")
    exe = ops.emulator.build(BOUNDS_DRIVER, executable=True, sanitizer="address")
    done = ops.emulator.run_executable([str(exe)], "the address-sanitized elementwise kernels")
    assert done.returncode == 0, done.stderr[-3000:]
