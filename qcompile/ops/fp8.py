"""fp8 (E4M3, E5M2) ops with an exact accumulator: the specification every backend meets bit
for bit.

Every fp8 value is an integer multiple of the format's smallest subnormal (E4M3: 2^-9,
E5M2: 2^-16), so a product of two is an integer k times a fixed power of two and a dot
product is an exact integer sum, whatever the summation order:

- E4M3: |a| <= 448 * 2^9 < 2^18 units of 2^-9; products are k * 2^-18 with |k| < 2^36.
- E5M2: |a| <= 57344 * 2^16 < 2^32 units of 2^-16; products are k * 2^-32 with |k| < 2^64,
  too wide for one int64, so each operand is split into two base-2^16 limbs
  (a = hi * 2^16 + lo, |hi| <= 57344, 0 <= lo < 2^16) and the four limb products are summed
  in int64 separately (each |k| < 2^32).

The exact sum is held as `hi * 2^32 + lo` (int64 pair, 0 <= lo < 2^32) and rounded once to
float32, to nearest even. The epilogue is float32, in this order:
    y = float32(dot) * float32(x_scale * w_scale[c])  (+ bias[c])
Reductions are limited to K <= 2^21 products (all bounds above hold there).

The int64 limb products run on float64 BLAS in chunks of at most 2^53 / max|k| products:
every partial sum is then an integer of magnitude <= 2^53, so float64 holds it exactly. When
the whole E4M3 reduction fits that bound (K <= 171196), the exact float64 sum is rounded to
float32 directly, which is the same single rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .reference import as_pair

Tensor = torch.Tensor
MAX_REDUCTION = 2 ** 21
FLOAT64_EXACT = 2 ** 53
LOW_BITS = 32


@dataclass(frozen=True)
class Fp8Format:
    """One float8 format: its torch dtype, saturation bound and integer grid."""
    name: str
    dtype: torch.dtype
    max: float           # largest finite value; conversions saturate here
    unit_log2: int       # every value is an integer multiple of 2**unit_log2
    limb_bits: int       # operands split into base-2**limb_bits limbs for int64 (0: one limb)

    @property
    def max_units(self) -> int:
        return int(self.max * 2 ** -self.unit_log2)


FORMATS = {
    "e4m3": Fp8Format("e4m3", torch.float8_e4m3fn, 448.0, -9, 0),
    "e5m2": Fp8Format("e5m2", torch.float8_e5m2, 57344.0, -16, 16),
}
_BY_DTYPE = {fmt.dtype: fmt for fmt in FORMATS.values()}


def fp8_format(name: str) -> Fp8Format:
    if name not in FORMATS:
        raise ValueError(f"unknown fp8 format {name!r}; valid: {', '.join(FORMATS)}")
    return FORMATS[name]


def format_of(t: Tensor, name: str = "tensor") -> Fp8Format:
    if not isinstance(t, Tensor) or t.dtype not in _BY_DTYPE:
        kind = t.dtype if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{name} must be float8_e4m3fn or float8_e5m2, got {kind}")
    return _BY_DTYPE[t.dtype]


def _check_scale(scale: float) -> None:
    if not (0.0 < scale < float("inf")):
        raise ValueError(f"scale must be positive and finite, got {scale}")


def saturate_to_fp8(scaled: Tensor, fmt: Fp8Format) -> Tensor:
    """float32 -> fp8: NaN to 0, clamp to +-max (no inf/NaN from range), round to nearest even."""
    finite = torch.where(torch.isnan(scaled), torch.zeros_like(scaled), scaled)
    return finite.clamp(-fmt.max, fmt.max).to(fmt.dtype)


def quantize_fp8(x: Tensor, scale: float, format: str) -> Tensor:
    """float -> fp8: saturate(x / scale), division in float32."""
    if not x.is_floating_point():
        raise ValueError(f"quantize_fp8 needs a floating-point tensor, got {x.dtype}")
    _check_scale(scale)
    s = torch.tensor(scale, dtype=torch.float32, device=x.device)
    return saturate_to_fp8(x.to(torch.float32) / s, fp8_format(format))


def quantize_fp8_weight(w: Tensor, format: str, per_channel: bool) -> tuple[Tensor, Tensor]:
    """(fp8 weight, float32 scales): scale = amax / max per tensor ([1]) or per output
    channel ([out]); an all-zero slice gets scale 1."""
    fmt = fp8_format(format)
    w = w.detach().to(torch.float32)
    amax = w.abs().reshape(w.shape[0], -1).amax(dim=1) if per_channel else w.abs().amax()[None]
    scales = torch.where(amax > 0, amax / fmt.max, torch.ones_like(amax))
    view = scales.reshape(-1, *([1] * (w.dim() - 1))) if per_channel else scales
    return saturate_to_fp8(w / view, fmt), scales


def _limbs(q: Tensor, fmt: Fp8Format) -> list[tuple[Tensor, int, int]]:
    """(float64 integer limb, shift, bound) with q / 2**unit_log2 = sum(limb * 2**shift)."""
    units = q.to(torch.float64) * 2.0 ** -fmt.unit_log2
    if not fmt.limb_bits:
        return [(units, 0, fmt.max_units)]
    ints = units.to(torch.int64)
    base = 1 << fmt.limb_bits
    hi, lo = ints >> fmt.limb_bits, ints & (base - 1)
    return [(hi.to(torch.float64), fmt.limb_bits, fmt.max_units >> fmt.limb_bits),
            (lo.to(torch.float64), 0, base - 1)]


def _exact_int64_matmul(a: Tensor, b: Tensor, bound: int) -> Tensor:
    """int64 a @ b for integer-valued float64 a, b with |a_ik * b_kj| <= bound."""
    chunk = FLOAT64_EXACT // bound
    k = a.shape[-1]
    if k == 0:
        return torch.matmul(a, b).to(torch.int64)
    total = None
    for start in range(0, k, chunk):
        part = torch.matmul(a[..., start:start + chunk], b[..., start:start + chunk, :])
        part = part.to(torch.int64)
        total = part if total is None else total + part
    return total


def _limb_terms(a: Tensor, b: Tensor, fmt: Fp8Format) -> list[tuple[int, Tensor]]:
    """(shift, exact int64 limb product) pairs whose weighted sum is a @ b in units."""
    terms = []
    for la, sa, ba in _limbs(a, fmt):
        for lb, sb, bb in _limbs(b, fmt):
            terms.append((sa + sb, _exact_int64_matmul(la, lb, max(1, ba * bb))))
    return terms


def _to_pair(terms: list[tuple[int, Tensor]]) -> tuple[Tensor, Tensor]:
    """sum(t * 2**shift) as (hi, lo) with value hi * 2**32 + lo and 0 <= lo < 2**32."""
    hi = lo = None
    for shift, t in terms:
        low_bits = LOW_BITS - shift
        t_hi, t_lo = t >> low_bits, (t & ((1 << low_bits) - 1)) << shift
        hi = t_hi if hi is None else hi + t_hi
        lo = t_lo if lo is None else lo + t_lo
    return hi + (lo >> LOW_BITS), lo & ((1 << LOW_BITS) - 1)


def pair_to_float32(hi: Tensor, lo: Tensor, scale_log2: int = 0) -> Tensor:
    """float32((hi * 2**32 + lo) * 2**scale_log2), rounded once to nearest even.

    float64 sum, its exact error (TwoSum), then round-to-odd (move an inexact, even result
    one ulp toward the error): rounding that to float32 (24 <= 53 - 2 bits) is exact RNE."""
    big = hi.to(torch.float64) * 2.0 ** LOW_BITS           # exact: |hi| < 2**53
    small = lo.to(torch.float64)
    total = big + small
    back = total - big
    error = (big - (total - back)) + (small - back)
    even = (total.view(torch.int64) & 1) == 0
    toward = torch.where(error > 0, torch.full_like(total, float("inf")),
                         torch.full_like(total, float("-inf")))
    odd = torch.where((error != 0) & even, torch.nextafter(total, toward), total)
    return (odd * 2.0 ** scale_log2).to(torch.float32)


def exact_dot(a: Tensor, b: Tensor) -> Tensor:
    """float32(a @ b) for fp8 a [..., M, K], b [..., K, N] (torch.matmul broadcasting):
    the exact sum of products, rounded once to nearest even."""
    fa, fb = format_of(a, "a"), format_of(b, "b")
    if fa is not fb:
        raise ValueError(f"fp8 operands must have one format, got {fa.name} and {fb.name}")
    if a.shape[-1] > MAX_REDUCTION:
        raise ValueError(f"fp8 reduction of {a.shape[-1]} exceeds the exact accumulator's "
                         f"limit {MAX_REDUCTION}")
    if not fa.limb_bits and a.shape[-1] * fa.max_units ** 2 <= FLOAT64_EXACT:
        # every partial sum is an integer of magnitude <= 2**53: one exact float64 product
        units = torch.matmul(_limbs(a, fa)[0][0], _limbs(b, fa)[0][0])
        return (units * 2.0 ** (2 * fa.unit_log2)).to(torch.float32)
    hi, lo = _to_pair(_limb_terms(a, b, fa))
    return pair_to_float32(hi, lo, 2 * fa.unit_log2)


def _channel_scales(x_scale: float, w_scale: Tensor, channels: int) -> Tensor:
    """float32(x_scale * w_scale[c]), one per output channel (w_scale has 1 or `channels`)."""
    _check_scale(x_scale)
    if not isinstance(w_scale, Tensor) or w_scale.dtype != torch.float32:
        raise ValueError("w_scale must be a float32 tensor")
    if w_scale.numel() not in (1, channels) or not bool((w_scale > 0).all()):
        raise ValueError(f"w_scale must hold 1 or {channels} positive scales, got "
                         f"{list(w_scale.shape)}")
    x32 = torch.tensor(x_scale, dtype=torch.float32, device=w_scale.device)
    return (x32 * w_scale.reshape(-1)).expand(channels)


def _add_bias(y: Tensor, bias: Optional[Tensor], channels: int, trailing: int = 0) -> Tensor:
    """y + bias[c], the channel dim followed by `trailing` dims."""
    if bias is None:
        return y
    if bias.dtype != torch.float32 or tuple(bias.shape) != (channels,):
        raise ValueError(f"bias must be float32 of shape [{channels}]")
    return y + bias.reshape(channels, *([1] * trailing))


def linear_fp8(x: Tensor, x_scale: float, w: Tensor, w_scale: Tensor,
               bias: Optional[Tensor]) -> Tensor:
    """fp8 x [..., K], fp8 w [N, K] -> float32 [..., N]."""
    if w.dim() != 2 or x.dim() < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"linear_fp8 shapes do not match: x {list(x.shape)}, w {list(w.shape)}")
    dot = exact_dot(x, w.T)
    return _add_bias(dot * _channel_scales(x_scale, w_scale, w.shape[0]), bias, w.shape[0])


def matmul_fp8(a: Tensor, a_scale: float, b: Tensor, b_scale: float) -> Tensor:
    """fp8 a @ fp8 b (torch.matmul shapes) -> float32 dot * float32(a_scale * b_scale)."""
    _check_scale(a_scale)
    _check_scale(b_scale)
    a2 = a.unsqueeze(0) if a.dim() == 1 else a
    b2 = b.unsqueeze(-1) if b.dim() == 1 else b
    dot = exact_dot(a2, b2)
    dot = dot.squeeze(-2) if a.dim() == 1 else dot
    dot = dot.squeeze(-1) if b.dim() == 1 else dot
    scale = torch.tensor(a_scale, dtype=torch.float32) * torch.tensor(b_scale, dtype=torch.float32)
    return dot * scale


def conv2d_fp8(x: Tensor, x_scale: float, w: Tensor, w_scale: Tensor, bias: Optional[Tensor],
               stride: list[int], padding: list[int], dilation: list[int], groups: int) -> Tensor:
    """fp8 x [N, C, H, W], fp8 w [O, C/groups, kh, kw] -> float32 [N, O, H', W'] (im2col of
    the fp8 values, zero padding, then the exact dot product of each group)."""
    stride, padding = as_pair(stride, "stride"), as_pair(padding, "padding")
    dilation = as_pair(dilation, "dilation")
    fmt = format_of(x, "x")
    if x.dim() != 4 or w.dim() != 4 or x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:
        raise ValueError(f"conv2d_fp8 shapes do not match: x {list(x.shape)}, w "
                         f"{list(w.shape)}, groups {groups}")
    n, (out, per_group, kh, kw) = x.shape[0], w.shape
    cols = F.unfold(x.to(torch.float32), (kh, kw), dilation, padding, stride)
    cols = cols.reshape(n, groups, per_group * kh * kw, -1).to(fmt.dtype)
    dot = exact_dot(w.reshape(groups, out // groups, per_group * kh * kw), cols)
    size = [(x.shape[2 + i] + 2 * padding[i] - dilation[i] * (k - 1) - 1) // stride[i] + 1
            for i, k in enumerate((kh, kw))]
    dot = dot.reshape(n, out, *size)
    y = dot * _channel_scales(x_scale, w_scale, out).reshape(out, 1, 1)
    return _add_bias(y, bias, out, trailing=2)
