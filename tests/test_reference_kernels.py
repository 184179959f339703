"""Reference kernels vs slow independent numpy/int64 implementations, and the torch ops."""
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

import qcompile.ops  # noqa: F401  (registers torch.ops.qcompile)
from qcompile.ops import reference as ref
from qcompile.quant_math import quantize_multiplier, quantize_multipliers, shared_shift_multipliers

SETTINGS = settings(max_examples=40, deadline=None)
seeds = st.integers(0, 2**31 - 1)
zps = st.sampled_from([-128, 127, 0, 5, -77])
bounds = st.sampled_from([(-128, 127), (-128, -128), (127, 127), (0, 127), (-20, 30)])
fills = st.sampled_from([None, None, -128, 127])


def rand_i8(g, shape, fill=None):
    if fill is not None:
        return torch.full(shape, fill, dtype=torch.int8)
    return torch.randint(-128, 128, shape, dtype=torch.int8, generator=g)


def rand_multipliers(g, n, spread=False):
    """int32 (M, n) for n channels; spread=True gives shifts from ~70 down to ~1."""
    if spread:
        reals = torch.logspace(-12, -0.05, n, dtype=torch.float64)[torch.randperm(n, generator=g)]
    else:
        reals = 10 ** (torch.rand(n, generator=g, dtype=torch.float64) * -5 - 1)
    return quantize_multipliers(reals)


def np_requant(acc, m, n, zp, qmin, qmax):
    acc, m, n = (np.asarray(v, dtype=np.int64) for v in (acc, m, n))
    y = (acc * m + (np.int64(1) << (n - 1))) // (np.int64(1) << n) + zp
    return np.clip(y, qmin, qmax).astype(np.int8)


def np_quantize(x, s, zp, qmin, qmax):
    with np.errstate(over="ignore", invalid="ignore"):
        v = np.round(x.astype(np.float32) / np.float32(s)) + np.float32(zp)
    return np.clip(v, qmin, qmax).astype(np.int8)


def check(got, expected):
    assert got.dtype == torch.from_numpy(np.asarray(expected)).dtype
    np.testing.assert_array_equal(got.numpy(), expected)


def pool_out(size, k, s, p, d, ceil):
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil else span // s) + 1
    return out - 1 if ceil and (out - 1) * s >= size + p else out


# ---- quantize / dequantize -------------------------------------------------------------

finite32 = st.floats(width=32, allow_nan=False)
scales = st.sampled_from([1e-12, 1e-5, 0.013, 1.0, 7.5, 1e10]) | st.floats(1e-12, 1e10)


@given(st.lists(finite32, min_size=1, max_size=30), scales, zps, bounds)
@SETTINGS
def test_quantize_matches_numpy_float32(values, scale, zp, qbounds):
    scale = float(np.float32(scale))
    x = np.array(values, dtype=np.float32)
    got = ref.quantize(torch.from_numpy(x), scale, zp, *qbounds)
    check(got, np_quantize(x, scale, zp, *qbounds))


def test_quantize_extremes_and_ties():
    x = torch.tensor([-1e30, -float("inf"), 1e30, float("inf"), 0.0])
    assert ref.quantize(x, 0.1, 0, -128, 127).tolist() == [-128, -128, 127, 127, 0]
    assert ref.quantize(x, 1e-12, 127, -128, 127).tolist() == [-128, -128, 127, 127, 127]
    assert ref.quantize(torch.tensor([1e-3, -5.0]), 1e10, -128, -128, 127).tolist() == [-128, -128]
    ties = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5]) * 0.125
    assert ref.quantize(ties, 0.125, 0, -128, 127).tolist() == [0, 2, 2, 0, -2, -2]
    assert ref.quantize(ties, 0.125, 10, 0, 127).tolist() == [10, 12, 12, 10, 8, 8]
    assert ref.quantize(torch.tensor([float("nan")]), 0.5, -7, -128, 127).tolist() == [-7]


