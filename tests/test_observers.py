"""Streaming range observers: exact extremes, histogram growth, range selection, errors."""
import math
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qcompile.errors import CalibrationError
from qcompile.observers import (
    OBSERVER_METHODS,
    PerChannelMinMaxObserver,
    StreamingHistogram,
    make_observer,
)
from qcompile.observers.entropy import kl_divergences
from qcompile.observers.mse import BinnedMass, asymmetric_grid

ALL_METHODS = list(OBSERVER_METHODS)


def observe(method, batches, **kwargs):
    observer = make_observer(method, **kwargs)
    for batch in batches:
        assert observer(torch.as_tensor(batch)) is not None
    return observer


def int8_mse(x, lo, hi):
    """Actual MSE of asymmetric int8 fake quantization of x with range [lo, hi] (widened to 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255
    zero_point = round(-128 - lo / scale)
    q = np.clip(np.round(x / scale) + zero_point, -128, 127)
    return float(np.mean((x - (q - zero_point) * scale) ** 2))


def int8_mse_symmetric(x, lo, hi):
    scale = max(abs(lo), abs(hi)) / 127
    return float(np.mean((x - np.clip(np.round(x / scale), -128, 127) * scale) ** 2))


def gaussian_batches(seed=0, count=6, size=40_000, grow=True):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(size) * ((1.5 ** i) if grow else 1)).astype(np.float32)
            for i in range(count)]


def heavy_tailed(seed=0):
    rng = np.random.default_rng(seed)
    batches = [rng.standard_normal(50_000).astype(np.float32) for _ in range(4)]
    batches[1][:2] = [60.0, -45.0]
    return batches


def test_minmax_exact_and_forward_returns_input():
    batches = gaussian_batches()
    observer = make_observer("minmax")
    for batch in batches:
        x = torch.from_numpy(batch)
        assert observer(x) is x
    data = np.concatenate(batches)
    assert observer.range() == (float(data.min()), float(data.max()))
    assert observer.batches_seen == len(batches)
    sym = observe("minmax", batches, symmetric=True).range()
    assert sym == (-float(np.abs(data).max()), float(np.abs(data).max()))


def test_moving_average_formula():
    batches = gaussian_batches(count=5)
    observer = observe("moving-average", batches, averaging_constant=0.25)
    lo, hi = float(batches[0].min()), float(batches[0].max())
    for batch in batches[1:]:
        lo += 0.25 * (float(batch.min()) - lo)
        hi += 0.25 * (float(batch.max()) - hi)
    assert observer.range() == pytest.approx((lo, hi), rel=1e-12)
    assert make_observer("moving_average").method == "moving-average"


@pytest.mark.parametrize("p", [99.99, 99.0, 90.0])
def test_percentile_within_one_bin_of_numpy(p):
    batches = gaussian_batches(count=8, size=50_000)
    observer = observe("percentile", batches, p=p)
    data = np.concatenate(batches).astype(np.float64)
    width = observer.histogram.width
    lo, hi = observer.range()
    assert abs(hi - np.percentile(data, p)) <= width
    assert abs(lo - np.percentile(data, 100 - p)) <= width


def one_shot_counts(data, hist):
    index = np.floor(np.concatenate(data).astype(np.float64) * 2.0 ** -hist.exponent)
    return np.bincount(index.astype(np.int64) - hist.first, minlength=hist.bins)


def test_histogram_growth_keeps_mass_and_membership():
    rng = np.random.default_rng(3)
    batches = [np.zeros(100, np.float32), rng.uniform(0, 1e-3, 5000).astype(np.float32),
               rng.normal(0, 1, 5000).astype(np.float32),
               rng.uniform(100, 300, 5000).astype(np.float32),
               rng.uniform(-2000, -1000, 5000).astype(np.float32)]
    hist = StreamingHistogram(bins=256)
    exponents = []
    for batch in batches:
        hist.add(torch.from_numpy(batch))
        exponents.append(hist.exponent)
        assert hist.total == sum(len(b) for b in batches[:len(exponents)])
        expected = one_shot_counts(batches[:len(exponents)], hist)
        assert len(expected) == hist.bins
        np.testing.assert_array_equal(hist.counts, expected)
    assert exponents == sorted(exponents) and len(set(exponents)) >= 4
    assert hist.min == float(batches[-1].min()) and hist.max == float(batches[3].max())
    edges = hist.edges()
    assert edges[0] <= hist.min and hist.max < edges[-1]


def test_histogram_growth_moves_whole_bins():
    hist = StreamingHistogram(bins=16)
    hist.add(torch.tensor([0.0, 0.3, 0.55, 0.99, 1.0]))
    old_counts, old_first, old_exponent = hist.counts.copy(), hist.first, hist.exponent
    hist.add(torch.tensor([-7.0, 9.0]))
    shift = hist.exponent - old_exponent
    assert shift > 0
    moved = np.zeros(16, np.int64)
    for i in np.nonzero(old_counts)[0]:
        moved[((old_first + i) >> shift) - hist.first] += old_counts[i]
    moved[[int(math.floor(v * 2.0 ** -hist.exponent)) - hist.first for v in (-7.0, 9.0)]] += 1
    np.testing.assert_array_equal(hist.counts, moved)


def test_mse_clips_heavy_tails_and_beats_minmax():
    batches = heavy_tailed()
    data = np.concatenate(batches).astype(np.float64)
    minmax = observe("minmax", batches).range()
    lo, hi = observe("mse", batches).range()
    assert minmax[0] < lo < 0 < hi < minmax[1]
    assert hi - lo < 0.9 * (minmax[1] - minmax[0])
    assert int8_mse(data, lo, hi) < 0.9 * int8_mse(data, *minmax)
    slo, shi = observe("mse", batches, symmetric=True).range()
    assert slo == -shi and shi < max(-minmax[0], minmax[1])
    assert int8_mse_symmetric(data, slo, shi) < int8_mse_symmetric(data, *minmax)


def test_mse_estimate_matches_actual_quantization_error():
    batches = gaussian_batches(count=4, grow=False)
    observer = observe("mse", batches)
    data = np.concatenate(batches).astype(np.float64)
    bins = BinnedMass(observer.histogram)
    for lo, hi in [(-1.0, 1.5), (-3.0, 3.0), (-4.0, 4.2)]:
        estimate = bins.errors(*asymmetric_grid(np.array([lo]), np.array([hi])))[0] / len(data)
        assert estimate == pytest.approx(int8_mse(data, lo, hi), rel=0.05)
    assert observer.describe()["expected_mse"] > 0


def midpoint_errors(hist, lowest, highest, scale, samples=400):
    """Squared error of quantizing each bin's mass taken uniform, by the midpoint rule."""
    offsets = (np.arange(samples) + 0.5) / samples * hist.width
    occupied = np.nonzero(hist.counts)[0]
    points = (hist.edges()[occupied][:, None] + offsets[None, :]).reshape(-1)
    weights = np.repeat(hist.counts[occupied] / samples, samples)
    quantized = np.clip(np.round(points / scale) * scale, lowest, highest)
    return float(np.sum(weights * (points - quantized) ** 2))


