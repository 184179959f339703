"""Integer-only softmax, GELU, LayerNorm, i_add and i_linear: integer properties and the error
bounds stated in qcompile/ops/integer_only_params.py."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import qcompile  # noqa: F401  (registers the qcompile ops)
from qcompile.ops import integer_only as io
from qcompile.ops import integer_only_params as P
from qcompile.ops.reference import dequantize

Q = torch.ops.qcompile
SETTINGS = settings(max_examples=60, deadline=None)
scales = st.floats(1e-4, 2.0).map(lambda s: float(torch.tensor(s, dtype=torch.float32)))
zero_points = st.sampled_from([-128, -127, -3, 0, 5, 126, 127])
seeds = st.integers(0, 2**31 - 1)


def _codes(seed: int, shape, extremes: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-128, 128, shape, generator=g, dtype=torch.int8)
    if extremes:
        q.view(-1)[0], q.view(-1)[-1] = -128, 127
    return q


def _representable(y: torch.Tensor, out: P.OutQ) -> torch.Tensor:
    return y.clamp((out.qmin - out.zero_point) * out.scale, (out.qmax - out.zero_point) * out.scale)


def _err(q: torch.Tensor, out: P.OutQ, ref: torch.Tensor) -> float:
    got = dequantize(q, out.scale, out.zero_point)
    return float((got.double() - _representable(ref, out).double()).abs().max())


def test_fixed_constants_match_their_definition():
    s_t, s_u = math.log(2) / 2**io.EXP_BITS, 2.0**-io.ERF_BITS
    assert io.EXP_B == round(1.353 / s_t)
    assert io.EXP_C == io.EXP_B**2 - 2 * (io.EXP_B - 2**io.EXP_BITS)**2
    assert abs(io.EXP_C * 0.3585 * s_t**2 - 0.344) < 1e-3
    assert (io.EXP_B**2 + io.EXP_C) < 2**31
    assert io.ERF_B == round(1.769 / s_u)
    assert io.ERF_ONE == round(1 / (0.2888 * s_u**2))


# ---- i_exp / softmax ---------------------------------------------------------------------

def test_i_exp_is_monotone_and_close_to_exp():
    t = torch.arange(-40 * 2**io.EXP_BITS, 1, dtype=torch.int64)
    e = io.i_exp(t)
    assert bool((e[1:] >= e[:-1]).all())
    unit = 0.3585 * P.EXP_UNIT**2
    near = t > -8 * 2**io.EXP_BITS
    ref = torch.exp(t[near].double() * P.EXP_UNIT)
    assert float(((e[near].double() * unit) / ref - 1).abs().max()) < 0.003 + 1e-4
    assert int(e[0]) == 0 or int(e[0]) < 2**-30 * int(e[-1])


@given(st.lists(st.integers(-(2**31), 0), min_size=2, max_size=50))
@SETTINGS
def test_i_exp_monotone_on_random_points(values):
    t = torch.tensor(sorted(values), dtype=torch.int64)
    e = io.i_exp(t)
    assert bool((e[1:] >= e[:-1]).all()) and bool((e >= 0).all())


@given(seeds, scales, zero_points, st.sampled_from([(1 / 256, -128), (0.00392, -128),
                                                     (1 / 128, 0), (0.01, -100)]))
@SETTINGS
def test_softmax_error_bound_and_row_sums(seed, s, zp, out_q):
    out = P.OutQ(*out_q)
    q = _codes(seed, (6, 33))
    y = Q.i_softmax(q, *P.softmax_params(s, zp, out))
    assert y.dtype == torch.int8
    ref = torch.softmax(dequantize(q, s, zp).double(), -1)
    assert _err(y, out, ref) <= P.softmax_error_bound(out)
    if out.scale <= 1 / 256 + 1e-9 and out.zero_point == -128:
        row = (y.to(torch.int64) - out.zero_point).sum(-1).double() * out.scale
        # each element within the bound; clamping at qmax only lowers a row's sum
        assert bool((row <= 1 + 33 * P.softmax_error_bound(out)).all())
        assert bool((row >= 1 - 33 * P.softmax_error_bound(out) - 2 * out.scale).all())


@pytest.mark.parametrize("s", [1e-6, 1e-3, 0.1, 10.0, 1e3])
def test_softmax_tiny_and_huge_input_scales(s):
    out = P.OutQ(1 / 256, -128)
    q = _codes(1, (4, 16))
    y = Q.i_softmax(q, *P.softmax_params(s, 0, out))
    assert _err(y, out, torch.softmax(dequantize(q, s, 0).double(), -1)) <= \
        P.softmax_error_bound(out)


def test_softmax_mask_and_factor():
    out = P.OutQ(1 / 256, -128)
    q = _codes(3, (2, 3, 10))
    mask = torch.rand(2, 1, 10, generator=torch.Generator().manual_seed(0)) > 0.4
    mask[..., 0] = True
    y = Q.i_softmax(q, *P.softmax_params(0.2, 4, out, factor=0.125), -1, mask)
    scores = dequantize(q, 0.2, 4).double() * 0.125
    ref = torch.softmax(scores.masked_fill(~mask, -1e30), -1)
    assert _err(y, out, ref) <= P.softmax_error_bound(out)
    assert bool((y.masked_select(~mask.expand_as(y)) == -128).all())


def test_softmax_other_dim_matches_transpose():
    out = P.OutQ(1 / 256, -128)
    q = _codes(4, (5, 7))
    args = P.softmax_params(0.05, 0, out)
    assert torch.equal(Q.i_softmax(q, *args, 0), Q.i_softmax(q.T.contiguous(), *args, -1).T)


# ---- GELU --------------------------------------------------------------------------------

@given(seeds, scales, zero_points, st.sampled_from([(0.03, -100), (0.08, -126), (0.5, 0)]))
@SETTINGS
def test_gelu_error_bound(seed, s, zp, out_q):
    out = P.OutQ(*out_q)
    q = _codes(seed, (300,))
    y = Q.i_gelu(q, *P.gelu_params(s, zp, out))
    assert _err(y, out, F.gelu(dequantize(q, s, zp).double())) <= P.gelu_error_bound(out)


def test_gelu_every_code_and_extremes():
    q = torch.arange(-128, 128, dtype=torch.int8)
    for s, zp in ((1e-4, 0), (0.05, -128), (0.05, 127), (0.3, 10)):
        out = P.OutQ(max(s, 0.01), -20)
        y = io.i_gelu(q, *P.gelu_params(s, zp, out))
        assert _err(y, out, F.gelu(dequantize(q, s, zp).double())) <= P.gelu_error_bound(out)


def test_i_erf_is_odd_and_saturates():
    u = torch.arange(-3000, 3001, dtype=torch.int64)
    e = io.i_erf(u)
    assert torch.equal(e, -io.i_erf(-u))
    assert int(e[-1]) == io.ERF_ONE and bool((e[1:] >= e[:-1])[u[1:] > 0].all())


# ---- isqrt, LayerNorm --------------------------------------------------------------------

@given(st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=40))
@SETTINGS
def test_isqrt_is_exact(values):
    got = io.isqrt(torch.tensor(values, dtype=torch.int64))
    assert got.tolist() == [math.isqrt(v) for v in values]


def test_isqrt_at_squares_and_edges():
    roots = [0, 1, 2, 3, 2**15, 2**31 - 1, 3037000499]
    values = sorted({max(r * r + d, 0) for r in roots for d in (-1, 0, 1)} | {2**63 - 1})
    assert io.isqrt(torch.tensor(values)).tolist() == [math.isqrt(v) for v in values]


@given(seeds, scales, zero_points, st.sampled_from([8, 64, 384]),
       st.sampled_from([(0.03, 0), (0.06, -12), (0.15, -74)]))
@SETTINGS
def test_layernorm_error_bound(seed, s, zp, n, out_q):
    out = P.OutQ(*out_q)
    g = torch.Generator().manual_seed(seed)
    gamma, beta = torch.randn(n, generator=g) * 0.5 + 1, torch.randn(n, generator=g) * 0.3
    q = _codes(seed, (5, n))
    consts = P.layernorm_params(s, zp, gamma, beta, 1e-5, out, n)
    y = Q.i_layernorm(q, *consts.args())
    x = dequantize(q, s, zp).double()
    keep = x.std(-1) / s >= 1        # rows whose spread is at least one input step
    ref = F.layer_norm(x, [n], gamma.double(), beta.double(), 1e-5)
    bound = P.layernorm_error_bound(consts, out, float(gamma.abs().max()), n)
    assert _err(y[keep], out, ref[keep]) <= bound


def test_layernorm_constant_row_gives_beta():
    out = P.OutQ(0.01, 0)
    beta = torch.linspace(-1, 1, 16)
    consts = P.layernorm_params(0.1, 0, torch.ones(16), beta, 1e-5, out, 16)
    for code in (-128, 0, 127):
        y = io.i_layernorm(torch.full((1, 16), code, dtype=torch.int8), *consts.args())
        assert _err(y, out, beta.double()[None]) <= out.scale / 2 + consts.acc_scale


def test_wide_residual_add_keeps_small_values_beside_outliers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 384, generator=g) * 0.5
    x[:, 7] = 150.0                                # an outlier channel
    s_a, s_b, out = 150.0 / 127, 0.05, P.OutQ(0.05, 0)
    a = torch.clamp(torch.round(x / s_a), -128, 127).to(torch.int8)
    b = torch.randint(-128, 128, (4, 384), generator=g, dtype=torch.int8)
    wide = P.wide_scale(-200.0, 200.0)
    za, ma, zb, mb, shift = P.add_params(s_a, 0, s_b, 0, wide)
    summed = Q.i_add(a, za, ma, b, zb, mb, shift)
    assert summed.dtype == torch.int32 and int(summed.abs().max()) <= io.WIDE_MAX
    expect = (a.double() * s_a + b.double() * s_b) / wide
    assert float((summed.double() - expect).abs().max()) <= 0.5 + 1e-9
    consts = P.layernorm_params(wide, 0, None, None, 1e-12, out, 384)
    y = Q.i_layernorm(summed, *consts.args())
    ref = F.layer_norm(summed.double() * wide, [384], eps=1e-12)
    assert _err(y, out, ref) <= P.layernorm_error_bound(consts, out, 1.0, 384)


def test_wide_linear_matches_float_accumulation():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-128, 128, (3, 40), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (24, 40), generator=g, dtype=torch.int8)
    w_scales, bias = torch.rand(24, generator=g) * 0.01 + 1e-3, torch.randn(24, generator=g)
    wide = 1e-3
    bias_q, m, n = P.wide_linear_params(0.02, w_scales, bias, wide)
    y = Q.i_linear(x, 3, w, bias_q, m, n)
    ref = F.linear((x.double() - 3) * 0.02, w.double() * w_scales.double()[:, None], bias.double())
    expect = torch.clamp(torch.round(ref / wide), io.WIDE_MIN, io.WIDE_MAX)
    assert y.dtype == torch.int32 and float((y.double() - expect).abs().max()) <= 1


def test_kernels_reject_wrong_dtypes_and_params():
    with pytest.raises(ValueError, match="int8"):
        io.i_softmax(torch.zeros(3, dtype=torch.int32), 0, 1, 1, 1, 1, 0, -128, 127)
    with pytest.raises(ValueError, match="gamma"):
        io.i_layernorm(torch.zeros(2, 4, dtype=torch.int8), 0, torch.ones(3, dtype=torch.int32),
                       torch.zeros(4, dtype=torch.int32), 0, 2**30, 31, 0, -128, 127)
    with pytest.raises(ValueError):
        P.softmax_params(1e6, 0, P.OutQ(1 / 256, -128))
    with pytest.raises(ValueError, match="outside"):
        P.layernorm_params(0.1, 0, None, None, 1e-5, P.OutQ(0.1, 0), 10000)
