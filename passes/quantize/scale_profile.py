"""Scale profiles of restricted accelerators (options pow2_scales, per_tensor_weights).

Fixed-function int8 engines often requantize by shifting only, so every scale must be a
power of two, and many take one weight scale per tensor. calibrate and insert-qdq call these
functions, so the constraint is met where the scales are chosen, not patched afterwards:

- an activation scale s becomes 2**ceil(log2 s) (never smaller, so the calibrated range
  still fits; at most one bit of resolution is lost) and its zero point is recomputed so the
  range's low end stays where it was;
- weight scales become their maximum (per tensor) and/or 2**ceil(log2 s) per entry.

With power-of-two scales every requantize ratio s_x * s_w / s_y is a power of two, so its
integer multiplier is exactly 2**30 and requantization is a rounding shift.

The stated error: a weight whose quantization SQNR under the profile falls below
`WEIGHT_SQNR_FLOOR_DB` in its worst output channel gets a warning naming the layer and both SQNRs (with and without the
profile); the user can then keep that layer float.
"""
from __future__ import annotations

import math

import torch

from qcompile.quant_math import QMAX, QMIN, WEIGHT_QMAX, WEIGHT_QMIN

WEIGHT_SQNR_FLOOR_DB = 30.0


def pow2_ceil(scale: float) -> float:
    """The smallest power of two >= scale (scale > 0)."""
    return math.ldexp(1.0, math.ceil(math.log2(scale)))


def constrain_activation(scale: float, zero_point: int, options, qmin: int = QMIN,
                         qmax: int = QMAX) -> tuple[float, int]:
    """(scale, zero_point) under the profile of `options` (unchanged without pow2_scales)."""
    if not options.pow2_scales:
        return scale, zero_point
    low = (qmin - zero_point) * scale
    new_scale = pow2_ceil(scale)
    new_zero = 0 if zero_point == 0 else round(qmin - low / new_scale)
    return new_scale, int(min(max(new_zero, qmin), qmax))


def constrain_weight_scales(scales: torch.Tensor, options) -> torch.Tensor:
    """Per-channel float32 weight scales under the profile of `options`."""
    if options.per_tensor_weights:
        scales = torch.full_like(scales, float(scales.max()))
    if options.pow2_scales:
        scales = torch.tensor([pow2_ceil(float(s)) for s in scales.tolist()],
                              dtype=torch.float32).reshape(scales.shape)
    return scales


def constrained(options) -> bool:
    return bool(options.pow2_scales or options.per_tensor_weights)


def weight_sqnr_db(weight: torch.Tensor, scales: torch.Tensor) -> float:
    """The worst output channel's SQNR in dB of `weight` quantized symmetric int8 with
    per-output-channel `scales` (a per-tensor scale hurts the small channels, which a
    whole-tensor SQNR would hide behind the large ones)."""
    s = scales.reshape(-1, *([1] * (weight.dim() - 1)))
    error = weight - torch.clamp(torch.round(weight / s), WEIGHT_QMIN, WEIGHT_QMAX) * s
    signal = weight.pow(2).flatten(1).sum(1).double()
    noise = error.pow(2).flatten(1).sum(1).double()
    ratios = [sig / err for sig, err in zip(signal.tolist(), noise.tolist())
              if err > 0.0 and sig > 0.0]
    if not ratios:
        return math.inf
    return 10.0 * math.log10(min(ratios))


def profile_warning(layer: str, weight: torch.Tensor, free: torch.Tensor,
                    bound: torch.Tensor) -> str | None:
    """A warning text when the profile costs `layer`'s weights more than the stated floor."""
    with_profile = weight_sqnr_db(weight, bound)
    if with_profile >= WEIGHT_SQNR_FLOOR_DB:
        return None
    return (f"layer {layer}: under the scale profile its weakest output channel reaches "
            f"{with_profile:.1f} dB SQNR "
            f"(without it {weight_sqnr_db(weight, free):.1f} dB; floor "
            f"{WEIGHT_SQNR_FLOOR_DB:.0f} dB); keep it float with keep_float=['{layer}'] if "
            "accuracy suffers")