@pytest.mark.parametrize("shift, bins, lo, hi", [
    (0.05, 64, 0.0, 0.5), (0.05, 64, -1.0, 3.0), (0.05, 2048, -0.3, 30.0),
    (2.0, 64, 0.0, 0.5), (-20.0, 64, -0.5, 0.0), (-20.0, 512, -40.0, 0.0)])
def test_mse_error_model_integrates_each_bin(shift, bins, lo, hi):
    rng = np.random.default_rng(7)
    hist = StreamingHistogram(bins=bins)
    hist.add(torch.from_numpy(rng.gamma(2.0, 1.0, 5000).astype(np.float32) + shift))
    scale, lowest, highest = asymmetric_grid(np.array([lo]), np.array([hi]))
    estimate = BinnedMass(hist).errors(scale, lowest, highest)[0]
    expected = midpoint_errors(hist, lowest[0], highest[0], scale[0])
    assert estimate == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_mse_clipping_error_when_every_bin_is_outside(sign):
    hist = StreamingHistogram(bins=16)
    hist.add(torch.tensor([2.0, 2.1, 2.3, 2.9, 3.4]) * sign)
    bins = BinnedMass(hist)
    edge = 0.5 * sign
    left = hist.edges()[:-1]
    exact = sum(c / hist.width * abs((a + hist.width - edge) ** 3 - (a - edge) ** 3) / 3
                for a, c in zip(left, hist.counts) if c)
    lowest, highest = (np.array([0.0]), np.array([edge])) if sign > 0 else \
        (np.array([edge]), np.array([0.0]))
    assert bins.clipping_errors(lowest, highest)[0] == pytest.approx(exact, rel=1e-12)


