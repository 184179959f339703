"""The GPTQ weight solver (Frantar et al. 2023) for int4 group-wise and int8 per-channel codes.

Quantizes W [N, K] one input column at a time and spreads each column's rounding error over
the columns not yet quantized, weighted by the inverse Hessian H = 2 X^T X / n of the layer's
inputs (Cholesky form, lazy block updates, dampening, optional activation order).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GptqSettings:
    group_size: int = 128
    symmetric: bool = True
    damp: float = 0.01
    block: int = 128
    act_order: bool = False
    bits: int = 4                # 4: codes 0..15 per group; 8: codes -127..127, one group per row

    @property
    def code_range(self) -> tuple[int, int]:
        return (-127, 127) if self.bits == 8 else (0, 15)


def _row_params(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 symmetric per row: scale amax / 127, zero 0 (qcompile's int8 weight rule)."""
    scale = w.abs().amax(dim=1) / 127.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return scale, torch.zeros_like(scale)


def _group_params(w: torch.Tensor, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) per row for the columns of w, as in quantize_int4_groups."""
    if symmetric:
        scale = w.abs().amax(dim=1) / 7.0
        zero = torch.full_like(scale, 8.0)
    else:
        lo, hi = w.amin(dim=1).clamp(max=0), w.amax(dim=1).clamp(min=0)
        scale = (hi - lo) / 15.0
        zero = None
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    if zero is None:
        zero = torch.clamp(torch.round(-lo / scale), 0, 15)
    return scale, zero


def _inverse_hessian(h: torch.Tensor, damp: float) -> torch.Tensor:
    h = h.clone()
    h += torch.eye(h.shape[0], dtype=h.dtype) * damp * torch.mean(torch.diag(h))
    chol = torch.linalg.cholesky(h)
    return torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True)


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, settings: GptqSettings):
    """Codes [N, K] and per-group (scales, zeros) [N, K/g] for W [N, K]: int4 codes 0..15 as
    uint8 (bits 4), or int8 codes with one group per row (bits 8; zeros all 0)."""
    w = weight.detach().to(torch.float64).clone()
    h = hessian.to(torch.float64).clone()
    n, k = w.shape
    g = settings.group_size if settings.bits == 4 else k
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = torch.argsort(torch.diag(h), descending=True) if settings.act_order else torch.arange(k)
    groups = [_row_params(w) if settings.bits == 8 else
              _group_params(w[:, j:j + g], settings.symmetric) for j in range(0, k, g)]
    w, h = w[:, perm], h[perm][:, perm]
    hinv = _inverse_hessian(h, settings.damp)
    codes = torch.zeros_like(w)
    for start in range(0, k, settings.block):
        _solve_block(w, hinv, codes, perm, groups, start, min(start + settings.block, k), g,
                     settings.code_range)
    inverse = torch.argsort(perm)
    scales = torch.stack([s for s, _ in groups], dim=1).float()
    zeros = torch.stack([z for _, z in groups], dim=1)
    code_dtype = torch.int8 if settings.bits == 8 else torch.uint8
    return codes[:, inverse].to(code_dtype), scales, zeros.to(code_dtype)


def _solve_block(w, hinv, codes, perm, groups, i1, i2, g, code_range) -> None:
    block = w[:, i1:i2].clone()
    errors = torch.zeros_like(block)
    hblock = hinv[i1:i2, i1:i2]
    for i in range(i2 - i1):
        column = block[:, i]
        scale, zero = groups[int(perm[i1 + i]) // g]
        scale, zero = scale.double(), zero.double()
        code = torch.clamp(torch.round(column / scale) + zero, *code_range)
        codes[:, i1 + i] = code
        err = (column - (code - zero) * scale) / hblock[i, i]
        block[:, i:] -= err.unsqueeze(1) @ hblock[i, i:].unsqueeze(0)
        errors[:, i] = err
    w[:, i1:i2] = block
    w[:, i2:] -= errors @ hinv[i1:i2, i2:]