def test_quantize_divides_in_float32():
    """Pairs where x / s rounds differently in float32 than in float64."""
    x = torch.tensor([3.250000238418579, 7.949999809265137, 27.500001907348633])
    assert ref.quantize(x, 0.10000000149011612, 0, -128, 127).tolist() == [32, 80, 127]
    assert ref.quantize(x[2:], 0.3333333432674408, 0, -128, 127).tolist() == [82]
    assert ref.quantize(torch.tensor([0.8514999747276306]), 0.013000000268220901, 0,
                        -128, 127).tolist() == [66]


@given(seeds, scales, zps)
@SETTINGS
def test_dequantize_matches_numpy(seed, scale, zp):
    q = rand_i8(torch.Generator().manual_seed(seed), (17,))
    s = np.float32(scale)
    expected = (q.numpy().astype(np.int32) - zp).astype(np.float32) * s
    check(ref.dequantize(q, float(s), zp), expected)


@given(seeds, st.integers(0, 2))
@SETTINGS
def test_per_channel_quantize_roundtrip(seed, axis):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, 5, generator=g) * 10
    s = torch.rand(x.shape[axis], generator=g) * 0.1 + 1e-3
    shape = [1, 1, 1]
    shape[axis] = -1
    q = ref.quantize_per_channel(x, s, axis, -127, 127)
    check(q, np_quantize(x.numpy(), s.numpy().reshape(shape), 0, -127, 127))
    expected = q.numpy().astype(np.float32) * s.numpy().reshape(shape)
    check(ref.dequantize_per_channel(q, s, axis), expected)


@given(seeds, zps, zps, bounds, st.floats(1e-9, 100.0), fills)
@SETTINGS
def test_requantize(seed, in_zp, out_zp, qbounds, real, fill):
    q = rand_i8(torch.Generator().manual_seed(seed), (31,), fill)
    m, n = quantize_multiplier(real)
    acc = q.numpy().astype(np.int64) - in_zp
    check(ref.requantize(q, in_zp, m, n, out_zp, *qbounds), np_requant(acc, m, n, out_zp, *qbounds))


# ---- GEMM / conv / matmul --------------------------------------------------------------

@given(seeds, st.sampled_from([(5,), (2, 3), (1, 2, 2)]), st.integers(1, 40), st.integers(1, 9),
       zps, zps, bounds, fills, st.booleans(), st.booleans())
@SETTINGS
def test_qlinear(seed, lead, k, n, x_zp, out_zp, qbounds, fill, with_bias, spread):
    g = torch.Generator().manual_seed(seed)
    x, w = rand_i8(g, (*lead, k), fill), rand_i8(g, (n, k), fill)
    bias = torch.randint(-2**20, 2**20, (n,), dtype=torch.int32, generator=g) if with_bias else None
    m, sh = rand_multipliers(g, n, spread)
    acc = np.einsum("...k,nk->...n", x.numpy().astype(np.int64) - x_zp, w.numpy().astype(np.int64))
    acc = acc + (bias.numpy() if with_bias else 0)
    got = ref.qlinear(x, x_zp, w, bias, m, sh, out_zp, *qbounds)
    check(got, np_requant(acc, m.numpy(), sh.numpy(), out_zp, *qbounds))


def test_qlinear_real_size_is_exact_and_fast():
    g = torch.Generator().manual_seed(0)
    x, w = rand_i8(g, (128, 384)), rand_i8(g, (1536, 384))
    bias = torch.randint(-2**24, 2**24, (1536,), dtype=torch.int32, generator=g)
    m, sh = rand_multipliers(g, 1536, spread=True)
    start = time.perf_counter()
    got = ref.qlinear(x, -128, w, bias, m, sh, 3, -128, 127)
    elapsed = time.perf_counter() - start
    acc = (x.numpy().astype(np.int64) + 128) @ w.numpy().astype(np.int64).T + bias.numpy()
    check(got, np_requant(acc, m.numpy(), sh.numpy(), 3, -128, 127))
    assert elapsed < 1.0, f"qlinear took {elapsed:.3f}s"


