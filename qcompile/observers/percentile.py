"""Percentiles read from a streaming histogram."""
from __future__ import annotations

import numpy as np

from qcompile.observers.histogram import StreamingHistogram


def value_at_rank(counts: np.ndarray, left_edge: float, width: float, rank: float) -> float:
    """The value below which `rank` of the counted mass lies, linear inside a bin."""
    if rank <= 0:
        return left_edge
    cumulative = np.cumsum(counts)
    index = int(np.searchsorted(cumulative, rank, side="left"))
    index = min(index, len(counts) - 1)
    below = float(cumulative[index - 1]) if index > 0 else 0.0
    inside = float(counts[index])
    fraction = (rank - below) / inside if inside > 0 else 1.0
    return left_edge + (index + min(max(fraction, 0.0), 1.0)) * width


def percentile_range(hist: StreamingHistogram, p: float) -> tuple[float, float]:
    """(value at (100 - p)%, value at p%), clamped to the observed [min, max]."""
    total = hist.total
    lo = value_at_rank(hist.counts, hist.origin, hist.width, total * (100.0 - p) / 100.0)
    hi = value_at_rank(hist.counts, hist.origin, hist.width, total * p / 100.0)
    lo = min(max(lo, hist.min), hist.max)
    hi = min(max(hi, hist.min), hist.max)
    return lo, max(lo, hi)


def abs_percentile(hist: StreamingHistogram, p: float) -> float:
    """The p-th percentile of |x|, within [min |x|, max |x|]."""
    folded = hist.folded()
    smallest, bound = hist.abs_extremes()
    if folded.size == 0:
        return bound
    value = value_at_rank(folded, 0.0, hist.width, int(folded.sum()) * p / 100.0)
    return min(max(value, smallest), bound)
