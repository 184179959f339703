"""Exact integer matrix products on float BLAS.

Integer operands with |a| <= A and |b| <= B: every partial sum of at most 2**24 / (A * B)
products is an integer below 2**24, so float32 GEMM computes it exactly (whatever the
summation order). Longer reductions are split into such chunks and summed in int64; float64
(exact below 2**53) is the fallback when float32 matmuls may run in reduced precision.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor
FLOAT32_EXACT = 2 ** 24
MIN_CHUNK = 64


def _float32_is_ieee() -> bool:
    return torch.get_float32_matmul_precision() == "highest"


def exact_matmul(a: Tensor, b: Tensor, bound_a: int, bound_b: int) -> Tensor:
    """int64 a @ b (torch.matmul broadcasting) for integer-valued a, b within the bounds."""
    chunk = FLOAT32_EXACT // max(1, bound_a * bound_b)
    k = a.shape[-1]
    if chunk < MIN_CHUNK or not _float32_is_ieee():
        return torch.matmul(a.to(torch.float64), b.to(torch.float64)).to(torch.int64)
    a32, b32 = a.to(torch.float32), b.to(torch.float32)
    if k <= chunk:
        return torch.matmul(a32, b32).to(torch.int64)
    total = None
    for start in range(0, k, chunk):
        part = torch.matmul(a32[..., start:start + chunk], b32[..., start:start + chunk, :])
        total = part.to(torch.int64) if total is None else total + part.to(torch.int64)
    return total
