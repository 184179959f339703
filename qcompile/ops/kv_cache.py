"""KV-cache quantization ops `qcompile::kv_quantize` and `qcompile::kv_dequantize`.

Keys and values are [B, H, T, Dh] (heads on dim 1, positions on dim 2). Symmetric, zero
point 0, `q = clamp(round_half_to_even(x / s), -127, 127)`:

- "int8-per-token": s = amax over Dh / 127 for every (b, h, t), computed at the write;
  scales [B, H, T, 1].
- "int8-per-head": s given per head (calibrated amax / 127), shape [1, H, 1, 1]; values
  beyond the calibrated range saturate at +-127.
- "fp8": E4M3 codes of x / s (saturating at +-448), s per head (calibrated amax / 448);
  codes are stored as their uint8 bit patterns so the cache can be written with index_copy.

A zero amax gives scale 1 (all codes 0). Scales are float32.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor
KV_MODES = ("int8-per-head", "int8-per-token", "fp8")
QMAX = {"int8-per-head": 127.0, "int8-per-token": 127.0, "fp8": 448.0}
CODE_DTYPES = {"int8-per-head": torch.int8, "int8-per-token": torch.int8, "fp8": torch.uint8}
_TINY = torch.finfo(torch.float32).tiny


def _check(x: Tensor, mode: str, scale: Tensor | None) -> None:
    if mode not in KV_MODES:
        raise ValueError(f"unknown KV-cache mode {mode!r}; valid: {', '.join(KV_MODES)}")
    if x.dim() != 4:
        raise ValueError(f"KV-cache values must be [B, H, T, Dh], got shape {tuple(x.shape)}")
    if mode != "int8-per-token" and scale is None:
        raise ValueError(f"KV-cache mode {mode!r} needs a per-head scale [1, H, 1, 1]")


def token_scales(x: Tensor) -> Tensor:
    """amax over the head dim / 127 for every (b, h, t); zero rows get scale 1."""
    amax = x.detach().abs().amax(dim=-1, keepdim=True).to(torch.float32)
    return torch.where(amax > 0, (amax / 127.0).clamp_min(_TINY), torch.ones_like(amax))


def head_scales(amax: Tensor, mode: str) -> Tensor:
    """Per-head scales [1, H, 1, 1] from a per-head amax [H]: amax / qmax, 1 where 0."""
    amax = amax.detach().to(torch.float32).reshape(1, -1, 1, 1)
    return torch.where(amax > 0, (amax / QMAX[mode]).clamp_min(_TINY), torch.ones_like(amax))


def kv_quantize(x: Tensor, mode: str, scale: Tensor | None) -> tuple[Tensor, Tensor]:
    """(codes, scales) of keys or values x [B,H,T,Dh] in `mode` (see the module doc)."""
    _check(x, mode, scale)
    s = token_scales(x) if mode == "int8-per-token" else scale.to(torch.float32)
    y = x.to(torch.float32) / s
    if mode == "fp8":
        codes = y.clamp(-448.0, 448.0).to(torch.float8_e4m3fn).view(torch.uint8)
    else:
        codes = torch.round(y).clamp(-127, 127).to(torch.int8)
    return codes, s.clone()


def kv_dequantize(codes: Tensor, scales: Tensor, mode: str) -> Tensor:
    """Float32 keys or values from (codes, scales) of kv_quantize in `mode`."""
    if mode not in KV_MODES:
        raise ValueError(f"unknown KV-cache mode {mode!r}; valid: {', '.join(KV_MODES)}")
    if mode == "fp8":
        return codes.view(torch.float8_e4m3fn).to(torch.float32) * scales
    return codes.to(torch.float32) * scales


KV_OPS = {
    "kv_quantize": torch.library.custom_op("qcompile::kv_quantize", kv_quantize,
                                           mutates_args=()),
    "kv_dequantize": torch.library.custom_op("qcompile::kv_dequantize", kv_dequantize,
                                             mutates_args=()),
}


@KV_OPS["kv_quantize"].register_fake
def _kv_quantize_fake(x, mode, scale):
    codes = torch.empty_like(x, dtype=CODE_DTYPES.get(mode, torch.int8))
    if mode == "int8-per-token":
        return codes, x.new_empty((*x.shape[:-1], 1), dtype=torch.float32)
    return codes, torch.empty_like(scale, dtype=torch.float32)


@KV_OPS["kv_dequantize"].register_fake
def _kv_dequantize_fake(codes, scales, mode):
    return torch.empty(torch.broadcast_shapes(codes.shape, scales.shape), dtype=torch.float32,
                       device=codes.device)
