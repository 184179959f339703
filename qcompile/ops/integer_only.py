"""Integer-only softmax, layernorm and GELU (I-BERT, Kim et al. 2021): the reference kernels.

Every step is integer arithmetic on int64 tensors (add, multiply, arithmetic shift, floor
division, compare/select), so that a C or TVM backend can mirror it line by line. All float
math happens at compile time in `integer_only_params.py`, which turns the float qparams into
the integer multipliers these kernels take. The fixed-point formats are module constants:

  softmax  t = x / S_T with S_T = ln2 / 2**EXP_BITS, so t = -z * 2**EXP_BITS + p exactly;
           exp(p * S_T) ~ A * (p * S_T + B)**2 + C   (A, B, C = 0.3585, 1.353, 0.344)
           in units of A * S_T**2: L = (p + EXP_B)**2 + EXP_C, then exp(t * S_T) ~ L >> z.
           EXP_C (I-BERT's C, nudged from 0.344 to 0.34409) makes L(-2**EXP_BITS) = L(0) / 2
           exactly, so i_exp is continuous across the ln2 steps and monotone.
  gelu     u = x / sqrt(2) in units S_U = 2**-ERF_BITS;
           erf(u) ~ sgn(u) * (1 - A * (min(|u|, B) - B)**2)   (A, B = 0.2888, 1.769)
           in units of A * S_U**2: E = ERF_ONE - (min(|u|, ERF_B) - ERF_B)**2.
  layernorm c = (x - mean) with MEAN_BITS fraction bits;
           den = isqrt((sum(c**2) // N) << 2*VAR_SHIFT + eps) = 2**(VAR_SHIFT+MEAN_BITS) * std;
           normalized value with NORM_BITS fraction bits. Its input may be int8, or the int32
           of i_add (a residual add kept at 16 bits, as I-BERT keeps it at 32).
  wide     i_linear and i_add keep a residual branch in 16-bit values (stored as int32).

Requantization follows the DESIGN.md contract: clamp(rrs(acc * M, n) + zp, qmin, qmax) with
|acc| < 2**31 and M < 2**31.
"""
from __future__ import annotations

from typing import Optional

import torch

from qcompile.quant_math import rounding_right_shift

from .exact import exact_matmul

Tensor = torch.Tensor

EXP_BITS = 14                 # softmax: ln2 is exactly 2**EXP_BITS input units
EXP_B = 31981                 # round(1.353 / S_T)
EXP_C = 536251543             # EXP_B**2 - 2*(EXP_B - 2**EXP_BITS)**2, i.e. c = 0.34409
EXP_MAX_SHIFT = 31            # L < 2**31, so L >> 31 == 0
PROB_BITS = 30                # softmax: probabilities in fixed point with 30 fraction bits
ERF_BITS = 10                 # gelu: erf argument in units of 2**-10
ERF_B = 1811                  # round(1.769 / S_U)
ERF_ONE = 3630803             # round(1 / (0.2888 * S_U**2))
MEAN_BITS = 8                 # layernorm: mean and centred values with 8 fraction bits
VAR_SHIFT = 6                 # layernorm: den = 2**(6 + 8) * std
WIDE_MIN, WIDE_MAX = -(1 << 15), (1 << 15) - 1   # 16-bit values of i_linear, i_add
NORM_BITS = 10                # layernorm: normalized value with 10 fraction bits
ISQRT_START = 1 << 32         # > sqrt(n) for every n < 2**63


def _check_int8(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor) or t.dtype != torch.int8:
        raise ValueError(f"{name} must be an int8 tensor, got "
                         f"{getattr(t, 'dtype', type(t).__name__)}")


def _requantize(acc: Tensor, multiplier: int, shift: int, out_zp: int, qmin: int,
                qmax: int) -> Tensor:
    """clamp(rrs(acc * M, n) + out_zp, qmin, qmax) as int8."""
    y = rounding_right_shift(acc * multiplier, shift) + out_zp
    return torch.clamp(y, qmin, qmax).to(torch.int8)


def floor_div(a: Tensor, b: Tensor) -> Tensor:
    """Integer floor division (Python `//`) of int64 tensors."""
    return torch.div(a, b, rounding_mode="floor")


def round_div(a: Tensor, b: Tensor) -> Tensor:
    """a / b rounded half up, for b > 0: floor((2a + b) / 2b)."""
    return floor_div(2 * a + b, 2 * b)


