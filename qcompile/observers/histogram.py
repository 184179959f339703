"""Streaming fixed-size histogram on a dyadic grid that grows without re-binning error.

Bin g of the global grid is [g * w, (g + 1) * w) with w = 2**exponent. The histogram
holds `bins` consecutive global bins starting at `first`. Growing doubles the width k
times, so old bin g falls entirely in new bin g >> k: counts move, nothing is re-estimated.
Binning a value is floor(x * 2**-exponent), exact in float64 for float32 inputs.
"""
from __future__ import annotations

import math

import numpy as np
import torch

_ZERO_EXPONENT = -160


def _floor_index(value: float, exponent: int) -> int:
    return math.floor(math.ldexp(value, -exponent))


def _initial_exponent(lo: float, hi: float, bins: int) -> int:
    """Smallest power-of-two width whose grid can hold [lo, hi] in `bins` bins (roughly)."""
    span = hi - lo
    if span > 0:
        return math.frexp(span / (bins - 1))[1]
    magnitude = max(abs(lo), abs(hi))
    if magnitude == 0:
        return _ZERO_EXPONENT
    return math.frexp(magnitude)[1] - 12


class StreamingHistogram:
    """Histogram of every value added, with `bins` bins of width 2**exponent."""

    def __init__(self, bins: int = 2048):
        if bins < 2:
            raise ValueError(f"a histogram needs at least 2 bins, got {bins}")
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.int64)
        self.exponent: int | None = None
        self.first = 0
        self.min = math.inf
        self.max = -math.inf

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def width(self) -> float:
        return math.ldexp(1.0, self.exponent)

    @property
    def origin(self) -> float:
        return self.first * self.width

    def edges(self) -> np.ndarray:
        """The bins + 1 bin edges, float64."""
        return (self.first + np.arange(self.bins + 1, dtype=np.float64)) * self.width

    def add(self, data: torch.Tensor, lo: float | None = None, hi: float | None = None) -> None:
        """Count the finite values of `data`; `lo`/`hi` are its min/max when already known."""
        flat = data.detach().reshape(-1)
        if flat.numel() == 0:
            return
        if lo is None or hi is None:
            lo, hi = (float(v) for v in torch.aminmax(flat))
        self._cover(min(self.min, lo), max(self.max, hi))
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        scaled = flat.to(torch.float64).mul_(math.ldexp(1.0, -self.exponent))
        index = scaled.floor_().to(torch.int64).sub_(self.first).clamp_(0, self.bins - 1)
        self.counts += torch.bincount(index, minlength=self.bins).cpu().numpy()

    def _fits(self, lo: float, hi: float, exponent: int, first: int) -> bool:
        return (_floor_index(lo, exponent) >= first
                and _floor_index(hi, exponent) - first < self.bins)

    def _cover(self, lo: float, hi: float) -> None:
        """Grow (width x 2**k, origin on the new grid) until [lo, hi] fits."""
        if self.exponent is not None and self._fits(lo, hi, self.exponent, self.first):
            return
        exponent = _initial_exponent(lo, hi, self.bins)
        if self.exponent is not None:
            exponent = max(exponent, self.exponent)
        while _floor_index(hi, exponent) - _floor_index(lo, exponent) >= self.bins:
            exponent += 1
        first = _floor_index(lo, exponent)
        if self.exponent is not None:
            self._move_counts(exponent, first)
        self.exponent, self.first = exponent, first

    def _move_counts(self, exponent: int, first: int) -> None:
        """Old bin g goes to new bin g >> k, whole: mass and membership are kept."""
        shift = min(exponent - self.exponent, 63)
        occupied = np.nonzero(self.counts)[0]
        old_global = self.first + occupied.astype(np.int64)
        new_local = np.right_shift(old_global, shift) - first
        moved = np.zeros(self.bins, dtype=np.int64)
        np.add.at(moved, new_local, self.counts[occupied])
        self.counts = moved

    def abs_extremes(self) -> tuple[float, float]:
        """(min |x|, max |x|) over everything added."""
        largest = max(abs(self.min), abs(self.max))
        if self.min <= 0.0 <= self.max:
            return 0.0, largest
        return min(abs(self.min), abs(self.max)), largest

    def folded(self) -> np.ndarray:
        """Counts of |x| on the same grid: abs bin j is [j * w, (j + 1) * w)."""
        global_index = self.first + np.arange(self.bins, dtype=np.int64)
        abs_index = np.where(global_index >= 0, global_index, -global_index - 1)
        occupied = self.counts > 0
        if not occupied.any():
            return np.zeros(0, dtype=np.int64)
        folded = np.zeros(int(abs_index[occupied].max()) + 1, dtype=np.int64)
        np.add.at(folded, abs_index[occupied], self.counts[occupied])
        return folded

    def state(self) -> dict:
        """Grid and extremes, for reports and tests."""
        return {"bins": self.bins, "exponent": self.exponent, "first": self.first,
                "width": self.width if self.exponent is not None else None,
                "min": self.min, "max": self.max, "total": self.total}