def np_conv2d(x, w, stride, padding, dilation, groups):
    """Direct int64 convolution; x already shifted by its zero point."""
    (n, c, h, wd), (o, cg, kh, kw) = x.shape, w.shape
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    xp = np.zeros((n, c, h + 2 * padding[0], wd + 2 * padding[1]), dtype=np.int64)
    xp[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + wd] = x
    out, og = np.zeros((n, o, ho, wo), dtype=np.int64), o // groups
    for gi in range(groups):
        for i in range(kh):
            for j in range(kw):
                r0, c0 = i * dilation[0], j * dilation[1]
                patch = xp[:, gi * cg:(gi + 1) * cg, r0:r0 + stride[0] * (ho - 1) + 1:stride[0],
                           c0:c0 + stride[1] * (wo - 1) + 1:stride[1]]
                wij = w[gi * og:(gi + 1) * og, :, i, j]
                out[:, gi * og:(gi + 1) * og] += np.einsum("nchw,oc->nohw", patch, wij)
    return out


CONVS = [  # (x shape, w shape, stride, padding, dilation, groups)
    ((2, 3, 7, 6), (4, 3, 3, 3), [1, 1], [1, 1], [1, 1], 1),
    ((1, 4, 9, 9), (6, 4, 3, 3), [2, 2], [0, 0], [1, 1], 1),
    ((1, 2, 9, 8), (3, 2, 3, 2), [1, 2], [2, 1], [2, 3], 1),
    ((2, 4, 6, 6), (6, 2, 3, 3), [1, 1], [1, 1], [1, 1], 2),
    ((1, 5, 8, 7), (5, 1, 3, 3), [2, 2], [1, 1], [1, 1], 5),
    ((1, 3, 5, 5), (6, 1, 5, 5), [1], [2], [1], 3),
    ((1, 8, 4, 4), (16, 8, 1, 1), [1, 1], [0, 0], [1, 1], 1),
    ((1, 2, 10, 3), (2, 2, 3, 1), [3, 1], [1, 0], [1, 1], 1),
]


@pytest.mark.parametrize("config", CONVS)
@pytest.mark.parametrize("fill, x_zp, out_zp", [(None, 3, -2), (-128, 127, -128), (127, -128, 127)])
def test_qconv2d(config, fill, x_zp, out_zp):
    xs, ws, stride, padding, dilation, groups = config
    g = torch.Generator().manual_seed(len(xs) * 31 + groups)
    x, w = rand_i8(g, xs, fill), rand_i8(g, ws, fill)
    bias = torch.randint(-5000, 5000, (ws[0],), dtype=torch.int32, generator=g)
    m, sh = rand_multipliers(g, ws[0], spread=True)
    got = ref.qconv2d(x, x_zp, w, bias, m, sh, out_zp, -128, 127, stride, padding, dilation, groups)
    pair = [p * 2 if len(p) == 1 else p for p in (stride, padding, dilation)]
    acc = np_conv2d(x.numpy().astype(np.int64) - x_zp, w.numpy().astype(np.int64), *pair, groups)
    acc = acc + bias.numpy()[None, :, None, None]
    shape = (1, -1, 1, 1)
    m, sh = m.numpy().reshape(shape), sh.numpy().reshape(shape)
    check(got, np_requant(acc, m, sh, out_zp, -128, 127))


@pytest.mark.parametrize("a_shape, b_shape", [
    ((2, 3, 4, 5), (5, 6)), ((3, 4, 5), (2, 1, 5, 6)), ((5,), (5, 6)), ((4, 5), (5,)),
    ((2, 1, 4, 5), (3, 5, 7)), ((1, 64), (64, 1)),
])
@pytest.mark.parametrize("fill, a_zp, b_zp", [(None, 4, -9), (-128, 127, 127), (127, -128, -128)])
def test_qmatmul(a_shape, b_shape, fill, a_zp, b_zp):
    g = torch.Generator().manual_seed(7)
    a, b = rand_i8(g, a_shape, fill), rand_i8(g, b_shape, fill)
    m, n = quantize_multiplier(3e-5)
    got = ref.qmatmul(a, a_zp, b, b_zp, m, n, -5, -128, 127)
    acc = np.matmul(a.numpy().astype(np.int64) - a_zp, b.numpy().astype(np.int64) - b_zp)
    check(got, np_requant(acc, m, n, -5, -128, 127))