def isqrt(n: Tensor) -> Tensor:
    """Exact floor(sqrt(n)) of an int64 tensor with 0 <= n < 2**63 (Newton from above).

    x starts at 2**32 > sqrt(n); y = (x + n // x) // 2 decreases strictly while x > isqrt(n)
    and stops at isqrt(n). At most ~40 rounds."""
    n = n.to(torch.int64)
    if n.numel() and bool((n < 0).any()):
        raise ValueError("isqrt needs non-negative values")
    x = torch.full_like(n, ISQRT_START)
    while True:
        y = floor_div(x + floor_div(n, torch.clamp(x, min=1)), torch.full_like(x, 2))
        smaller = y < x
        if not bool(smaller.any()):
            return x
        x = torch.where(smaller, y, x)


# ---- softmax ---------------------------------------------------------------------------

def i_exp(t: Tensor) -> Tensor:
    """exp(t * S_T) in units of A * S_T**2 for int64 t <= 0 (monotone non-decreasing in t).

    1. z = floor(-t / 2**EXP_BITS), p = t + z * 2**EXP_BITS, so -2**EXP_BITS < p <= 0
    2. L = (p + EXP_B)**2 + EXP_C          (I-BERT polynomial, 0 < L < 2**31)
    3. result = L >> min(z, 31)"""
    z = torch.bitwise_right_shift(-t, EXP_BITS)
    p = t + torch.bitwise_left_shift(z, EXP_BITS)
    poly = (p + EXP_B) * (p + EXP_B) + EXP_C
    return torch.bitwise_right_shift(poly, torch.clamp(z, max=EXP_MAX_SHIFT))


def i_softmax(q: Tensor, in_zp: int, in_multiplier: int, in_shift: int, out_multiplier: int,
              out_shift: int, out_zp: int, qmin: int, qmax: int, dim: int = -1,
              mask: Optional[Tensor] = None) -> Tensor:
    """Integer softmax of int8 `q` along `dim`; `mask` (bool, broadcastable, True = keep)
    gives masked positions probability 0 (a row with every position masked gives 0
    everywhere, where the float op with an additive -inf mask gives a uniform row).

    1. t = rrs((q - in_zp) * in_multiplier, in_shift)     input in units S_T (<= 2**31)
    2. t = t - max(t)  (over kept positions)               t <= 0
    3. e = i_exp(t), 0 at masked positions; s = sum(e)   (int64, >= 1)
    4. r = (e << PROB_BITS) // s                          probability, 30 fraction bits
    5. out = clamp(rrs(r * out_multiplier, out_shift) + out_zp, qmin, qmax)"""
    _check_int8("q", q)
    t = rounding_right_shift((q.to(torch.int64) - in_zp) * in_multiplier, in_shift)
    keep = torch.ones_like(t, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    keep = keep.expand_as(t)
    lowest = torch.full_like(t, -(1 << 40))
    top = torch.where(keep, t, lowest).amax(dim=dim, keepdim=True)
    e = torch.where(keep, i_exp(torch.clamp(t - top, max=0)), torch.zeros_like(t))
    total = torch.clamp(e.sum(dim=dim, keepdim=True), min=1)
    r = floor_div(torch.bitwise_left_shift(e, PROB_BITS), total)
    return _requantize(r, out_multiplier, out_shift, out_zp, qmin, qmax)


# ---- GELU ------------------------------------------------------------------------------

def i_erf(u: Tensor) -> Tensor:
    """erf(u * S_U) in units of A * S_U**2 (ERF_ONE is 1.0), sign included.

    E = ERF_ONE - (min(|u|, ERF_B) - ERF_B)**2;  result = sgn(u) * E"""
    clipped = torch.clamp(torch.abs(u), max=ERF_B) - ERF_B
    return torch.sign(u) * (ERF_ONE - clipped * clipped)


def i_gelu(q: Tensor, in_zp: int, in_multiplier: int, in_shift: int, out_multiplier: int,
           out_shift: int, out_zp: int, qmin: int, qmax: int) -> Tensor:
    """Integer GELU x/2 * (1 + erf(x / sqrt 2)) of int8 `q`.

    1. d = q - in_zp                                       |d| <= 255
    2. u = rrs(d * in_multiplier, in_shift)               x / sqrt(2) in units S_U
    3. acc = d * (ERF_ONE + i_erf(u))                      |acc| < 2**31
    4. out = clamp(rrs(acc * out_multiplier, out_shift) + out_zp, qmin, qmax)"""
    _check_int8("q", q)
    d = q.to(torch.int64) - in_zp
    u = rounding_right_shift(d * in_multiplier, in_shift)
    acc = d * (ERF_ONE + i_erf(u))
    return _requantize(acc, out_multiplier, out_shift, out_zp, qmin, qmax)


# ---- LayerNorm -------------------------------------------------------------------------

def _check_wide(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor) or t.dtype not in (torch.int8, torch.int32):
        raise ValueError(f"{name} must be an int8 or int32 tensor, got "
                         f"{getattr(t, 'dtype', type(t).__name__)}")


def _clamp_wide(v: Tensor) -> Tensor:
    return torch.clamp(v, WIDE_MIN, WIDE_MAX).to(torch.int32)


def i_linear(x: Tensor, x_zp: int, w: Tensor, bias: Optional[Tensor], multiplier: Tensor,
             shift: Tensor) -> Tensor:
    """int8 [..., K] x int8 [N, K] -> int32 [..., N] at a 16-bit scale (a residual branch).

    1. acc = sum((x - x_zp) * w) + bias                    int32 accumulator, exact (as qlinear)
    2. out = clamp(rrs(acc * multiplier[n], shift[n]), WIDE_MIN, WIDE_MAX)"""
    _check_int8("x", x)
    _check_int8("w", w)
    if w.dim() != 2 or x.dim() < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"i_linear shapes do not match: x {list(x.shape)}, w {list(w.shape)}")
    acc = exact_matmul(x.to(torch.int32) - x_zp, w.T, 255, 128)
    if bias is not None:
        acc = acc + bias.to(torch.int64)
    return _clamp_wide(rounding_right_shift(acc * multiplier.to(torch.int64), shift))


