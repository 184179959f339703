"""Checking inputs (example, calibration, run-time) against what the model was captured with."""
from __future__ import annotations

import torch

from .errors import InputError


def as_tuple(batch) -> tuple:
    """A calibration batch or call input as a tuple (a lone tensor is accepted)."""
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, list):
        return tuple(batch)
    if isinstance(batch, tuple):
        return batch
    raise TypeError(f"expected a tuple of tensors or a tensor, got {type(batch).__name__}")


def _leaves(args: tuple) -> list:
    leaves, _ = torch.utils._pytree.tree_flatten(args)
    return [x for x in leaves if isinstance(x, torch.Tensor)]


def check_inputs(args: tuple, specs: tuple, what: str, error=InputError,
                 check_finite: bool = False) -> None:
    """Raise `error` naming the input when count, dtype, rank or a fixed size differs."""
    tensors = _leaves(args)
    if len(tensors) != len(specs):
        raise error(f"{what}: expected {len(specs)} input tensor(s) "
                    f"({', '.join(s.describe() for s in specs)}), got {len(tensors)}")
    for index, (tensor, spec) in enumerate(zip(tensors, specs)):
        where = f"{what}, input {index} ('{spec.name}')"
        if tensor.dtype != spec.dtype:
            raise error(f"{where}: dtype {tensor.dtype} differs from the example input's "
                        f"{spec.dtype} (expected {spec.describe()})")
        if tensor.dim() != len(spec.shape) or any(
                want is not None and want != got for want, got in zip(spec.shape, tensor.shape)):
            raise error(f"{where}: shape {list(tensor.shape)} does not match {spec.describe()} "
                        f"('*' sizes may vary)")
        if check_finite and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            nan = int(torch.isnan(tensor).sum())
            inf = int(torch.isinf(tensor).sum())
            raise error(f"{where}: contains {nan} NaN and {inf} Inf value(s)")
