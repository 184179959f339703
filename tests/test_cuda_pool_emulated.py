"""The cuda-int8 pooling and mean kernels, run by the CPU emulator, against the reference
kernels bit for bit: qmax_pool2d, qavg_pool2d, qmean.

Kernel, stride, padding, dilation and ceil_mode combinations (windows clipped by padding
and by ceil_mode), inputs at the ends of int8, extreme zero points, multipliers and shifts
(the shift rounds the average: ties go up), grids small enough that threads walk several
strides. Then NVRTC compiles pool.cuh for sm_80 and sm_90 without spills.
"""
from __future__ import annotations

import pytest
import torch
from qcompile.backends.cuda import emulator_ops as ops
from qcompile.backends.cuda import toolchain

from qcompile.errors import BackendError
from qcompile.ops import reference as ref
from qcompile.quant_math import MAX_SHIFT

INT32_MIN, INT32_MAX = -2**31, 2**31 - 1

WINDOWS = [  # kernel, stride, padding, dilation, ceil_mode
    ([2, 2], [], [0, 0], [1, 1], False),
    ([3, 3], [2, 2], [1, 1], [1, 1], False),
    ([3, 3], [2, 2], [1, 1], [1, 1], True),
    ([3, 2], [2, 1], [1, 0], [2, 1], True),
    ([1], [1], [0], [1], False),
    ([5, 5], [3, 3], [2, 2], [1, 1], True),
    ([2, 3], [3, 2], [1, 1], [3, 2], True),
    ([7, 7], [1, 1], [3, 3], [1, 1], False),
]

REQUANT = [  # x_zp, multiplier, shift, out_zp, qmin, qmax
    (5, 2**30, 32, -3, -128, 127),              # acc / 4: every tie
    (-128, INT32_MAX, 1, 127, -128, 127),
    (127, INT32_MAX, MAX_SHIFT, -128, -128, 127),
    (INT32_MIN, INT32_MAX, 40, 0, -128, 127),
    (-7, 1431655765, 34, 9, 0, 6),
]


def random_int8(shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-128, 128, shape, dtype=torch.int8, generator=g)


def inputs(kind: str, shape=(2, 3, 9, 11)) -> torch.Tensor:
    if kind == "random":
        return random_int8(shape, seed=sum(shape))
    return torch.full(shape, -128 if kind == "-128" else 127, dtype=torch.int8)


def assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    bad = (got != want).nonzero()
    assert bad.numel() == 0, f"{len(bad)} elements differ, first at {bad[:5].tolist()}"


# ---- max pool ----------------------------------------------------------------------------

@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("kind", ["random", "-128", "127"])
def test_qmax_pool2d_matches_reference(window, kind):
    x = inputs(kind)
    assert_same(ops.qmax_pool2d_emulated(x, *window), ref.qmax_pool2d(x, *window))


def test_qmax_pool2d_chw_input_and_grid_stride():
    x = random_int8((5, 17, 13), seed=4)
    window = ([3, 3], [1, 2], [1, 1], [1, 2], True)
    want = ref.qmax_pool2d(x, *window)
    for max_blocks in (1, 64):
        assert_same(ops.qmax_pool2d_emulated(x, *window, max_blocks=max_blocks), want)


def test_qmax_pool2d_rejects_windows_wholly_in_padding():
    x = random_int8((1, 1, 1, 1), seed=0)
    with pytest.raises(ops.KernelConstraintError, match="padding") as info:
        ops.qmax_pool2d_emulated(x, [2, 2], [1, 1], [1, 1], [2, 2], False)
    assert isinstance(info.value, BackendError)


def test_bad_pooling_arguments_are_typed_errors():
    x = random_int8((1, 2, 6, 6), seed=1)
    with pytest.raises(ops.KernelConstraintError, match="pad"):
        ops.qmax_pool2d_emulated(x, [3, 3], [1, 1], [2, 2], [1, 1], False)
    with pytest.raises(ops.KernelConstraintError, match="CHW"):
        ops.qmax_pool2d_emulated(x.reshape(12, 6), [2], [], [0], [1], False)
    with pytest.raises(ops.KernelConstraintError, match="shift"):
        ops.qavg_pool2d_emulated(x, 0, [2], [], [0], False, 2**30, 0, 0, -128, 127)


# ---- average pool ------------------------------------------------------------------------

@pytest.mark.parametrize("window", [w for w in WINDOWS if w[3] == [1, 1] or len(w[3]) == 1])
@pytest.mark.parametrize("params", REQUANT[:2])
def test_qavg_pool2d_windows(window, params):
    kernel, stride, padding, _, ceil_mode = window
    x = inputs("random")
    args = (kernel, stride, padding, ceil_mode, *params[1:])
    assert_same(ops.qavg_pool2d_emulated(x, params[0], *args),
                ref.qavg_pool2d(x, params[0], *args))


@pytest.mark.parametrize("params", REQUANT)
@pytest.mark.parametrize("kind", ["random", "-128", "127"])
def test_qavg_pool2d_extremes(params, kind):
    x = inputs(kind, shape=(2, 2, 7, 8))
    args = ([3, 3], [2, 2], [1, 1], True, *params[1:])
    assert_same(ops.qavg_pool2d_emulated(x, params[0], *args, max_blocks=1),
                ref.qavg_pool2d(x, params[0], *args))