def test_entropy_clips_outliers():
    batches = heavy_tailed()
    lo, hi = observe("entropy", batches).range()
    assert -45.0 < lo < -1.0 and 1.0 < hi < 60.0
    assert hi < 20.0 and lo == -hi
    slo, shi = observe("entropy", batches, symmetric=True).range()
    assert slo == -shi and shi < 20.0


def naive_kl(counts, levels, kept, empty=1e-4):
    h = counts.astype(np.float64)
    p = h[:kept].copy()
    p[-1] += h[kept:].sum()
    chunk = (np.arange(kept) * levels) // kept
    q = np.zeros(kept)
    for c in range(levels):
        members = (chunk == c) & (p > 0)
        if members.any():
            q[members] = h[:kept][chunk == c].sum() / members.sum()
    q[(p > 0) & (q == 0)] = empty
    p, q = p / p.sum(), q / h[:kept].sum()
    nonzero = p > 0
    return float(np.sum(p[nonzero] * np.log(p[nonzero] / q[nonzero])))


def test_entropy_divergences_match_direct_computation():
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 50, size=300) * (rng.random(300) < 0.6)
    counts[-1] = 3
    counts[200:240] = 0
    kept, divergence = kl_divergences(counts, 16)
    expected = [naive_kl(counts, 16, int(i)) for i in kept]
    np.testing.assert_allclose(divergence, expected, rtol=1e-9, atol=1e-12)


def test_symmetric_and_asymmetric_differ_on_skewed_data():
    rng = np.random.default_rng(2)
    batches = [(np.maximum(rng.standard_normal(30_000), 0) * 3 - 0.2).astype(np.float32)
               for _ in range(3)]
    data = np.concatenate(batches).astype(np.float64)
    for method in ALL_METHODS:
        lo, hi = observe(method, batches).range()
        slo, shi = observe(method, batches, symmetric=True).range()
        assert slo == -shi and shi > 0
        assert lo >= -0.2 - 1e-6 and slo < -1.0
    lo, hi = observe("mse", batches).range()
    slo, shi = observe("mse", batches, symmetric=True).range()
    assert int8_mse(data, lo, hi) < int8_mse_symmetric(data, slo, shi)


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("bad, nans, infs", [(float("nan"), 1, 0), (float("inf"), 0, 1),
                                             (float("-inf"), 0, 1)])
def test_non_finite_values_raise(method, bad, nans, infs):
    observer = make_observer(method)
    observer(torch.randn(100))
    x = torch.randn(100)
    x[7] = bad
    with pytest.raises(CalibrationError, match=rf"\({nans} NaN, {infs} Inf\)"):
        observer(x)
    x[9] = float("nan")
    with pytest.raises(CalibrationError, match=rf"\({nans + 1} NaN, {infs} Inf\)"):
        observer(x)
    assert observer.batches_seen == 1


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("value", [0.0, 4097.0, -3.5])
def test_constant_data_gives_that_value(method, value):
    batches = [np.full(1000, value, np.float32)] * 2
    assert observe(method, batches).range() == (value, value)
    assert observe(method, batches, symmetric=True).range() == (-abs(value), abs(value))


@pytest.mark.parametrize("method", ALL_METHODS)
def test_observer_without_batches_raises(method):
    observer = make_observer(method)
    observer(torch.empty(0))
    with pytest.raises(CalibrationError, match="no calibration batch"):
        observer.range()
    info = observer.describe()
    assert info["method"] == method and info["range"] is None and info["batches_seen"] == 0
    with pytest.raises(CalibrationError):
        PerChannelMinMaxObserver().range()


