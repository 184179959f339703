"""Observers that keep only extremes: running min/max, moving average, per channel."""
from __future__ import annotations

import torch

from qcompile.errors import CalibrationError
from qcompile.observers.base import Observer, finite_extremes, raise_non_finite, symmetric_range


class MinMaxObserver(Observer):
    """Running min and max of everything seen."""

    method = "minmax"

    def _observe(self, data: torch.Tensor) -> tuple[float, float]:
        return finite_extremes(data)

    def _choose_range(self) -> tuple[float, float]:
        if self.symmetric:
            return symmetric_range(self.min_val, self.max_val)
        return self.min_val, self.max_val


class MovingAverageObserver(Observer):
    """Moving average of per-batch min and max; the first batch initialises both."""

    method = "moving-average"

    def __init__(self, *, symmetric: bool = False, **knobs):
        super().__init__(symmetric=symmetric, **knobs)
        self.average_min = 0.0
        self.average_max = 0.0

    def _observe(self, data: torch.Tensor) -> tuple[float, float]:
        lo, hi = finite_extremes(data)
        if self.batches_seen == 0:
            self.average_min, self.average_max = lo, hi
        else:
            rate = float(self.knobs["averaging_constant"])
            self.average_min += rate * (lo - self.average_min)
            self.average_max += rate * (hi - self.average_max)
        return lo, hi

    def _choose_range(self) -> tuple[float, float]:
        if self.symmetric:
            return symmetric_range(self.average_min, self.average_max)
        return self.average_min, self.average_max


class PerChannelMinMaxObserver(Observer):
    """Running min/max per channel along `axis`; range() gives float32 tensors (lo, hi)."""

    method = "per-channel-minmax"

    def __init__(self, axis: int = 0, *, symmetric: bool = False):
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(f"axis must be an integer, got {axis!r}")
        super().__init__(symmetric=symmetric, axis=axis)
        self.axis = axis
        self.channel_min: torch.Tensor | None = None
        self.channel_max: torch.Tensor | None = None

    def _observe(self, data: torch.Tensor) -> tuple[float, float]:
        if data.dim() == 0:
            data = data.reshape(1)
        rows = data.movedim(self.axis, 0).reshape(data.shape[self.axis], -1)
        lo, hi = torch.aminmax(rows, dim=1)
        low, high = float(lo.min()), float(hi.max())
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise_non_finite(data)
        if self.channel_min is None:
            self.channel_min, self.channel_max = lo.cpu(), hi.cpu()
        elif self.channel_min.numel() != lo.numel():
            raise CalibrationError(f"per-channel observer saw {lo.numel()} channels on axis "
                                   f"{self.axis}, expected {self.channel_min.numel()}")
        else:
            self.channel_min = torch.minimum(self.channel_min, lo.cpu())
            self.channel_max = torch.maximum(self.channel_max, hi.cpu())
        return low, high

    def _choose_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.symmetric:
            bound = torch.maximum(self.channel_min.abs(), self.channel_max.abs())
            return -bound, bound
        return self.channel_min.clone(), self.channel_max.clone()

    def _range_for_report(self) -> list:
        lo, hi = self.range()
        return [float(lo.min()), float(hi.max())]

    def describe(self) -> dict:
        """As Observer.describe; 'range' is the envelope of the per-channel ranges."""
        info = super().describe()
        info["per_channel"] = True
        info["axis"] = self.axis
        info["channels"] = None if self.channel_min is None else self.channel_min.numel()
        return info