# ---- mean --------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,dims", [
    ((2, 3, 7, 7), [2, 3]), ((2, 3, 16, 16), [-2, -1]), ((1, 2, 17, 19), [2, 3]),
    ((3, 5, 6), [-1]), ((2, 3, 4), []), ((2, 3, 0, 4), [2, 3]), ((4, 300), [1]),
])
@pytest.mark.parametrize("keepdim", [True, False])
def test_qmean_trailing_dims(shape, dims, keepdim):
    x = random_int8(shape, seed=len(shape) + len(dims))
    args = (dims, keepdim, *REQUANT[0][1:])
    assert_same(ops.qmean_emulated(x, REQUANT[0][0], *args, max_blocks=2),
                ref.qmean(x, REQUANT[0][0], *args))


@pytest.mark.parametrize("params", REQUANT)
@pytest.mark.parametrize("kind", ["random", "-128", "127"])
def test_qmean_extremes(params, kind):
    x = inputs(kind, shape=(1, 3, 5, 4))
    args = ([2, 3], True, *params[1:])
    assert_same(ops.qmean_emulated(x, params[0], *args), ref.qmean(x, params[0], *args))


def test_qmean_other_dims_are_left_to_torch():
    with pytest.raises(ops.KernelConstraintError, match="trailing"):
        ops.qmean_emulated(random_int8((2, 3, 4), 0), 0, [1], False, 2**30, 31, 0, -128, 127)


# ---- NVRTC + SASS ------------------------------------------------------------------------

EXPECT = {"qc_qmax_pool2d": (), "qc_qavg_pool2d": (), "qc_qmean": ("BAR", "LDS", "STS")}


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvrtc_compiles_without_spills(arch, tmp_path):
    if toolchain.problems():
        pytest.skip(f"CUDA pip packages missing: {toolchain.problems()}")
    from qcompile.backends.cuda import nvrtc, sass
    compiled = nvrtc.compile_kernel('#include "pool.cuh"\n', "qc_pool", arch,
                                    include_dirs=(str(ops.emulator.KERNEL_DIR),),
                                    cache_dir=tmp_path)
    text = sass.sass_text(compiled.cubin)
    for kernel, expect in EXPECT.items():
        problems = sass.check_kernel(compiled, expect=expect, function=kernel, sass=text,
                                     max_shared=4096)
        assert problems == [], f"{arch}: {problems}"
        assert compiled.resources[kernel]["stack_frame"] == 0


# ---- sanitizers --------------------------------------------------------------------------

DRIVER = r'''#include "pool.cuh"
#include <vector>

/* Runs the three kernels on one input in exactly sized heap arrays; prints the outputs. */
int main() {
  std::vector<int8_t> x(%(n)d), mean(%(rows)d), avg(%(avg_n)d), max(%(max_n)d);
  for (size_t i = 0; i < x.size(); ++i) x[i] = (int8_t)(i * 37 + i / 7);
  int32_t q[6] = {%(q)s}, ga[13] = {%(ga)s}, gm[13] = {%(gm)s};
  int rc = qc_qmean_launch(x.data(), mean.data(), %(rows)d, %(inner)d, q, 2)
           | qc_qavg_pool2d_launch(x.data(), avg.data(), ga, q, 2)
           | qc_qmax_pool2d_launch(x.data(), max.data(), gm, 2);
  for (auto* v : {&mean, &avg, &max})
    for (int8_t e : *v) std::printf("%%d ", e);
  return rc;
}
'''


def driver_problem():
    """(C++ source, the reference's outputs concatenated) for a (1, 3, 15, 20) input."""
    n, shape = 3 * 15 * 20, (1, 3, 15, 20)
    i = torch.arange(n)
    x = (i * 37 + i // 7).to(torch.int8).reshape(shape)
    q = (3, 2**30, 38, 0, -128, 127)
    mean = ref.qmean(x, q[0], [2, 3], False, *q[1:])
    avg = ref.qavg_pool2d(x, q[0], [3, 3], [2, 2], [1, 1], True, *q[1:])
    mx = ref.qmax_pool2d(x, [3, 2], [2, 3], [1, 1], [2, 3], True)
    geometry = lambda y, window: [3, 15, 20, *y.shape[-2:], *window]
    join = lambda values: ", ".join(str(v) for v in values)
    source = DRIVER % {"n": n, "rows": 3, "inner": 300, "avg_n": avg.numel(),
                       "max_n": mx.numel(), "q": join(q),
                       "ga": join(geometry(avg, [3, 3, 2, 2, 1, 1, 1, 1])),
                       "gm": join(geometry(mx, [3, 2, 2, 3, 1, 1, 2, 3]))}
    return source, torch.cat([mean.flatten(), avg.flatten(), mx.flatten()]).tolist()


@pytest.mark.parametrize("sanitizer", ["thread", "address"])
def test_kernels_are_clean_under_sanitizer(sanitizer):
    """No data race in qc_qmean's shared-memory sum, no access outside the arrays."""
    reason = ops.emulator.sanitizer_unavailable_reason(sanitizer)
    if reason is not None:
        pytest.skip(f"-fsanitize={sanitizer} unusable on this machine: {reason}")
    source, want = driver_problem()
    exe = ops.emulator.build(source, executable=True, sanitizer=sanitizer)
    done = ops.emulator.run_executable([str(exe)], f"the {sanitizer}-sanitized pool kernels")
    assert done.returncode == 0, done.stderr[-3000:]
    assert [int(v) for v in done.stdout.split()] == want
