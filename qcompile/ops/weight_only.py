"""Weight-only linears with float activations: int4 group-wise `qlinear_w4`, int8 per output
channel `qlinear_w8`.

Weights are stored as unsigned 4-bit codes packed two per byte along K (low nibble = even k,
high nibble = odd k), one float32 scale and one code zero point per (output row, group).
Dequantized weight: w[n, k] = (code[n, k] - zero[n, k // g]) * scale[n, k // g], in float32.
The product with float32 activations is an ordinary float32 GEMM (backends agree within
float rounding, not bit for bit: the activations are float).

int8 (`qlinear_w8`): w_int8 [N, K] int8 in [-127, 127], one float32 scale per output row.
Dequantized weight: w[n, k] = float32(w_int8[n, k]) * scale[n], one float32 rounding per
element; then the same float32 GEMM (+ bias) as qlinear_w4.
"""
from __future__ import annotations

from typing import Optional

import torch

Tensor = torch.Tensor


def pack_int4(codes: Tensor) -> Tensor:
    """uint8 [N, K/2] from codes in [0, 15] of shape [N, K] (K even)."""
    if codes.shape[-1] % 2:
        raise ValueError(f"int4 packing needs an even K, got {codes.shape[-1]}")
    c = codes.to(torch.uint8)
    return (c[..., 0::2] | (c[..., 1::2] << 4)).contiguous()


def unpack_int4(packed: Tensor) -> Tensor:
    """Codes in [0, 15] as uint8 [N, K] from packed uint8 [N, K/2]."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def dequantize_int4(packed: Tensor, scales: Tensor, zeros: Tensor, group_size: int) -> Tensor:
    """float32 [N, K] weight from packed codes, per-group scales and zero points."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed int4 weight must be uint8, got {packed.dtype}")
    codes = unpack_int4(packed).to(torch.float32)
    groups = codes.shape[-1] // group_size
    if scales.shape != (codes.shape[0], groups) or zeros.shape != scales.shape:
        raise ValueError(f"scales/zeros must have shape [{codes.shape[0]}, {groups}], got "
                         f"{list(scales.shape)} and {list(zeros.shape)}")
    expand = lambda t: t.to(torch.float32).repeat_interleave(group_size, dim=1)  # noqa: E731
    return (codes - expand(zeros)) * expand(scales)


def qlinear_w4(x: Tensor, packed: Tensor, scales: Tensor, zeros: Tensor, group_size: int,
               bias: Optional[Tensor]) -> Tensor:
    """float32 x [..., K] @ dequantize_int4(...)^T (+ bias), float32."""
    if x.dtype != torch.float32:
        raise ValueError(f"qlinear_w4 takes float32 activations, got {x.dtype}")
    w = dequantize_int4(packed, scales, zeros, group_size)
    if x.shape[-1] != w.shape[1]:
        raise ValueError(f"qlinear_w4 shapes do not match: x {list(x.shape)}, w {list(w.shape)}")
    return torch.nn.functional.linear(x, w, bias)


def quantize_int4_groups(w: Tensor, group_size: int, symmetric: bool = True):
    """Round-to-nearest int4 of w [N, K] per group: (packed codes, scales, zeros)."""
    codes, scales, zeros = quantize_int4_codes(w, group_size, symmetric)
    return pack_int4(codes), scales, zeros


def quantize_int4_codes(w: Tensor, group_size: int, symmetric: bool = True):
    """Round-to-nearest int4 codes of w [N, K] per group: (codes, scales, zeros).

    Symmetric: zero 8, scale = amax / 7 (codes 1..15 used, -7..7 around 8). Asymmetric:
    scale = (max - min) / 15, zero = round(-min / scale) in [0, 15]."""
    n, k = w.shape
    if k % group_size or group_size % 2:
        raise ValueError(f"K={k} is not a multiple of the (even) group size {group_size}")
    groups = w.detach().to(torch.float32).reshape(n, k // group_size, group_size)
    if symmetric:
        scales = groups.abs().amax(dim=-1) / 7.0
        scales = torch.where(scales == 0, torch.ones_like(scales), scales)
        zeros = torch.full_like(scales, 8.0)
    else:
        lo = groups.amin(dim=-1).clamp(max=0)
        hi = groups.amax(dim=-1).clamp(min=0)
        scales = (hi - lo) / 15.0
        scales = torch.where(scales == 0, torch.ones_like(scales), scales)
        zeros = torch.clamp(torch.round(-lo / scales), 0, 15)
    codes = torch.clamp(torch.round(groups / scales[..., None]) + zeros[..., None], 0, 15)
    return codes.reshape(n, k).to(torch.uint8), scales, zeros.to(torch.uint8)


def dequantize_w8(w: Tensor, scales: Tensor) -> Tensor:
    """float32 [N, K] weight w_int8[n, k] * scale[n] from int8 codes and per-row scales."""
    if w.dtype != torch.int8 or w.dim() != 2:
        raise ValueError(f"int8 weight must be a 2-d int8 tensor, got {w.dtype} {list(w.shape)}")
    if scales.shape != (w.shape[0],):
        raise ValueError(f"scales must have shape [{w.shape[0]}], got {list(scales.shape)}")
    return w.to(torch.float32) * scales.to(torch.float32)[:, None]


def qlinear_w8(x: Tensor, w: Tensor, scales: Tensor, bias: Optional[Tensor]) -> Tensor:
    """float32 x [..., K] @ dequantize_w8(w, scales)^T (+ bias), float32."""
    if x.dtype != torch.float32:
        raise ValueError(f"qlinear_w8 takes float32 activations, got {x.dtype}")
    weight = dequantize_w8(w, scales)
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"qlinear_w8 shapes do not match: x {list(x.shape)}, w {list(w.shape)}")
    return torch.nn.functional.linear(x, weight, bias)