def test_unknown_method_and_knobs_raise_value_error():
    with pytest.raises(ValueError, match="minmax, moving-average, percentile, mse, entropy"):
        make_observer("kl")
    with pytest.raises(ValueError, match=r"'q'.*valid knobs: p, bins"):
        make_observer("percentile", q=99)
    with pytest.raises(ValueError, match="valid knobs: none"):
        make_observer("minmax", p=99)
    for method, knobs in [("percentile", {"p": 101}), ("mse", {"candidates": 1.5}),
                          ("moving-average", {"averaging_constant": 0}),
                          ("entropy", {"bins_target": 4096}), ("mse", {"bins": True})]:
        with pytest.raises(ValueError, match="expected|smaller"):
            make_observer(method, **knobs)
    with pytest.raises(ValueError):
        make_observer("minmax", symmetric="yes")
    assert OBSERVER_METHODS["mse"]["candidates"] == 100
    assert make_observer("entropy", bins_target=64, bins=512).knobs == {
        "bins_target": 64, "bins": 512}


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("symmetric", [False, True])
def test_same_batches_give_bitwise_identical_ranges(method, symmetric):
    batches = heavy_tailed(seed=5)
    first = observe(method, batches, symmetric=symmetric).range()
    second = observe(method, [b.copy() for b in batches], symmetric=symmetric).range()
    assert [x.hex() for x in first] == [x.hex() for x in second]


def test_per_channel_minmax():
    rng = np.random.default_rng(4)
    weights = [rng.standard_normal((8, 5, 3)).astype(np.float32) for _ in range(3)]
    stacked = np.stack(weights)
    observer = PerChannelMinMaxObserver()
    for w in weights:
        observer(torch.from_numpy(w))
    lo, hi = observer.range()
    np.testing.assert_array_equal(lo.numpy(), stacked.min(axis=(0, 2, 3)))
    np.testing.assert_array_equal(hi.numpy(), stacked.max(axis=(0, 2, 3)))
    by_column = PerChannelMinMaxObserver(axis=1, symmetric=True)
    by_column(torch.from_numpy(weights[0]))
    slo, shi = by_column.range()
    np.testing.assert_array_equal(shi.numpy(), np.abs(weights[0]).max(axis=(0, 2)))
    assert torch.equal(slo, -shi)
    info = observer.describe()
    assert info["channels"] == 8 and info["range"] == [float(lo.min()), float(hi.max())]
    with pytest.raises(CalibrationError, match="channels"):
        observer(torch.zeros(4, 5, 3))
    bad = torch.zeros(8, 2)
    bad[3, 1] = float("nan")
    with pytest.raises(CalibrationError, match="1 NaN"):
        observer(bad)


@pytest.mark.parametrize("method", ["mse", "entropy", "percentile"])
def test_range_search_is_fast(method):
    rng = np.random.default_rng(6)
    observer = observe(method, [np.maximum(rng.standard_normal(50_000), 0).astype(np.float32)
                                * 5 - 0.3 for _ in range(2)])
    assert np.count_nonzero(observer.histogram.counts) > 1000
    start = time.perf_counter()
    observer.range()
    assert time.perf_counter() - start < 0.5


finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
batch_lists = st.lists(hnp.arrays(np.float32, st.integers(1, 40), elements=finite32),
                       min_size=1, max_size=5)


@settings(max_examples=60, deadline=None)
@given(batch_lists)
def test_ranges_stay_inside_observed_data(batches):
    data = np.concatenate(batches)
    lo, hi = observe("minmax", batches).range()
    assert lo <= data.min() and data.max() <= hi
    for method in ["percentile", "mse", "entropy"]:
        observer = observe(method, batches)
        lo, hi = observer.range()
        assert float(data.min()) <= lo <= hi <= float(data.max()), method
        assert observer.histogram.total == data.size
        np.testing.assert_array_equal(observer.histogram.counts,
                                      one_shot_counts(batches, observer.histogram))
        slo, shi = observe(method, batches, symmetric=True).range()
        assert slo == -shi and shi <= float(np.abs(data).max())
