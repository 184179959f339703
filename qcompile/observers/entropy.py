"""TensorRT-style threshold selection: minimise KL(P || Q) over thresholds on the |x| histogram.

For a threshold of i bins, P is the histogram cut at i with the clipped mass added to its
last bin; Q merges the cut histogram (without the clipped mass) into `levels` chunks
(bin k in chunk k * levels // i) and spreads each chunk evenly over the bins where P is
non-zero. A last bin whose chunk is empty gets the floor count EMPTY_LEVEL in Q, as
smoothing does in the MXNet/TensorRT calibrators. All thresholds are scored at once from
prefix sums; ties go to the largest threshold.
"""
from __future__ import annotations

import numpy as np

from qcompile.observers.histogram import StreamingHistogram


EMPTY_LEVEL = 1e-4


def _xlogx(values: np.ndarray) -> np.ndarray:
    safe = np.where(values > 0, values, 1.0)
    return np.where(values > 0, values * np.log(safe), 0.0)


def kl_divergences(counts: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds in bins, KL divergence of each), thresholds = levels .. len(counts)."""
    counts = counts.astype(np.float64)
    total = counts.sum()
    cum = np.concatenate([[0.0], np.cumsum(counts)])
    cum_nonzero = np.concatenate([[0], np.cumsum(counts > 0)])
    cum_xlogx = np.concatenate([[0.0], np.cumsum(_xlogx(counts))])
    kept = np.arange(levels, len(counts) + 1)
    chunk = np.arange(levels + 1)
    starts = (chunk[None, :] * kept[:, None] + levels - 1) // levels
    chunk_mass = cum[starts[:, 1:]] - cum[starts[:, :-1]]
    chunk_nonzero = cum_nonzero[starts[:, 1:]] - cum_nonzero[starts[:, :-1]]
    last = counts[kept - 1]
    clipped = total - cum[kept]
    chunk_nonzero[:, -1] += (last == 0) & (clipped > 0)
    chunk_level = chunk_mass / np.maximum(chunk_nonzero, 1)
    chunk_term = (chunk_mass * np.log(np.where(chunk_mass > 0, chunk_level, 1.0))).sum(axis=1)
    last_level = np.where(chunk_mass[:, -1] > 0, chunk_level[:, -1], EMPTY_LEVEL)
    log_last_level = np.log(last_level)
    log_ratio = np.log(np.maximum(cum[kept], EMPTY_LEVEL)) - np.log(total)
    last_p = last + clipped
    divergence = (cum_xlogx[kept - 1] - (chunk_term - last * log_last_level)
                  + cum[kept - 1] * log_ratio
                  + _xlogx(last_p) - last_p * log_last_level + last_p * log_ratio) / total
    return kept, divergence


def entropy_threshold(hist: StreamingHistogram, levels: int) -> float:
    """Threshold T on |x| that minimises the KL divergence, within [min |x|, max |x|]."""
    smallest, bound = hist.abs_extremes()
    folded = hist.folded()
    if folded.size <= levels or smallest == bound:
        return bound
    kept, divergence = kl_divergences(folded, levels)
    best = len(divergence) - 1 - int(np.argmin(divergence[::-1]))
    return min(max(float(kept[best]) * hist.width, smallest), bound)
