"""TVM int8 GEMM kernels are bit-exact with the reference qlinear / qlinear_f32 kernels.

Every path this CPU runs is tested (avx512-vnni, avx2, generic); the others skip with the
missing feature named. Extreme values: x at -128 / 127, zero points -128 / 127, w at +-127
(and -128), multipliers from 0 to 2^31 - 1, shifts 1 to 62, ReLU clamps, int32-sized biases.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("tvm")

from qcompile.backends.tvm import cpu_features  # noqa: E402
from qcompile.backends.tvm.qlinear import build_qlinear, build_qlinear_f32  # noqa: E402
from qcompile.ops.float_out import qlinear_f32  # noqa: E402
from qcompile.ops.reference import qlinear  # noqa: E402

SHAPES = [(1, 7, 3), (13, 384, 1536), (37, 100, 37), (64, 48, 64), (5, 33, 6)]


@pytest.fixture(params=cpu_features.PATHS)
def path(request):
    feats = cpu_features.detect()
    if not feats.supports(request.param):
        pytest.skip(f"this CPU cannot run the {request.param} path "
                    f"(has: {', '.join(feats.paths())})")
    return request.param


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _rand_int8(shape, g, lo=-128, hi=127):
    return torch.randint(lo, hi + 1, shape, dtype=torch.int8, generator=g)


def _rand_requant(n, g, shift_lo=1, shift_hi=62):
    mult = torch.randint(2**30, 2**31, (n,), dtype=torch.int32, generator=g)
    shift = torch.randint(shift_lo, shift_hi + 1, (n,), dtype=torch.int32, generator=g)
    return mult, shift


def check_int8(path, x, x_zp, w, bias, mult, shift, out_zp, qmin, qmax):
    kern = build_qlinear(w, x_zp, bias, mult, shift, out_zp, qmin, qmax, path=path)
    got = kern(x)
    want = qlinear(x, x_zp, w, bias, mult, shift, out_zp, qmin, qmax)
    assert got.dtype == torch.int8 and got.shape == want.shape
    diff = (got.to(torch.int32) - want.to(torch.int32)).abs()
    assert torch.equal(got, want), f"{kern}: {int((diff > 0).sum())} mismatches"
    return kern


def check_f32(path, x, x_zp, w, bias, scale):
    kern = build_qlinear_f32(w, x_zp, bias, scale, path=path)
    got, want = kern(x), qlinear_f32(x, x_zp, w, bias, scale)
    assert got.dtype == torch.float32 and got.shape == want.shape
    same_bits = got.view(torch.int32) == want.view(torch.int32)
    assert bool(same_bits.all()), f"{kern}: {int((~same_bits).sum())} mismatches"


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_random_int8(path, m, n, k):
    g = _gen(m * 7919 + n * 31 + k)
    x, w = _rand_int8((m, k), g), _rand_int8((n, k), g, -127, 127)
    bias = torch.randint(-2**20, 2**20, (n,), dtype=torch.int32, generator=g)
    mult, shift = _rand_requant(n, g, 16, 40)
    check_int8(path, x, 9, w, bias, mult, shift, -7, -128, 127)
    check_int8(path, x, -100, w, None, mult, shift, 20, -128, 127)


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_random_f32(path, m, n, k):
    g = _gen(m + n + k)
    x, w = _rand_int8((m, k), g), _rand_int8((n, k), g, -127, 127)
    scale = torch.rand(n, generator=g) * 1e-3 + 1e-6
    bias = torch.randn(n, generator=g)
    check_f32(path, x, 3, w, bias, scale)  # needs two roundings: no fma allowed
    check_f32(path, x, -128, w, bias, scale * 1e-30)  # subnormal products


def test_f32_without_bias(path):
    g = _gen(8)
    x, w = _rand_int8((37, 37), g), _rand_int8((100, 37), g, -127, 127)
    check_f32(path, x, -128, w, None, torch.rand(100, generator=g) * 1e-3 + 1e-6)


@pytest.mark.parametrize("x_val,x_zp", [(-128, 127), (127, -128), (-128, -128), (127, 127)])
@pytest.mark.parametrize("w_val", [127, -127, -128])
def test_extreme_operands(path, x_val, x_zp, w_val):
    m, n, k = 13, 384, 1536  # the largest |acc| the tests reach: 255 * 128 * 1536
    x = torch.full((m, k), x_val, dtype=torch.int8)
    w = torch.full((n, k), w_val, dtype=torch.int8)
    w[::3] = -w_val if w_val != -128 else 127  # mixed signs per channel
    mult, shift = _rand_requant(n, _gen(1), 30, 62)
    check_int8(path, x, x_zp, w, None, mult, shift, 0, -128, 127)
    check_f32(path, x, x_zp, w, torch.ones(n), torch.full((n,), 1e-5))


def test_multiplier_and_shift_extremes(path):
    m, n, k = 37, 100, 37
    g = _gen(5)
    x, w = _rand_int8((m, k), g), _rand_int8((n, k), g, -127, 127)
    bias = torch.randint(-1000, 1000, (n,), dtype=torch.int32, generator=g)
    for mult_value, shift_value in [(2**31 - 1, 1), (2**31 - 1, 62), (2**30, 62), (2**30, 1),
                                    (0, 31), (2**31 - 1, 31), (1, 2)]:
        mult = torch.full((n,), mult_value, dtype=torch.int32)
        shift = torch.full((n,), shift_value, dtype=torch.int32)
        check_int8(path, x, 0, w, bias, mult, shift, 0, -128, 127)
    mult, shift = _rand_requant(n, g, 1, 62)  # a different shift per channel
    check_int8(path, x, 0, w, bias, mult, shift, 0, -128, 127)


def test_rounding_ties_and_relu_clamps(path):
    m, n, k = 64, 48, 64
    g = _gen(11)
    x, w = _rand_int8((m, k), g), _rand_int8((n, k), g, -127, 127)
    mult = torch.full((n,), 2**30, dtype=torch.int32)  # acc * 2^30 >> n: exact halves occur
    for shift_value in (31, 32, 33):
        shift = torch.full((n,), shift_value, dtype=torch.int32)
        check_int8(path, x, 1, w, None, mult, shift, 0, -128, 127)
    mult, shift = _rand_requant(n, g, 20, 30)
    for out_zp in (-128, -5, 127):
        check_int8(path, x, 1, w, None, mult, shift, out_zp, out_zp, 127)  # fused ReLU
    check_int8(path, x, 1, w, None, mult, shift, -20, -20, 40)  # ReLU6-like clamp


def test_int32_sized_bias_uses_wide_offsets(path):
    m, n, k = 13, 384, 1536
    g = _gen(3)
    x, w = _rand_int8((m, k), g), _rand_int8((n, k), g, -127, 127)
    bias = torch.full((n,), 2**31 - 2**22, dtype=torch.int32)
    bias[::2] = -2**31 + 2**22
    mult, shift = _rand_requant(n, g, 40, 62)
    kern = check_int8(path, x, 7, w, bias, mult, shift, 0, -128, 127)
    assert kern.spec.wide


def test_batch_dims_empty_and_unaligned_inputs(path):
    g = _gen(2)
    n, k = 33, 6
    w = _rand_int8((n, k), g, -127, 127)
    mult, shift = _rand_requant(n, g, 10, 20)
    kern = build_qlinear(w, 4, None, mult, shift, 1, -128, 127, path=path)
    x = _rand_int8((2, 3, k), g)
    assert torch.equal(kern(x), qlinear(x, 4, w, None, mult, shift, 1, -128, 127))
    assert kern(x[:, :0]).shape == (2, 0, n)
    big = _rand_int8((1, 10 * k + 1), g)
    x_odd = big[0, 1:].reshape(10, k)  # data pointer not 64-byte aligned
    assert torch.equal(kern(x_odd), qlinear(x_odd, 4, w, None, mult, shift, 1, -128, 127))


def test_kernel_code_is_shared_between_layers(path):
    g = _gen(4)
    w1, w2 = _rand_int8((48, 64), g), _rand_int8((48, 64), g)
    mult, shift = _rand_requant(48, g, 20, 30)
    k1 = build_qlinear(w1, 0, None, mult, shift, 0, -128, 127, path=path)
    k2 = build_qlinear(w2, 5, None, mult, shift, 3, -128, 127, path=path)
    assert k1.func is k2.func  # same (path, N, K, tile, mode): compiled once


def test_bad_inputs_raise(path):
    w = torch.zeros((8, 4), dtype=torch.int8)
    one = torch.ones(8, dtype=torch.int32)
    kern = build_qlinear(w, 0, None, one, one, 0, -128, 127, path=path)
    with pytest.raises(ValueError):
        kern(torch.zeros((2, 5), dtype=torch.int8))
    with pytest.raises(ValueError):
        kern(torch.zeros((2, 4), dtype=torch.int32))
    with pytest.raises(ValueError):
        build_qlinear(w, 0, None, one, one * 0, 0, -128, 127, path=path)
