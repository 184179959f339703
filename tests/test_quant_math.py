import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from qcompile import quant_math as qm

SETTINGS = settings(max_examples=200, deadline=None)
log_uniform = st.floats(min_value=math.log(1e-18), max_value=math.log(1e9)).map(math.exp)
int32s = st.integers(min_value=-(2**31) + 1, max_value=2**31 - 1)


def rrs_exact(v: int, n: int) -> int:
    return (v + 2 ** (n - 1)) >> n  # python ints: exact arithmetic shift


def test_fp32_rounds_to_float32():
    assert qm.fp32(0.1) == float(np.float32(0.1)) != 0.1
    assert qm.fp32(1.5) == 1.5
    assert qm.fp32(1e300) == math.inf


@pytest.mark.parametrize("lo, hi, symmetric, expected", [
    (-1.0, 1.0, False, (qm.fp32(2 / 255), -1)),  # fp32 scale > 2/255: -0.50001
    (0.0, 2.55, False, (qm.fp32(0.01), -128)),
    (-2.55, 0.0, False, (qm.fp32(0.01), 127)),
    (1.0, 2.0, False, (qm.fp32(2 / 255), -128)),       # widened to include 0
    (-3.0, -1.0, False, (qm.fp32(3 / 255), 127)),
    (-1.0, 2.0, True, (qm.fp32(2 / 127), 0)),
    (-4.0, 2.0, True, (qm.fp32(4 / 127), 0)),
    (0.0, 0.0, False, (1.0, -128)),
    (0.0, 0.0, True, (1.0, 0)),
    (-1e-45, 1e-45, False, (qm.MIN_SCALE, -128)),  # floored scale
])
def test_qparams_from_range(lo, hi, symmetric, expected):
    assert qm.qparams_from_range(lo, hi, symmetric=symmetric) == expected


@given(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6), st.booleans())
@SETTINGS
def test_qparams_cover_the_range(a, b, symmetric):
    lo, hi = min(a, b), max(a, b)
    scale, zp = qm.qparams_from_range(lo, hi, symmetric=symmetric)
    assert scale == qm.fp32(scale) and scale >= qm.MIN_SCALE
    assert qm.QMIN <= zp <= qm.QMAX
    if symmetric:
        assert zp == 0
    if hi - lo > 1e-20:
        # 0 is exactly representable and both ends lie within half a step of the grid
        assert round(min(lo, 0) / scale) + zp >= qm.QMIN - 1
        assert round(max(hi, 0) / scale) + zp <= qm.QMAX + 1


@pytest.mark.parametrize("lo, hi", [(math.nan, 1.0), (-math.inf, 1.0), (0.0, math.inf), (2.0, 1.0)])
def test_qparams_rejects_bad_ranges(lo, hi):
    with pytest.raises(ValueError):
        qm.qparams_from_range(lo, hi, symmetric=False)


def test_qparams_rejects_range_too_wide_for_float32():
    with pytest.raises(ValueError):
        qm.qparams_from_range(-1e300, 1e300, symmetric=False)


def test_weight_scales_per_channel():
    w = torch.tensor([[1.0, -2.54], [0.0, 0.0], [3.0, 0.5]])
    expected = torch.tensor([2.54, 1.0 * 127, 3.0], dtype=torch.float32) / 127
    torch.testing.assert_close(qm.weight_scales_per_channel(w), expected, rtol=0, atol=0)
    cols = qm.weight_scales_per_channel(w, axis=1)
    torch.testing.assert_close(cols, torch.tensor([3.0, 2.54]) / 127, rtol=0, atol=0)
    assert qm.weight_scales_per_channel(torch.randn(4, 3, 2, 2), axis=0).shape == (4,)


@given(log_uniform)
@SETTINGS
def test_quantize_multiplier_invariants(real):
    m, n = qm.quantize_multiplier(real)
    assert 1 <= n <= 62
    if n < 62:
        assert 2**30 <= m < 2**31
        assert abs(m / 2**n - real) <= real * 2**-31
    else:
        assert 0 <= m < 2**31
        assert abs(m - real * 2**62) <= 0.5


@given(log_uniform, int32s)
@SETTINGS
def test_integer_requantize_matches_real_product(real, acc):
    m, n = qm.quantize_multiplier(real)
    bound = int(2**30 / real)  # keep |acc * real| where one relative 2**-31 error is < 1
    acc = max(-bound, min(bound, acc))
    got = int(qm.rounding_right_shift(torch.tensor([acc * m], dtype=torch.int64), n)[0])
    assert got == rrs_exact(acc * m, n)
    assert abs(got - round(acc * real)) <= 1


@pytest.mark.parametrize("real, expected", [
    (0.5, (2**30, 31)), (1.0, (2**30, 30)), (0.75, (3 * 2**29, 31)),
    (2**-32, (2**30, 62)), (2**-40, (2**22, 62)), (1e-30, (0, 62)),
    (1.0 - 2**-40, (2**30, 30)),   # mantissa rounds up to 2**31: renormalized
    (2**29, (2**30, 1)),
])
def test_quantize_multiplier_known_values(real, expected):
    assert qm.quantize_multiplier(real) == expected


@pytest.mark.parametrize("real", [0.0, -1.0, math.nan, math.inf, 2.0**30, 1e12])
def test_quantize_multiplier_errors(real):
    with pytest.raises(ValueError):
        qm.quantize_multiplier(real)


def test_quantize_multipliers_elementwise():
    reals = torch.tensor([[0.5, 1e-3], [3e-7, 1e-25]], dtype=torch.float64)
    ms, ns = qm.quantize_multipliers(reals)
    assert ms.dtype == ns.dtype == torch.int32 and ms.shape == reals.shape
    for r, m, n in zip(reals.flatten().tolist(), ms.flatten().tolist(), ns.flatten().tolist()):
        assert (m, n) == qm.quantize_multiplier(r)


@given(st.lists(log_uniform, min_size=1, max_size=4))
@SETTINGS
def test_shared_shift_multipliers(reals):
    ms, n = qm.shared_shift_multipliers(reals)
    big = reals.index(max(reals))
    assert (ms[big], n) == qm.quantize_multiplier(max(reals))
    for real, m in zip(reals, ms):
        assert 0 <= m < 2**31
        assert abs(m - real * 2**n) <= 0.5


def test_shared_shift_multipliers_errors():
    for bad in ([], [1.0, 0.0], [1.0, math.nan], [2.0**31]):
        with pytest.raises(ValueError):
            qm.shared_shift_multipliers(bad)


@given(st.lists(st.integers(-(2**61), 2**61), min_size=1, max_size=8), st.integers(1, 62))
@SETTINGS
def test_rounding_right_shift_matches_python_ints(values, n):
    got = qm.rounding_right_shift(torch.tensor(values, dtype=torch.int64), n).tolist()
    assert got == [rrs_exact(v, n) for v in values]
    shifts = torch.full((len(values),), n, dtype=torch.int32)
    assert qm.rounding_right_shift(torch.tensor(values), shifts).tolist() == got


def test_rounding_right_shift_ties_round_up():
    v = torch.tensor([-3, -2, -1, 1, 2, 3, 5], dtype=torch.int64)
    assert qm.rounding_right_shift(v, 1).tolist() == [-1, -1, 0, 1, 1, 2, 3]
    with pytest.raises(ValueError):
        qm.rounding_right_shift(v, 0)
    with pytest.raises(ValueError):
        qm.rounding_right_shift(v.float(), 1)
