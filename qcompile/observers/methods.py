"""Histogram-based observers (percentile, mse, entropy) and the make_observer factory."""
from __future__ import annotations

import torch

from qcompile.observers.base import Observer, finite_extremes
from qcompile.observers.entropy import entropy_threshold
from qcompile.observers.histogram import StreamingHistogram
from qcompile.observers.knobs import canonical_method
from qcompile.observers.minmax import MinMaxObserver, MovingAverageObserver
from qcompile.observers.mse import mse_range
from qcompile.observers.percentile import abs_percentile, percentile_range


class HistogramObserver(Observer):
    """Streams every batch into a StreamingHistogram of `bins` bins."""

    def __init__(self, *, symmetric: bool = False, **knobs):
        super().__init__(symmetric=symmetric, **knobs)
        self.histogram = StreamingHistogram(int(self.knobs["bins"]))

    def _observe(self, data: torch.Tensor) -> tuple[float, float]:
        lo, hi = finite_extremes(data)
        self.histogram.add(data, lo, hi)
        return lo, hi

    def describe(self) -> dict:
        info = super().describe()
        info["histogram"] = self.histogram.state() if self.batches_seen else None
        return info


class PercentileObserver(HistogramObserver):
    """Clips at the p-th percentile at the top and the (100 - p)-th at the bottom."""

    method = "percentile"

    def _choose_range(self) -> tuple[float, float]:
        p = float(self.knobs["p"])
        if self.symmetric:
            bound = abs_percentile(self.histogram, p)
            return -bound, bound
        return percentile_range(self.histogram, p)


class MSEObserver(HistogramObserver):
    """Range minimising the expected int8 quantization MSE (rounding + clipping)."""

    method = "mse"

    def _search(self) -> tuple[float, float, float]:
        """(lo, hi, expected MSE), remembered until the next batch."""
        cached = getattr(self, "_searched", None)
        if cached is None or cached[0] != self.batches_seen:
            found = mse_range(self.histogram, int(self.knobs["candidates"]), self.symmetric)
            self._searched = cached = (self.batches_seen, found)
        return cached[1]

    def _choose_range(self) -> tuple[float, float]:
        lo, hi, _ = self._search()
        return lo, hi

    def describe(self) -> dict:
        info = super().describe()
        if self.batches_seen:
            info["expected_mse"] = self._search()[2]
        return info


class EntropyObserver(HistogramObserver):
    """KL-divergence threshold T on |x|; asymmetric ranges clip to [max(min, -T), min(max, T)]."""

    method = "entropy"

    def _choose_range(self) -> tuple[float, float]:
        threshold = entropy_threshold(self.histogram, int(self.knobs["bins_target"]))
        if self.symmetric:
            return -threshold, threshold
        hist = self.histogram
        return max(hist.min, -threshold), min(hist.max, threshold)


OBSERVER_CLASSES: dict[str, type[Observer]] = {
    cls.method: cls for cls in (MinMaxObserver, MovingAverageObserver, PercentileObserver,
                                MSEObserver, EntropyObserver)
}


def make_observer(method: str, *, symmetric: bool = False, **knobs) -> Observer:
    """A fresh observer for `method`; ValueError names the valid methods or knobs."""
    return OBSERVER_CLASSES[canonical_method(method)](symmetric=symmetric, **knobs)
