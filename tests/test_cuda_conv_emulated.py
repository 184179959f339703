"""The cuda-int8 conv2d kernels, run by the CPU emulator, against reference.qconv2d bit for bit.

Implicit-GEMM shapes (1x1, 3x3, a small 7x7 stride-2 stem, dilation, groups, rectangular
windows, C_in per group padded to 16), depthwise shapes (vectorized and scalar channels,
stride 1 and 2), extreme operands at the padded borders, extreme requantize parameters and
clamp bounds; a small case of each kernel under ThreadSanitizer and AddressSanitizer; the
SASS of both kernels for sm_80 and sm_90.
"""
from __future__ import annotations

import pytest
import torch
from qcompile.backends.cuda import emulator, emulator_conv, toolchain
from qcompile.backends.cuda.emulator_conv import (
    DEPTHWISE_KERNEL,
    IMPLICIT_KERNEL,
    conv2d_int8_emulated,
    conv2d_kernel_for,
)

from qcompile.errors import BackendError
from qcompile.ops.reference import qconv2d
from qcompile.quant_math import MAX_SHIFT

INT32_MAX = 2**31 - 1


def conv_problem(x_shape, o, kernel, groups=1, stride=1, padding=0, dilation=1, seed=0,
                 with_bias=True) -> dict:
    """qconv2d arguments with random int8 data and typical requantize parameters."""
    g = torch.Generator().manual_seed(seed)
    kh, kw = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    pair = lambda v: list(v) if isinstance(v, (tuple, list)) else [v, v]
    return {
        "x": torch.randint(-128, 128, x_shape, dtype=torch.int8, generator=g),
        "x_zp": int(torch.randint(-128, 128, (), generator=g)),
        "w": torch.randint(-127, 128, (o, x_shape[1] // groups, kh, kw), dtype=torch.int8,
                           generator=g),
        "bias": torch.randint(-2**20, 2**20, (o,), dtype=torch.int32, generator=g)
        if with_bias else None,
        "multiplier": torch.randint(2**30, 2**31, (o,), dtype=torch.int32, generator=g),
        "shift": torch.randint(14, 26, (o,), dtype=torch.int32, generator=g),
        "out_zp": int(torch.randint(-20, 20, (), generator=g)), "qmin": -128, "qmax": 127,
        "stride": pair(stride), "padding": pair(padding), "dilation": pair(dilation),
        "groups": groups}


def assert_matches_reference(problem: dict, kernel: str) -> None:
    assert conv2d_kernel_for(problem["x"].shape, problem["w"].shape, problem["groups"])[0] == kernel
    got = conv2d_int8_emulated(**problem)
    want = qconv2d(**problem)
    assert got.dtype == torch.int8 and got.shape == want.shape
    mismatch = (got != want).nonzero()
    assert mismatch.numel() == 0, f"{len(mismatch)} elements differ, first at {mismatch[:5]}"


SHAPES = {  # x shape, O, window, groups, stride, padding, dilation, kernel
    "1x1": ((2, 32, 5, 5), 24, 1, 1, 1, 0, 1, IMPLICIT_KERNEL),
    "3x3 pad 1, odd H W": ((2, 16, 7, 9), 40, 3, 1, 1, 1, 1, IMPLICIT_KERNEL),
    "3x3 stride 2, 2 N tiles": ((1, 48, 9, 7), 72, 3, 1, 2, 0, 1, IMPLICIT_KERNEL),
    "7x7 stride 2 stem, C 3": ((2, 3, 13, 11), 16, 7, 1, 2, 3, 1, IMPLICIT_KERNEL),
    "7x7 stride 2, C 16": ((1, 16, 11, 11), 8, 7, 1, 2, 3, 1, IMPLICIT_KERNEL),
    "dilation 2, 3 M tiles": ((2, 16, 9, 9), 16, 3, 1, 1, 2, 2, IMPLICIT_KERNEL),
    "groups 2": ((2, 32, 7, 7), 48, 3, 2, 1, 1, 1, IMPLICIT_KERNEL),
    "groups 4, C/g 8": ((1, 32, 5, 5), 16, 3, 4, 1, 1, 1, IMPLICIT_KERNEL),
    "1x3 window": ((1, 16, 6, 8), 8, (1, 3), 1, (1, 2), (0, 1), 1, IMPLICIT_KERNEL),
    "depthwise 3x3 s1, C 24": ((2, 24, 9, 9), 24, 3, 24, 1, 1, 1, DEPTHWISE_KERNEL),
    "depthwise 3x3 s2, odd": ((2, 24, 9, 11), 24, 3, 24, 2, 1, 1, DEPTHWISE_KERNEL),
    "depthwise C 5 s2": ((2, 5, 7, 7), 5, 3, 5, 2, 1, 1, DEPTHWISE_KERNEL),
    "depthwise grid-stride": ((2, 24, 15, 15), 24, 3, 24, 1, 1, 1, DEPTHWISE_KERNEL),
    "depthwise 5x5 dil 2": ((1, 8, 9, 9), 8, 5, 8, 1, 4, 2, DEPTHWISE_KERNEL),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shapes_match_reference(name):
    x_shape, o, window, groups, stride, padding, dilation, kernel = SHAPES[name]
    problem = conv_problem(x_shape, o, window, groups, stride, padding, dilation,
                           seed=len(name))
    assert_matches_reference(problem, kernel)


@pytest.mark.parametrize("name", ["3x3 pad 1, odd H W", "depthwise C 5 s2"])
def test_no_bias(name):
    x_shape, o, window, groups, stride, padding, dilation, kernel = SHAPES[name]
    problem = conv_problem(x_shape, o, window, groups, stride, padding, dilation,
                           with_bias=False)
    assert_matches_reference(problem, kernel)


def extreme_channels(o: int, k: int) -> dict:
    """Per-channel multipliers 2^31-1 ... 0, shifts 1 ... MAX_SHIFT, and biases as large
    as an int32 accumulator allows for K taps."""
    headroom = k * 255 * 128
    multipliers = [INT32_MAX, 2**30, 1, 0, INT32_MAX, 12345, 2**31 - 2, 3]
    shifts = [1, MAX_SHIFT, 1, 7, 31, 1, MAX_SHIFT - 20, 2]
    biases = [INT32_MAX - headroom, -INT32_MAX - 1 + headroom, 0, -1, 1, 2**24, -2**24, 17]
    reps = -(-o // len(multipliers))
    as_tensor = lambda values: torch.tensor((values * reps)[:o], dtype=torch.int32)
    return {"multiplier": as_tensor(multipliers), "shift": as_tensor(shifts),
            "bias": as_tensor(biases)}


def extreme_operands(kind: str, x_shape, w_shape):
    """(x, x_zp, w) at the ends of the int8 range; x far from x_zp makes a wrongly padded
    border tap visible."""
    full = lambda shape, v: torch.full(shape, v, dtype=torch.int8)
    if kind == "x -128, zp 127, w -128":
        return full(x_shape, -128), 127, full(w_shape, -128)
    if kind == "x 127, zp -128, w 127":
        return full(x_shape, 127), -128, full(w_shape, 127)
    if kind == "x 127, zp -128, w -127":
        return full(x_shape, 127), -128, full(w_shape, -127)
    g = torch.Generator().manual_seed(7)
    pick = lambda values, shape: torch.tensor(values, dtype=torch.int8)[
        torch.randint(len(values), shape, generator=g)]
    return pick([-128, 127], x_shape), -128, pick([-128, -127, 127], w_shape)


EXTREME_SHAPES = ["3x3 pad 1, odd H W", "7x7 stride 2 stem, C 3", "depthwise 3x3 s2, odd"]


@pytest.mark.parametrize("name", EXTREME_SHAPES)
@pytest.mark.parametrize("bounds", [(-128, 127), (0, 6), (127, 127)])
@pytest.mark.parametrize("operands", ["x -128, zp 127, w -128", "x 127, zp -128, w 127",
                                      "x 127, zp -128, w -127", "mixed"])
def test_extremes_match_reference(name, bounds, operands):
    x_shape, o, window, groups, stride, padding, dilation, kernel = SHAPES[name]
    problem = conv_problem(x_shape, o, window, groups, stride, padding, dilation)
    k = problem["w"][0].numel()
    x, x_zp, w = extreme_operands(operands, x_shape, problem["w"].shape)
    problem.update(x=x, x_zp=x_zp, w=w, out_zp=0, qmin=bounds[0], qmax=bounds[1],
                   **extreme_channels(o, k))
    assert_matches_reference(problem, kernel)


@pytest.mark.parametrize("out_zp", [-128, 127])
@pytest.mark.parametrize("name", ["dilation 2, 3 M tiles", "depthwise 3x3 s1, C 24"])
def test_output_zero_point_extremes(name, out_zp):
    x_shape, o, window, groups, stride, padding, dilation, kernel = SHAPES[name]
    problem = conv_problem(x_shape, o, window, groups, stride, padding, dilation, seed=out_zp)
    problem["out_zp"] = out_zp
    assert_matches_reference(problem, kernel)


def test_kernel_for_says_which_and_why():
    name, why = conv2d_kernel_for((1, 32, 8, 8), (32, 1, 3, 3), 32)
    assert name == DEPTHWISE_KERNEL and "depthwise" in why
    name, why = conv2d_kernel_for((1, 3, 8, 8), (16, 3, 7, 7), 1)
    assert name == IMPLICIT_KERNEL and "padded to 16" in why
    name, why = conv2d_kernel_for((1, 32, 8, 8), (16, 30, 3, 3), 1)
    assert name is None and "channels do not match" in why
    name, why = conv2d_kernel_for((1, 16 * 70000, 1, 1), (70000, 16, 1, 1), 70000)
    assert name is None and "groups" in why
    assert conv2d_kernel_for((8, 8), (8, 8), 1)[0] is None


def test_kernel_restrictions_are_typed_errors():
    problem = conv_problem((1, 16, 3, 3), 8, 5)
    with pytest.raises(emulator.KernelConstraintError, match="does not fit"):
        conv2d_int8_emulated(**problem)
    problem = conv_problem((1, 16, 5, 5), 8, 3)
    problem["w"] = problem["w"][:, :8]
    with pytest.raises(BackendError, match="channels do not match"):
        conv2d_int8_emulated(**problem)
    problem = conv_problem((1, 16, 5, 5), 8, 3)
    problem["shift"][0] = 0
    with pytest.raises(BackendError, match="shifts"):
        conv2d_int8_emulated(**problem)
    problem = conv_problem((1, 16, 5, 5), 8, 3, stride=0)
    with pytest.raises(BackendError, match="stride"):
        conv2d_int8_emulated(**problem)


@pytest.mark.parametrize("sanitizer", ["thread", "address"])
@pytest.mark.parametrize("name", ["7x7 stride 2 stem, C 3", "depthwise C 5 s2"])
def test_small_conv_is_clean_under_sanitizer(sanitizer, name):
    reason = emulator.sanitizer_unavailable_reason(sanitizer)
    if reason is not None:
        pytest.skip(f"-fsanitize={sanitizer} unusable on this machine: {reason}")
    x_shape, o, window, groups, stride, padding, dilation, _ = SHAPES[name]
    problem = conv_problem(x_shape, o, window, groups, stride, padding, dilation, seed=3)
    got = emulator_conv.conv2d_int8_sanitized(sanitizer, **problem)
    assert torch.equal(got, qconv2d(**problem))


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_sass_has_tensor_core_pipeline_and_no_spills(arch):
    if toolchain.problems():
        pytest.skip(f"CUDA pip packages missing: {toolchain.problems()}")
    from qcompile.backends.cuda import nvrtc, sass
    compiled = nvrtc.compile_kernel(emulator_conv.CONV_SOURCE, "qc_conv_int8", arch,
                                    include_dirs=(str(emulator.KERNEL_DIR),))
    text = sass.sass_text(compiled.cubin)
    assert sass.check_kernel(compiled, ("IMMA", "LDSM", "LDGSTS"), max_registers=255,
                             max_shared=48 * 1024, function=IMPLICIT_KERNEL, sass=text) == []
    assert sass.check_kernel(compiled, (), max_registers=255, function=DEPTHWISE_KERNEL,
                             sass=text) == []
    assert sass.sass_summary(text)[IMPLICIT_KERNEL]["IMMA"] >= 16  # 2x4 mma x 2 k-steps a stage
