"""Reference kernels of the `qcompile::` ops: the integer semantics every backend matches.

Integer accumulations are exact. GEMMs run on float BLAS in chunks short enough that
every partial sum is an exactly representable integer (see exact.py); convolutions run in
float64 (exact below 2**53); results are converted to int64. Requantization is integer-only:
`y = clamp(rounding_right_shift(acc * M, n) + out_zp, qmin, qmax)`.
A NaN input quantizes to the zero point.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from qcompile.quant_math import MAX_SHIFT, QMAX, QMIN, rounding_right_shift

from .exact import exact_matmul

Tensor = torch.Tensor


# ---- argument checks -------------------------------------------------------------------


def _check_dtype(name: str, t: Tensor, dtype: torch.dtype) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {t.dtype}")


def _check_bounds(qmin: int, qmax: int) -> None:
    if not QMIN <= qmin <= qmax <= QMAX:
        raise ValueError(f"need -128 <= qmin <= qmax <= 127, got qmin={qmin} qmax={qmax}")


def _check_scale(scale: float) -> None:
    if not (0.0 < scale < float("inf")):
        raise ValueError(f"scale must be positive and finite, got {scale}")


def _check_multiplier(multiplier: int, shift: int) -> None:
    if not 0 <= multiplier < 2**31:
        raise ValueError(f"multiplier must be in [0, 2**31), got {multiplier}")
    if not 1 <= shift <= MAX_SHIFT:
        raise ValueError(f"shift must be in [1, {MAX_SHIFT}], got {shift}")


def _check_per_channel(channels: int, bias: Optional[Tensor], **params: Tensor) -> None:
    tensors = dict(params, **({} if bias is None else {"bias": bias}))
    for name, t in tensors.items():
        _check_dtype(name, t, torch.int32)
        if tuple(t.shape) != (channels,):
            raise ValueError(f"{name} must have shape [{channels}], got {list(t.shape)}")


def as_pair(values: Sequence[int], name: str) -> list[int]:
    """A 2-entry list from 1 or 2 entries (a single entry applies to both spatial dims)."""
    values = list(values)
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise ValueError(f"{name} must have 1 or 2 entries, got {values}")
    return values


def _along(t: Tensor, axis: int, ndim: int) -> Tensor:
    """View a 1-D per-channel tensor so that it broadcasts along `axis` of an ndim tensor."""
    shape = [1] * ndim
    shape[axis] = -1
    return t.reshape(shape)


# ---- shared arithmetic -----------------------------------------------------------------

def _round_to_int8(v: Tensor, zero_point: int, qmin: int, qmax: int) -> Tensor:
    """clamp(round_half_even(v) + zero_point, qmin, qmax) as int8; NaN gives the zero point."""
    q = torch.clamp(torch.round(v) + zero_point, qmin, qmax)
    q = torch.nan_to_num(q, nan=float(min(max(zero_point, qmin), qmax)))
    return q.to(torch.int8)


def _requantize_acc(acc: Tensor, multiplier, shift, out_zp: int, qmin: int, qmax: int) -> Tensor:
    """Integer requantize of an int64 accumulator; M and n are ints or broadcastable tensors."""
    if isinstance(multiplier, Tensor):
        multiplier = multiplier.to(torch.int64)
    y = rounding_right_shift(acc * multiplier, shift) + out_zp
    return torch.clamp(y, qmin, qmax).to(torch.int8)


def _check_requant(multiplier: int, shift: int, qmin: int, qmax: int) -> None:
    _check_multiplier(multiplier, shift)
    _check_bounds(qmin, qmax)


def _to_exact_int64(acc: Tensor) -> Tensor:
    """int64 of a float64 tensor holding exact integers."""
    return acc.to(torch.int64)


# ---- quantize / dequantize -------------------------------------------------------------

def quantize(x: Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> Tensor:
    """float -> int8: clamp(round_half_even(x / s) + zp, qmin, qmax), division in float32."""
    if not x.is_floating_point():
        raise ValueError(f"quantize needs a floating-point tensor, got {x.dtype}")
    _check_scale(scale)
    _check_bounds(qmin, qmax)
    s = torch.tensor(scale, dtype=torch.float32, device=x.device)
    return _round_to_int8(x.to(torch.float32) / s, zero_point, qmin, qmax)


def dequantize(q: Tensor, scale: float, zero_point: int) -> Tensor:
    """int8 -> float32: (q - zp) * s in float32."""
    _check_dtype("q", q, torch.int8)
    _check_scale(scale)
    s = torch.tensor(scale, dtype=torch.float32, device=q.device)
    return (q.to(torch.int32) - zero_point).to(torch.float32) * s


def _channel_scales(x: Tensor, scales: Tensor, axis: int) -> tuple[Tensor, int]:
    _check_dtype("scales", scales, torch.float32)
    if x.dim() == 0:
        raise ValueError("per-channel tensors need at least one dimension")
    axis = axis % x.dim()
    if tuple(scales.shape) != (x.shape[axis],):
        raise ValueError(f"scales must have shape [{x.shape[axis]}], got {list(scales.shape)}")
    return _along(scales, axis, x.dim()), axis


def quantize_per_channel(x: Tensor, scales: Tensor, axis: int, qmin: int, qmax: int) -> Tensor:
    """float -> int8 with one float32 scale per slice along `axis`, zero point 0."""
    if not x.is_floating_point():
        raise ValueError(f"quantize_per_channel needs a floating-point tensor, got {x.dtype}")
    _check_bounds(qmin, qmax)
    s, _ = _channel_scales(x, scales, axis)
    return _round_to_int8(x.to(torch.float32) / s, 0, qmin, qmax)


def dequantize_per_channel(q: Tensor, scales: Tensor, axis: int) -> Tensor:
    """int8 -> float32 with one scale per slice along `axis`, zero point 0."""
    _check_dtype("q", q, torch.int8)
    s, _ = _channel_scales(q, scales, axis)
    return q.to(torch.float32) * s


def requantize(q: Tensor, in_zp: int, multiplier: int, shift: int, out_zp: int,
               qmin: int, qmax: int) -> Tensor:
    """int8 -> int8: clamp(rrs((q - in_zp) * M, n) + out_zp, qmin, qmax)."""
    _check_dtype("q", q, torch.int8)
    _check_requant(multiplier, shift, qmin, qmax)
    return _requantize_acc(q.to(torch.int64) - in_zp, multiplier, shift, out_zp, qmin, qmax)


# ---- GEMM and convolution --------------------------------------------------------------

def qlinear(x: Tensor, x_zp: int, w: Tensor, bias: Optional[Tensor], multiplier: Tensor,
            shift: Tensor, out_zp: int, qmin: int, qmax: int) -> Tensor:
    """int8 [..., K] x int8 [N, K] -> int8 [..., N], per-output-channel requantize."""
    _check_dtype("x", x, torch.int8)
    _check_dtype("w", w, torch.int8)
    if w.dim() != 2 or x.dim() < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"qlinear shapes do not match: x {list(x.shape)}, w {list(w.shape)}")
    _check_per_channel(w.shape[0], bias, multiplier=multiplier, shift=shift)
    _check_bounds(qmin, qmax)
    acc = exact_matmul(x.to(torch.int32) - x_zp, w.T, 255, 128)
    if bias is not None:
        acc = acc + bias.to(torch.int64)
    return _requantize_acc(acc, multiplier, shift.to(torch.int64), out_zp, qmin, qmax)


def qconv2d(x: Tensor, x_zp: int, w: Tensor, bias: Optional[Tensor], multiplier: Tensor,
            shift: Tensor, out_zp: int, qmin: int, qmax: int, stride: list[int],
            padding: list[int], dilation: list[int], groups: int) -> Tensor:
    """int8 NCHW conv, padding with x_zp, per-output-channel requantize."""
    _check_dtype("x", x, torch.int8)
    _check_dtype("w", w, torch.int8)
    if x.dim() != 4 or w.dim() != 4:
        raise ValueError(f"qconv2d needs 4-D x and w, got {list(x.shape)} and {list(w.shape)}")
    if groups < 1 or x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:
        raise ValueError(f"qconv2d channels do not match: x {list(x.shape)}, "
                         f"w {list(w.shape)}, groups={groups}")
    _check_per_channel(w.shape[0], bias, multiplier=multiplier, shift=shift)
    _check_bounds(qmin, qmax)
    acc = F.conv2d(x.to(torch.float64) - x_zp, w.to(torch.float64), None,
                   as_pair(stride, "stride"), as_pair(padding, "padding"),
                   as_pair(dilation, "dilation"), groups)
    acc = _to_exact_int64(acc)
    if bias is not None:
        acc = acc + _along(bias.to(torch.int64), 1, 4)
    return _requantize_acc(acc, _along(multiplier, 1, 4), _along(shift, 1, 4),
                           out_zp, qmin, qmax)


def qmatmul(a: Tensor, a_zp: int, b: Tensor, b_zp: int, multiplier: int, shift: int,
            out_zp: int, qmin: int, qmax: int) -> Tensor:
    """int8 matmul of two activations (torch.matmul broadcasting), per-tensor requantize."""
    _check_dtype("a", a, torch.int8)
    _check_dtype("b", b, torch.int8)
    _check_requant(multiplier, shift, qmin, qmax)
    acc = exact_matmul(a.to(torch.int32) - a_zp, b.to(torch.int32) - b_zp, 255, 255)
    return _requantize_acc(acc, multiplier, shift, out_zp, qmin, qmax)


# ---- elementwise -----------------------------------------------------------------------

def qadd(a: Tensor, a_zp: int, a_multiplier: int, b: Tensor, b_zp: int, b_multiplier: int,
         shift: int, out_zp: int, qmin: int, qmax: int) -> Tensor:
    """clamp(rrs((a - a_zp) * Ma + (b - b_zp) * Mb, shift) + out_zp), broadcasting."""
    _check_dtype("a", a, torch.int8)
    _check_dtype("b", b, torch.int8)
    _check_requant(a_multiplier, shift, qmin, qmax)
    _check_multiplier(b_multiplier, shift)
    acc = (a.to(torch.int64) - a_zp) * a_multiplier + (b.to(torch.int64) - b_zp) * b_multiplier
    return _requantize_acc(acc, 1, shift, out_zp, qmin, qmax)


def qcat(tensors: list[Tensor], dim: int) -> Tensor:
    """int8 concatenation (all inputs share qparams)."""
    if len(tensors) == 0:
        raise ValueError("qcat needs at least one tensor")
    for i, t in enumerate(tensors):
        _check_dtype(f"tensors[{i}]", t, torch.int8)
    return torch.cat(list(tensors), dim)


def qclamp(x: Tensor, qmin: int, qmax: int) -> Tensor:
    """int8 clamp; a standalone ReLU is qclamp(x, zp, 127)."""
    _check_dtype("x", x, torch.int8)
    _check_bounds(qmin, qmax)
    return torch.clamp(x, qmin, qmax)


# ---- pooling and reductions ------------------------------------------------------------

def qmax_pool2d(x: Tensor, kernel: list[int], stride: list[int], padding: list[int],
                dilation: list[int], ceil_mode: bool) -> Tensor:
    """int8 max pooling (padding never wins). An empty stride means stride = kernel."""
    _check_dtype("x", x, torch.int8)
    kernel = as_pair(kernel, "kernel")
    y = F.max_pool2d(x.to(torch.float32), kernel, as_pair(stride or kernel, "stride"),
                     as_pair(padding, "padding"), as_pair(dilation, "dilation"), ceil_mode)
    return y.to(torch.int8)


def qavg_pool2d(x: Tensor, x_zp: int, kernel: list[int], stride: list[int],
                padding: list[int], ceil_mode: bool, multiplier: int, shift: int,
                out_zp: int, qmin: int, qmax: int) -> Tensor:
    """Window sum of (x - x_zp), padded positions adding 0, then requantize.

    The divisor is folded into the multiplier. An empty stride means stride = kernel.
    """
    _check_dtype("x", x, torch.int8)
    _check_requant(multiplier, shift, qmin, qmax)
    kernel = as_pair(kernel, "kernel")
    acc = F.avg_pool2d(x.to(torch.float64) - x_zp, kernel, as_pair(stride or kernel, "stride"),
                       as_pair(padding, "padding"), ceil_mode, count_include_pad=True,
                       divisor_override=1)
    return _requantize_acc(_to_exact_int64(acc), multiplier, shift, out_zp, qmin, qmax)


def reduced_dims(ndim: int, dims: Sequence[int]) -> list[int]:
    """Normalized reduction dims; an empty list means every dim."""
    if not dims:
        return list(range(ndim))
    rank = max(ndim, 1)
    if any(not -rank <= d < rank for d in dims):
        raise ValueError(f"dims {list(dims)} out of range for a {ndim}-D tensor")
    return sorted({d % rank for d in dims})


def qmean(x: Tensor, x_zp: int, dims: list[int], keepdim: bool, multiplier: int, shift: int,
          out_zp: int, qmin: int, qmax: int) -> Tensor:
    """Sum of (x - x_zp) over dims (int64), then requantize (divisor folded into M)."""
    _check_dtype("x", x, torch.int8)
    _check_requant(multiplier, shift, qmin, qmax)
    dims = reduced_dims(x.dim(), dims)
    acc = (x.to(torch.int64) - x_zp).sum(dim=dims, keepdim=keepdim)
    return _requantize_acc(acc, multiplier, shift, out_zp, qmin, qmax)


# ---- dynamic quantization --------------------------------------------------------------

def quantize_per_token(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric int8 quantization of each row (last dim) of a float32 tensor.

    Returns (q int8 like x, scale float32 [..., 1], zero_point int32 [..., 1]).
    """
    if x.dtype != torch.float32:
        raise ValueError(f"quantize_per_token needs float32, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"quantize_per_token needs a non-empty last dim, got {list(x.shape)}")
    lo = torch.clamp(x.amin(dim=-1, keepdim=True), max=0.0)
    hi = torch.clamp(x.amax(dim=-1, keepdim=True), min=0.0)
    s = (hi - lo) / 255.0
    s = torch.where(s == 0, torch.ones_like(s), s)
    zp = torch.clamp(torch.round(-128.0 - lo / s), QMIN, QMAX)
    q = torch.clamp(torch.round(x / s) + zp, QMIN, QMAX)
    return q.to(torch.int8), s, zp.to(torch.int32)


def qlinear_dynamic(x: Tensor, w: Tensor, w_scale: Tensor, bias: Optional[Tensor]) -> Tensor:
    """float32 [..., K] x int8 [N, K] -> float32 [..., N] with per-token activation quantization."""
    _check_dtype("x", x, torch.float32)
    _check_dtype("w", w, torch.int8)
    if w.dim() != 2 or x.dim() < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"qlinear_dynamic shapes do not match: x {list(x.shape)}, "
                         f"w {list(w.shape)}")
    for name, t in (("w_scale", w_scale), ("bias", bias)):
        if t is None and name == "bias":
            continue
        _check_dtype(name, t, torch.float32)
        if tuple(t.shape) != (w.shape[0],):
            raise ValueError(f"{name} must have shape [{w.shape[0]}], got {list(t.shape)}")
    q, s, zp = quantize_per_token(x)
    acc = exact_matmul(q.to(torch.int32) - zp, w.T, 255, 128)
    y = acc.to(torch.float32) * (s * w_scale)
    return y if bias is None else y + bias