# ---- elementwise, pooling, reductions --------------------------------------------------

@given(seeds, st.sampled_from([((2, 3, 4), (3, 1)), ((4,), (2, 4)), ((1,), (3, 2)), ((5,), (5,))]),
       zps, zps, zps, st.sampled_from([(0.9, 1e-6), (0.3, 0.7), (2e-3, 1.5), (1.0, 1.0)]),
       bounds, fills)
@SETTINGS
def test_qadd(seed, shapes, a_zp, b_zp, out_zp, reals, qbounds, fill):
    g = torch.Generator().manual_seed(seed)
    a, b = rand_i8(g, shapes[0], fill), rand_i8(g, shapes[1])
    (ma, mb), n = shared_shift_multipliers(list(reals))
    acc = (a.numpy().astype(np.int64) - a_zp) * ma + (b.numpy().astype(np.int64) - b_zp) * mb
    got = ref.qadd(a, a_zp, ma, b, b_zp, mb, n, out_zp, *qbounds)
    check(got, np_requant(acc, 1, n, out_zp, *qbounds))


POOLS = [  # (x shape, kernel, stride, padding, dilation, ceil_mode)
    ((1, 2, 7, 7), [3, 3], [2, 2], [1, 1], [1, 1], False),
    ((1, 2, 7, 7), [3, 3], [2, 2], [1, 1], [1, 1], True),
    ((2, 1, 6, 9), [2, 3], [], [0, 1], [1, 1], True),
    ((1, 3, 8, 5), [2, 2], [3, 2], [1, 0], [1, 1], True),
    ((1, 1, 9, 9), [3, 3], [2, 2], [1, 1], [2, 2], True),
    ((1, 2, 5, 5), [5], [1], [0], [1], False),
]


def np_window_reduce(x, kernel, stride, padding, dilation, ceil, reduce):
    stride = stride or kernel
    k, s, p, d = ([v[0]] * 2 if len(v) == 1 else v for v in (kernel, stride, padding, dilation))
    ho, wo = (pool_out(x.shape[2 + i], k[i], s[i], p[i], d[i], ceil) for i in range(2))
    out = np.zeros(x.shape[:2] + (ho, wo), dtype=np.int64)
    for i in range(ho):
        for j in range(wo):
            rows = [r for r in range(i * s[0] - p[0], i * s[0] - p[0] + d[0] * k[0], d[0])
                    if 0 <= r < x.shape[2]]
            cols = [c for c in range(j * s[1] - p[1], j * s[1] - p[1] + d[1] * k[1], d[1])
                    if 0 <= c < x.shape[3]]
            out[:, :, i, j] = reduce(x[:, :, rows][:, :, :, cols], axis=(2, 3))
    return out


@pytest.mark.parametrize("xs, kernel, stride, padding, dilation, ceil_mode", POOLS)
@pytest.mark.parametrize("fill", [None, -128, 127])
def test_qmax_pool2d(xs, kernel, stride, padding, dilation, ceil_mode, fill):
    x = rand_i8(torch.Generator().manual_seed(1), xs, fill)
    got = ref.qmax_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
    check(got, np_window_reduce(x.numpy(), kernel, stride, padding, dilation, ceil_mode,
                                np.max).astype(np.int8))


@pytest.mark.parametrize("xs, kernel, stride, padding, dilation, ceil_mode",
                         [p for p in POOLS if p[4] in ([1, 1], [1])])
