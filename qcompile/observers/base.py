"""Observer base class: streaming statistics of the tensors seen during calibration."""
from __future__ import annotations

import math

import torch

from qcompile.errors import CalibrationError
from qcompile.observers.knobs import OBSERVER_METHODS, resolve_knobs


def finite_extremes(data: torch.Tensor) -> tuple[float, float]:
    """(min, max) of a float32 tensor; CalibrationError if it holds NaN or Inf."""
    lo, hi = (float(v) for v in torch.aminmax(data))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise_non_finite(data)
    return lo, hi


def raise_non_finite(data: torch.Tensor) -> None:
    """Raise CalibrationError counting the NaN and Inf entries of `data`."""
    nans = int(torch.isnan(data).sum())
    infs = int(torch.isinf(data).sum())
    raise CalibrationError(f"observed non-finite values ({nans} NaN, {infs} Inf)")


def symmetric_range(lo: float, hi: float) -> tuple[float, float]:
    """(-a, a) with a = max(|lo|, |hi|)."""
    bound = max(abs(lo), abs(hi))
    return -bound, bound


class Observer(torch.nn.Module):
    """forward(x) records statistics of x (detached, float32) and returns x unchanged."""

    method: str = "observer"

    def __init__(self, *, symmetric: bool = False, **knobs):
        super().__init__()
        if not isinstance(symmetric, bool):
            raise ValueError(f"symmetric must be True or False, got {symmetric!r}")
        self.symmetric = symmetric
        registered = self.method in OBSERVER_METHODS
        self.knobs = resolve_knobs(self.method, knobs) if registered else dict(knobs)
        self.batches_seen = 0
        self.min_val = math.inf
        self.max_val = -math.inf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        data = x.detach().to(torch.float32)
        if data.numel() == 0:
            return x
        lo, hi = self._observe(data)
        self.min_val = min(self.min_val, lo)
        self.max_val = max(self.max_val, hi)
        self.batches_seen += 1
        return x

    def _observe(self, data: torch.Tensor) -> tuple[float, float]:
        """Record one non-empty float32 batch; return its finite (min, max)."""
        raise NotImplementedError

    def _choose_range(self) -> tuple:
        """The clipping range from the recorded statistics (at least one batch seen)."""
        raise NotImplementedError

    def range(self) -> tuple:
        """Chosen clipping range (lo, hi)."""
        if self.batches_seen == 0:
            raise CalibrationError(
                f"observer '{self.method}' saw no calibration batch; cannot choose a range")
        return self._choose_range()

    def describe(self) -> dict:
        """Method, knobs, observed min/max and chosen range, for reports."""
        seen = self.batches_seen > 0
        chosen = self._range_for_report() if seen else None
        return {
            "method": self.method,
            "symmetric": self.symmetric,
            "knobs": dict(self.knobs),
            "batches_seen": self.batches_seen,
            "observed_min": self.min_val if seen else None,
            "observed_max": self.max_val if seen else None,
            "range": chosen,
        }

    def _range_for_report(self) -> list:
        return [float(v) for v in self.range()]

    def extra_repr(self) -> str:
        knobs = ", ".join(f"{k}={v}" for k, v in self.knobs.items())
        text = f"method={self.method!r}, symmetric={self.symmetric}"
        return text + (f", {knobs}" if knobs else "")
