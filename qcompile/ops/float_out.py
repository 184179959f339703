"""Integer GEMM/conv/matmul with a float32 epilogue, for outputs that feed float ops.

The accumulator is the exact int32 sum of the integer contract; the epilogue is defined in
float32, in this order: y = float32(acc) * scale[c] (+ bias[c]). No second rounding to int8,
so a linear whose output goes to a float island (a residual add before LayerNorm, softmax)
loses nothing there.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .exact import exact_matmul
from .reference import _check_dtype, _to_exact_int64, as_pair

Tensor = torch.Tensor


def _check_channel_floats(channels: int, **tensors: Optional[Tensor]) -> None:
    for name, t in tensors.items():
        if t is None:
            continue
        _check_dtype(name, t, torch.float32)
        if tuple(t.shape) != (channels,):
            raise ValueError(f"{name} must have shape [{channels}], got {list(t.shape)}")


def qlinear_f32(x: Tensor, x_zp: int, w: Tensor, bias: Optional[Tensor], scale: Tensor) -> Tensor:
    """int8 [..., K] x int8 [N, K] -> float32 [..., N]: float32(acc) * scale[n] + bias[n]."""
    _check_dtype("x", x, torch.int8)
    _check_dtype("w", w, torch.int8)
    if w.dim() != 2 or x.dim() < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"qlinear_f32 shapes do not match: x {list(x.shape)}, w {list(w.shape)}")
    _check_channel_floats(w.shape[0], scale=scale, bias=bias)
    acc = exact_matmul(x.to(torch.int32) - x_zp, w.T, 255, 128)
    y = acc.to(torch.float32) * scale
    return y if bias is None else y + bias


def qconv2d_f32(x: Tensor, x_zp: int, w: Tensor, bias: Optional[Tensor], scale: Tensor,
                stride: list[int], padding: list[int], dilation: list[int],
                groups: int) -> Tensor:
    """int8 NCHW conv (padding with x_zp) -> float32: float32(acc) * scale[c] + bias[c]."""
    _check_dtype("x", x, torch.int8)
    _check_dtype("w", w, torch.int8)
    if x.dim() != 4 or w.dim() != 4 or x.shape[1] != w.shape[1] * groups:
        raise ValueError(f"qconv2d_f32 shapes do not match: x {list(x.shape)}, "
                         f"w {list(w.shape)}, groups={groups}")
    _check_channel_floats(w.shape[0], scale=scale, bias=bias)
    acc = F.conv2d(x.to(torch.float64) - x_zp, w.to(torch.float64), None,
                   as_pair(stride, "stride"), as_pair(padding, "padding"),
                   as_pair(dilation, "dilation"), groups)
    y = _to_exact_int64(acc).to(torch.float32) * scale.reshape(1, -1, 1, 1)
    return y if bias is None else y + bias.reshape(1, -1, 1, 1)


def qmatmul_f32(a: Tensor, a_zp: int, b: Tensor, b_zp: int, scale: float) -> Tensor:
    """int8 matmul of two activations -> float32: float32(acc) * scale (scale is float32)."""
    _check_dtype("a", a, torch.int8)
    _check_dtype("b", b, torch.int8)
    acc = exact_matmul(a.to(torch.int32) - a_zp, b.to(torch.int32) - b_zp, 255, 255)
    return acc.to(torch.float32) * torch.tensor(scale, dtype=torch.float32)