@pytest.mark.parametrize("fill, x_zp", [(None, 9), (-128, 127), (127, -128)])
def test_qavg_pool2d(xs, kernel, stride, padding, dilation, ceil_mode, fill, x_zp):
    x = rand_i8(torch.Generator().manual_seed(2), xs, fill)
    m, n = quantize_multiplier(1 / 9)
    got = ref.qavg_pool2d(x, x_zp, kernel, stride, padding, ceil_mode, m, n, 4, -128, 127)
    acc = np_window_reduce(x.numpy().astype(np.int64) - x_zp, kernel, stride, padding, dilation,
                           ceil_mode, np.sum)
    check(got, np_requant(acc, m, n, 4, -128, 127))


@given(seeds, st.sampled_from([[2, 3], [-1], [], [0, 2], [1]]), st.booleans(), zps, fills)
@SETTINGS
def test_qmean(seed, dims, keepdim, x_zp, fill):
    x = rand_i8(torch.Generator().manual_seed(seed), (2, 3, 4, 5), fill)
    m, n = quantize_multiplier(1 / 20)
    axes = tuple(dims) if dims else None
    acc = (x.numpy().astype(np.int64) - x_zp).sum(axis=axes, keepdims=keepdim)
    got = ref.qmean(x, x_zp, dims, keepdim, m, n, -1, -128, 127)
    check(got, np_requant(acc, m, n, -1, -128, 127))


def test_qcat_and_qclamp():
    g = torch.Generator().manual_seed(3)
    parts = [rand_i8(g, (2, k, 3)) for k in (1, 4, 2)]
    check(ref.qcat(parts, 1), np.concatenate([p.numpy() for p in parts], axis=1))
    x = rand_i8(g, (50,))
    check(ref.qclamp(x, -3, 127), np.clip(x.numpy(), -3, 127))
    check(ref.qclamp(x, -128, 127), x.numpy())


# ---- dynamic ---------------------------------------------------------------------------

def np_qlinear_dynamic(x, w, w_scale, bias):
    f32 = np.float32
    lo = np.minimum(x.min(axis=-1, keepdims=True), f32(0))
    hi = np.maximum(x.max(axis=-1, keepdims=True), f32(0))
    s = (hi - lo) / f32(255)
    s = np.where(s == 0, f32(1), s).astype(f32)
    zp = np.clip(np.round(f32(-128) - lo / s), -128, 127).astype(f32)
    q = np.clip(np.round(x / s) + zp, -128, 127)
    acc = np.einsum("...k,nk->...n", (q - zp).astype(np.int64), w.astype(np.int64))
    y = acc.astype(f32) * (s * w_scale).astype(f32)
    return y if bias is None else y + bias


@given(seeds, st.sampled_from([(3,), (2, 2)]), st.integers(1, 24), st.integers(1, 6),
       st.booleans(), st.sampled_from(["randn", "zeros", "positive", "negative", "wide"]))
@SETTINGS
def test_qlinear_dynamic(seed, lead, k, n, with_bias, kind):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, k, generator=g)
    x = {"randn": x, "zeros": x * 0, "positive": x.abs() + 0.5, "negative": -x.abs() - 0.5,
         "wide": x * 1e4}[kind]
    w = rand_i8(g, (n, k)).clamp(-127, 127)
    w_scale, bias = torch.rand(n, generator=g) * 0.01 + 1e-4, torch.randn(n, generator=g)
    bias = bias if with_bias else None
    got = ref.qlinear_dynamic(x, w, w_scale, bias)
    np_bias = None if bias is None else bias.numpy()
    check(got, np_qlinear_dynamic(x.numpy(), w.numpy(), w_scale.numpy(), np_bias))
    q, s, zp = ref.quantize_per_token(x)
    assert q.dtype == torch.int8 and s.shape == zp.shape == (*lead, 1) and zp.dtype == torch.int32


# ---- torch ops and fake shapes ---------------------------------------------------------

