"""Clipping range that minimises the expected int8 quantization MSE over a histogram.

Values are taken as uniform inside each bin. The error of a bin is integrated exactly:
rounding error on the part inside the grid, clipping error on the parts outside it.
"""
from __future__ import annotations

import numpy as np

from qcompile.observers.histogram import StreamingHistogram

QMIN, QMAX = -128, 127


def _cube(values: np.ndarray) -> np.ndarray:
    return values * values * values


class BinnedMass:
    """Occupied histogram bins with suffix/prefix moments for O(1) clipping errors."""

    def __init__(self, hist: StreamingHistogram):
        occupied = np.nonzero(hist.counts)[0]
        self.width = hist.width
        self.left = hist.edges()[:-1][occupied]
        self.right = self.left + self.width
        self.counts = hist.counts[occupied].astype(np.float64)
        self.density = self.counts / self.width
        middle = (self.left + self.right) / 2
        second = (self.left * self.left + self.left * self.right + self.right * self.right) / 3
        moments = np.stack([self.counts, self.counts * middle, self.counts * second])
        zero = np.zeros((3, 1))
        self.prefix = np.concatenate([zero, np.cumsum(moments, axis=1)], axis=1)

    def _moment_error(self, start: np.ndarray, stop: np.ndarray, edge: np.ndarray):
        """Sum over whole bins [start, stop) of the squared distance of their mass to `edge`."""
        n, m1, m2 = (self.prefix[:, stop] - self.prefix[:, start])
        return m2 - 2 * edge * m1 + edge * edge * n

    def clipping_errors(self, lowest: np.ndarray, highest: np.ndarray) -> np.ndarray:
        """Squared error of clamping everything outside [lowest, highest], per candidate."""
        size = len(self.left)
        above = np.searchsorted(self.left, highest, side="left")
        below = np.searchsorted(self.right, lowest, side="right")
        error = (self._moment_error(above, np.full_like(above, size), highest)
                 + self._moment_error(np.zeros_like(below), below, lowest))
        cut_high = np.clip(above - 1, 0, size - 1)
        over = np.clip(self.right[cut_high] - np.maximum(self.left[cut_high], highest), 0, None)
        error += np.where(above > 0, self.density[cut_high] * _cube(over) / 3, 0.0)
        cut_low = np.clip(below, 0, size - 1)
        under = np.clip(np.minimum(self.right[cut_low], lowest) - self.left[cut_low], 0, None)
        return error + np.where(below < size, self.density[cut_low] * _cube(under) / 3, 0.0)

    def rounding_errors(self, scale, lowest, highest) -> np.ndarray:
        """Squared rounding error of the mass inside [lowest, highest], per candidate.

        Uses the integral of (t - round(t))**2, which is n / 12 + (v**3 + 1/8) / 3 at
        t = n + v, n = round(t)."""
        scale, lowest, highest = (v[:, None] for v in (scale, lowest, highest))
        start = np.clip(self.left, lowest, highest) / scale
        stop = np.clip(self.right, lowest, highest) / scale
        start_whole = np.floor(start + 0.5)
        stop_whole = np.floor(stop + 0.5)
        integral = ((stop_whole - start_whole) / 12
                    + (_cube(stop - stop_whole) - _cube(start - start_whole)) / 3)
        return (integral @ self.density) * _cube(scale[:, 0])

    def errors(self, scale, lowest, highest) -> np.ndarray:
        """Total squared error of each candidate grid."""
        scale, lowest, highest = (np.asarray(v, dtype=np.float64) for v in (scale, lowest, highest))
        return self.rounding_errors(scale, lowest, highest) + self.clipping_errors(lowest, highest)


def asymmetric_grid(lo: np.ndarray, hi: np.ndarray):
    """(scale, lowest, highest) representable values of the int8 grid with zero point."""
    scale = (hi - lo) / (QMAX - QMIN)
    zero_point = np.clip(np.round(QMIN - lo / scale), QMIN, QMAX)
    return scale, (QMIN - zero_point) * scale, (QMAX - zero_point) * scale


def symmetric_grid(bound: np.ndarray):
    """(scale, lowest, highest) of the symmetric grid: scale bound / 127, zero point 0."""
    scale = bound / QMAX
    return scale, QMIN * scale, QMAX * scale


def _best_fraction(error_of, candidates: int) -> tuple[float, float]:
    """Search f in (0, 1]: a uniform grid, then a finer one around its best point."""
    coarse = np.arange(1, candidates + 1, dtype=np.float64) / candidates
    errors = error_of(coarse)
    best = int(np.argmin(errors))
    step = 1.0 / candidates
    fine = np.linspace(max(coarse[best] - step, step / candidates),
                       min(coarse[best] + step, 1.0), max(candidates // 4, 9))
    fine_errors = error_of(fine)
    fine_best = int(np.argmin(fine_errors))
    if fine_errors[fine_best] < errors[best]:
        return float(fine[fine_best]), float(fine_errors[fine_best])
    return float(coarse[best]), float(errors[best])


def _symmetric_search(bins: BinnedMass, bound: float, candidates: int):
    fraction, error = _best_fraction(
        lambda f: bins.errors(*symmetric_grid(f * bound)), candidates)
    return -fraction * bound, fraction * bound, error


def _asymmetric_search(bins: BinnedMass, lo0: float, hi0: float, candidates: int):
    fraction, error = _best_fraction(
        lambda f: bins.errors(*asymmetric_grid(f * lo0, f * hi0)), candidates)
    lo, hi = fraction * lo0, fraction * hi0
    if hi0 > 0:
        g, error_hi = _best_fraction(
            lambda f: bins.errors(*asymmetric_grid(np.full_like(f, lo), f * hi0)),
            candidates)
        if error_hi < error:
            hi, error = g * hi0, error_hi
    if lo0 < 0:
        g, error_lo = _best_fraction(
            lambda f: bins.errors(*asymmetric_grid(f * lo0, np.full_like(f, hi))),
            candidates)
        if error_lo < error:
            lo, error = g * lo0, error_lo
    return lo, hi, error


def mse_range(hist: StreamingHistogram, candidates: int, symmetric: bool):
    """(lo, hi, expected MSE per element) of the best int8 clipping range found."""
    bound = max(abs(hist.min), abs(hist.max))
    if hist.min == hist.max or hist.total == 0:
        return (-bound, bound, 0.0) if symmetric else (hist.min, hist.max, 0.0)
    bins = BinnedMass(hist)
    if symmetric:
        lo, hi, error = _symmetric_search(bins, bound, candidates)
        return lo, hi, error / hist.total
    lo0, hi0 = min(hist.min, 0.0), max(hist.max, 0.0)
    lo, hi, error = _asymmetric_search(bins, lo0, hi0, candidates)
    lo = min(max(lo, hist.min), hist.max)
    return lo, max(min(hi, hist.max), lo), error / hist.total
