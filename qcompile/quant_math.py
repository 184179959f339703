"""Quantization parameters and integer multipliers.

Scales are float32 values. A real-valued rescale factor `real` is represented as an
integer multiplier and a right shift, `real ~= M / 2**n`, so that requantization needs
no floating point: `y = (acc * M + 2**(n-1)) >> n`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

QMIN, QMAX = -128, 127
WEIGHT_QMIN, WEIGHT_QMAX = -127, 127

# Smallest scale handed out. Below it, 1/scale overflows float32 and x/scale turns
# every finite input into +-inf; a range that narrow is treated as this floor.
MIN_SCALE = float(np.float32(1e-30))

MAX_SHIFT = 62  # |acc| < 2**31 and M < 2**31 keep acc * M + 2**(n-1) inside int64


def fp32(x: float) -> float:
    """`x` rounded to the nearest float32 value (inf when out of float32 range)."""
    with np.errstate(over="ignore"):
        return float(np.float32(x))


def _check_finite(**values: float) -> None:
    for name, value in values.items():
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")


def _finish_scale(scale: float) -> float:
    if scale == 0.0:
        return 1.0
    scale = fp32(scale)
    if not math.isfinite(scale):
        raise ValueError(f"range too wide for a float32 scale ({scale})")
    return max(scale, MIN_SCALE)


def qparams_from_range(lo: float, hi: float, *, symmetric: bool,
                       qmin: int = QMIN, qmax: int = QMAX) -> tuple[float, int]:
    """(scale, zero_point) that map [lo, hi] (widened to include 0) onto [qmin, qmax].

    A zero range gives scale 1.0; a scale below MIN_SCALE is raised to MIN_SCALE.
    The zero point is computed from the float32-rounded scale.
    """
    lo, hi = float(lo), float(hi)
    _check_finite(lo=lo, hi=hi)
    if lo > hi:
        raise ValueError(f"empty range: lo={lo} > hi={hi}")
    if qmin >= qmax:
        raise ValueError(f"qmin ({qmin}) must be below qmax ({qmax})")
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        return _finish_scale(max(-lo, hi) / qmax), 0
    scale = _finish_scale((hi - lo) / (qmax - qmin))
    zero_point = round(qmin - lo / scale)
    return scale, int(min(max(zero_point, qmin), qmax))


def weight_scales_per_channel(w: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """float32 symmetric scales amax/127 per slice along `axis` (1.0 for all-zero slices).

    Scales below MIN_SCALE are raised to MIN_SCALE, as in qparams_from_range.
    """
    if w.dim() == 0:
        raise ValueError("weight must have at least one dimension")
    axis = axis % w.dim()
    reduce_dims = [d for d in range(w.dim()) if d != axis]
    amax = w.detach().to(torch.float32).abs()
    if reduce_dims:
        amax = amax.amax(dim=reduce_dims)
    if not torch.isfinite(amax).all():
        raise ValueError("weight contains non-finite values")
    scales = amax / WEIGHT_QMAX
    scales = torch.where(amax == 0, torch.ones_like(scales), scales)
    return scales.clamp(min=MIN_SCALE)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """(M, n) with real ~= M / 2**n, M in [2**30, 2**31) and n in [1, 62].

    For reals below 2**-32 the shift saturates at 62 and M = round(real * 2**62)
    falls below 2**30 (down to 0). Raises ValueError for real <= 0, non-finite,
    or real >= 2**30 (needs a shift below 1).
    """
    real = float(real)
    if not math.isfinite(real) or real <= 0.0:
        raise ValueError(f"multiplier must be positive and finite, got {real}")
    mantissa, exponent = math.frexp(real)
    multiplier, shift = round(mantissa * 2**31), 31 - exponent
    if multiplier == 2**31:
        multiplier, shift = 2**30, shift - 1
    if shift > MAX_SHIFT:
        multiplier, shift = round(real * 2**MAX_SHIFT), MAX_SHIFT
    if shift < 1:
        raise ValueError(f"multiplier {real} too large (must be below 2**30)")
    return multiplier, shift


def quantize_multipliers(reals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise quantize_multiplier: int32 multipliers and int32 shifts, shaped like reals."""
    pairs = [quantize_multiplier(r) for r in reals.detach().double().flatten().tolist()]
    multipliers = torch.tensor([m for m, _ in pairs], dtype=torch.int32)
    shifts = torch.tensor([n for _, n in pairs], dtype=torch.int32)
    return multipliers.reshape(reals.shape), shifts.reshape(reals.shape)


def shared_shift_multipliers(reals: list[float]) -> tuple[list[int], int]:
    """Multipliers for several terms sharing one shift n, chosen for the largest real.

    The largest real gets M in [2**30, 2**31) (same rules as quantize_multiplier);
    the others get round(real * 2**n), which may be small or 0.
    """
    reals = [float(r) for r in reals]
    if not reals:
        raise ValueError("shared_shift_multipliers needs at least one real")
    for real in reals:
        if not math.isfinite(real) or real <= 0.0:
            raise ValueError(f"multiplier must be positive and finite, got {real}")
    _, shift = quantize_multiplier(max(reals))
    return [round(math.ldexp(real, shift)) for real in reals], shift


def rounding_right_shift(v: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
    """(v + 2**(n-1)) >> n with an arithmetic shift: division by 2**n, ties rounded up.

    `v` is an integer tensor (computed in int64); `n` an int or integer tensor >= 1
    broadcastable against `v`.
    """
    if v.is_floating_point() or v.is_complex():
        raise ValueError(f"rounding_right_shift needs an integer tensor, got {v.dtype}")
    v = v.to(torch.int64)
    if isinstance(n, torch.Tensor):
        n = n.to(device=v.device, dtype=torch.int64)
        if n.numel() and bool((n < 1).any()):
            raise ValueError("shifts must be >= 1")
        half = torch.bitwise_left_shift(torch.ones_like(n), n - 1)
        return torch.bitwise_right_shift(v + half, n)
    n = int(n)
    if n < 1:
        raise ValueError(f"shift must be >= 1, got {n}")
    return torch.bitwise_right_shift(v + (1 << (n - 1)), n)