def op_samples():
    g = torch.Generator().manual_seed(11)
    i8 = lambda *shape: rand_i8(g, shape)  # noqa: E731
    mq, nq = rand_multipliers(g, 6)
    m, n = quantize_multiplier(0.01)
    return {
        "quantize": (torch.randn(2, 5), 0.02, 3, -128, 127),
        "dequantize": (i8(4, 3), 0.5, -2),
        "quantize_per_channel": (torch.randn(6, 3), torch.rand(6) + 0.01, 0, -127, 127),
        "dequantize_per_channel": (i8(3, 6), torch.rand(6) + 0.01, 1),
        "requantize": (i8(3, 3), 4, m, n, -1, -128, 127),
        "qlinear": (i8(2, 3, 8), 1, i8(6, 8), None, mq, nq, 0, -128, 127),
        "qconv2d": (i8(1, 4, 9, 7), 2, i8(6, 2, 3, 3), torch.zeros(6, dtype=torch.int32), mq, nq,
                    0, 0, 127, [2, 1], [1, 0], [1, 2], 2),
        "qmatmul": (i8(2, 1, 3, 4), 0, i8(3, 4, 5), 1, m, n, 0, -128, 127),
        "qadd": (i8(2, 3), 1, m, i8(3), -1, m // 2, n, 0, -128, 127),
        "qmax_pool2d": (i8(1, 2, 7, 6), [3, 3], [2, 2], [1, 1], [1, 1], True),
        "qavg_pool2d": (i8(1, 2, 7, 6), 3, [3, 2], [], [1, 0], True, m, n, 0, -128, 127),
        "qmean": (i8(2, 3, 4), 0, [-1, 1], False, m, n, 0, -128, 127),
        "qcat": ([i8(2, 3), i8(1, 3)], 0),
        "qclamp": (i8(9), 0, 127),
        "qlinear_dynamic": (torch.randn(4, 8), i8(5, 8), torch.rand(5), torch.randn(5)),
    }


@pytest.mark.parametrize("name", qcompile.ops.OP_NAMES)
def test_torch_op_matches_reference_and_fake_shapes(name):
    args = op_samples()[name]
    expected = getattr(ref, name)(*args)
    got = getattr(torch.ops.qcompile, name)(*args)
    assert got.dtype == expected.dtype and torch.equal(got, expected)
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else
                     [mode.from_tensor(t) for t in a] if isinstance(a, list) and a and
                     isinstance(a[0], torch.Tensor) else a for a in args]
        fake = getattr(torch.ops.qcompile, name)(*fake_args)
    assert fake.shape == expected.shape and fake.dtype == expected.dtype


@pytest.mark.parametrize("call", [
    lambda: ref.quantize(torch.zeros(2, dtype=torch.int8), 1.0, 0, -128, 127),
    lambda: ref.quantize(torch.zeros(2), 0.0, 0, -128, 127),
    lambda: ref.quantize(torch.zeros(2), 1.0, 0, 5, 4),
    lambda: ref.dequantize(torch.zeros(2, dtype=torch.int32), 1.0, 0),
    lambda: ref.requantize(torch.zeros(2, dtype=torch.int8), 0, 2**31, 3, 0, -128, 127),
    lambda: ref.requantize(torch.zeros(2, dtype=torch.int8), 0, 2**30, 0, 0, -128, 127),
    lambda: ref.qlinear(torch.zeros(2, 3, dtype=torch.int8), 0, torch.zeros(4, 5, dtype=torch.int8),
                        None, *quantize_multipliers(torch.ones(4)), 0, -128, 127),
    lambda: ref.qlinear(torch.zeros(2, 3, dtype=torch.int8), 0, torch.zeros(4, 3, dtype=torch.int8),
                        None, *quantize_multipliers(torch.ones(3)), 0, -128, 127),
    lambda: ref.qconv2d(torch.zeros(1, 3, 4, 4, dtype=torch.int8), 0,
                        torch.zeros(4, 2, 1, 1, dtype=torch.int8), None,
                        *quantize_multipliers(torch.ones(4)), 0, -128, 127, [1], [0], [1], 1),
    lambda: ref.qcat([], 0),
    lambda: ref.qlinear_dynamic(torch.zeros(2, 3), torch.zeros(4, 3, dtype=torch.int8),
                                torch.ones(3), None),
])
def test_invalid_arguments_raise_value_error(call):
    with pytest.raises(ValueError):
        call()
