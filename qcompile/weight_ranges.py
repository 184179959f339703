"""Per-channel weight scales: plain max-abs, or the clipping that minimises rounding error."""
from __future__ import annotations

import torch

from .quant_math import MIN_SCALE, WEIGHT_QMAX, WEIGHT_QMIN, weight_scales_per_channel

WEIGHT_METHODS = ("minmax", "mse")


def _rows(w: torch.Tensor) -> torch.Tensor:
    return w.detach().to(torch.float32).reshape(w.shape[0], -1)


def mse_weight_scales(w: torch.Tensor, ratios: int = 16, lowest: float = 0.7) -> torch.Tensor:
    """Per output channel, the scale r * amax / 127 (r in [lowest, 1]) with the least squared
    rounding-plus-clipping error. Channels where max-abs is best keep it exactly."""
    rows = _rows(w)
    base = weight_scales_per_channel(w, axis=0)
    best_scale, best_err = base.clone(), torch.full_like(base, float("inf"))
    for r in torch.linspace(lowest, 1.0, ratios).tolist():
        scale = (base * r).clamp(min=MIN_SCALE)
        q = torch.clamp(torch.round(rows / scale[:, None]), WEIGHT_QMIN, WEIGHT_QMAX)
        err = (q * scale[:, None] - rows).pow(2).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
    return best_scale


def weight_scales(w: torch.Tensor, method: str = "mse") -> torch.Tensor:
    """float32 per-output-channel symmetric scales for an int8 weight (axis 0)."""
    if method == "minmax":
        return weight_scales_per_channel(w, axis=0)
    if method == "mse":
        return mse_weight_scales(w)
    raise ValueError(f"unknown weight range method '{method}'; valid: {', '.join(WEIGHT_METHODS)}")
