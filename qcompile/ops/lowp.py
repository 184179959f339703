"""Half-precision linear/matmul with float32 accumulation: the fp16/bf16 baselines.

`linear_lowp(x, w, bias, dtype)`: x is rounded to `dtype` (fp16 or bf16, round to nearest
even), the weight is stored in `dtype`, both are widened back to float32 exactly and
multiplied with float32 accumulation; the bias is float32. Outputs are float32, so every
op boundary rounds once, as half-precision inference with float32 accumulators does.
"""
from __future__ import annotations

from typing import Optional

import torch

Tensor = torch.Tensor
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _lowp(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"unknown low-precision dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def round_to(x: Tensor, dtype: str) -> Tensor:
    """float32 x rounded to fp16/bf16 and widened back to float32."""
    return x.to(_lowp(dtype)).to(torch.float32)


def linear_lowp(x: Tensor, w: Tensor, bias: Optional[Tensor], dtype: str) -> Tensor:
    if w.dtype != _lowp(dtype):
        raise ValueError(f"linear_lowp weight must be {dtype}, got {w.dtype}")
    return torch.nn.functional.linear(round_to(x, dtype), w.to(torch.float32), bias)


def matmul_lowp(a: Tensor, b: Tensor, dtype: str) -> Tensor:
    return torch.matmul(round_to(a, dtype), round_to(b, dtype))


def conv2d_lowp(x: Tensor, w: Tensor, bias: Optional[Tensor], stride: list[int],
                padding: list[int], dilation: list[int], groups: int, dtype: str) -> Tensor:
    if w.dtype != _lowp(dtype):
        raise ValueError(f"conv2d_lowp weight must be {dtype}, got {w.dtype}")
    return torch.nn.functional.conv2d(round_to(x, dtype), w.to(torch.float32), bias, stride,
                                      padding, dilation, groups)