def i_add(a: Tensor, a_zp: int, a_multiplier: int, b: Tensor, b_zp: int, b_multiplier: int,
          shift: int) -> Tensor:
    """Residual add of int8 or 16-bit int32 tensors to a 16-bit int32 value (the input of
    i_layernorm), not rounded to 8 bits: BERT's residual stream has outlier channels that an
    int8 scale would flatten the other channels under.

    out = clamp(rrs((a - a_zp) * a_multiplier + (b - b_zp) * b_multiplier, shift),
                WIDE_MIN, WIDE_MAX)"""
    _check_wide("a", a)
    _check_wide("b", b)
    acc = (a.to(torch.int64) - a_zp) * a_multiplier + (b.to(torch.int64) - b_zp) * b_multiplier
    return _clamp_wide(rounding_right_shift(acc, shift))


def i_layernorm(x: Tensor, in_zp: int, gamma: Tensor, beta: Tensor, eps: int,
                multiplier: int, shift: int, out_zp: int, qmin: int, qmax: int) -> Tensor:
    """Integer LayerNorm over the last dim (size N <= 8192) of int8 or int32 `x`
    (|x - in_zp| < 2**16); gamma, beta int32 [N].

    1. d = x - in_zp
    2. mean = round_div(sum(d) << MEAN_BITS, N)           mean with 8 fraction bits
    3. c = (d << MEAN_BITS) - mean                         |c| < 2**25
    4. v = ((sum(c * c) // N) << 2*VAR_SHIFT) + eps       (2**(VAR_SHIFT+MEAN_BITS) * std)**2
    5. den = max(isqrt(v), 1)
    6. norm = round_div(c << (VAR_SHIFT + NORM_BITS), den) (x - mean) / std, 10 fraction bits
    7. acc = norm * gamma + beta                           |acc| < 2**31 (checked at compile)
    8. out = clamp(rrs(acc * multiplier, shift) + out_zp, qmin, qmax)"""
    _check_wide("x", x)
    n = x.shape[-1]
    for name, t in (("gamma", gamma), ("beta", beta)):
        if t.dtype != torch.int32 or tuple(t.shape) != (n,):
            raise ValueError(f"{name} must be int32 of shape [{n}], got {t.dtype} "
                             f"{list(t.shape)}")
    count = torch.tensor(n, dtype=torch.int64)
    d = x.to(torch.int64) - in_zp
    mean = round_div(torch.bitwise_left_shift(d.sum(dim=-1, keepdim=True), MEAN_BITS), count)
    c = torch.bitwise_left_shift(d, MEAN_BITS) - mean
    var = floor_div((c * c).sum(dim=-1, keepdim=True), count)
    den = torch.clamp(isqrt(torch.bitwise_left_shift(var, 2 * VAR_SHIFT) + eps), min=1)
    norm = round_div(torch.bitwise_left_shift(c, VAR_SHIFT + NORM_BITS), den)
    acc = norm * gamma.to(torch.int64) + beta.to(torch.int64)
    return _requantize(acc, multiplier, shift, out_zp, qmin, qmax)
