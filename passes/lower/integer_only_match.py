"""Which softmax / layer_norm / gelu nodes have an integer-only form, and what feeds them.

Shared by the passes `integer-only-observe` (before calibration) and `integer-only`
(after lower-int8). Attention's softmax input may be `x * c + mask` where c > 0 is a
constant and mask is `where(cond, 0, very negative)`: c folds into the input scale and
mask becomes the kernel's boolean `mask` argument.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

from qcompile.graph_edit import constant_value
from qcompile.op_kinds import INTEGER_ONLY_KINDS, arg

aten = torch.ops.aten
MASKED = -1e4          # an additive mask value at or below this gives probability 0
WHERE = (aten.where.ScalarOther, aten.where.self, aten.where.Scalar)
SCALE_OPS = {aten.mul.Tensor: lambda c: c, aten.div.Tensor: lambda c: 1.0 / c}


@dataclass(frozen=True)
class SoftmaxInput:
    """softmax(value * factor + mask): the value to quantize, the factor, the bool mask."""
    value: fx.Node
    factor: float = 1.0
    mask: fx.Node | None = None


def _scalar(gm, value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    tensor = constant_value(gm, value)
    if tensor is not None and tensor.numel() > 0 and bool((tensor == tensor.flatten()[0]).all()):
        return float(tensor.flatten()[0])
    return None


def mask_condition(gm, node) -> fx.Node | None:
    """cond when `node` is where(cond, 0, v) with v <= MASKED (an additive attention mask)."""
    if not (isinstance(node, fx.Node) and node.op == "call_function" and node.target in WHERE):
        return None
    cond, keep, drop = node.args[:3]
    if _scalar(gm, keep) != 0.0 or (_scalar(gm, drop) is None or _scalar(gm, drop) > MASKED):
        return None
    return cond if isinstance(cond, fx.Node) else None


def _strip_mask(gm, x: fx.Node) -> tuple[fx.Node, fx.Node | None]:
    if x.op == "call_function" and x.target is aten.add.Tensor and len(x.users) == 1:
        a, b = x.args[:2]
        for value, other in ((a, b), (b, a)):
            cond = mask_condition(gm, other)
            if cond is not None and isinstance(value, fx.Node):
                return value, cond
    return x, None


def _strip_factor(gm, x: fx.Node) -> tuple[fx.Node, float]:
    if x.op == "call_function" and x.target in SCALE_OPS and len(x.users) == 1:
        value, c = x.args[:2]
        c = c if isinstance(c, (int, float)) and not isinstance(c, bool) else None
        if isinstance(value, fx.Node) and c is not None and c > 0:
            return value, SCALE_OPS[x.target](float(c))
    return x, 1.0


def softmax_input(gm, node: fx.Node) -> SoftmaxInput:
    """The softmax operand with a trailing mask add and a constant factor peeled off."""
    value, mask = _strip_mask(gm, node.args[0])
    value, factor = _strip_factor(gm, value)
    return SoftmaxInput(value, factor, mask)


def _softmax_ok(gm, node) -> bool:
    if node.target is aten._softmax.default:
        return not node.args[2]
    return arg(node, 2, "dtype", None) is None


def _layernorm_ok(gm, node) -> bool:
    shape = list(node.args[1])
    weight, bias = arg(node, 2, "weight", None), arg(node, 3, "bias", None)
    constants = all(v is None or constant_value(gm, v) is not None for v in (weight, bias))
    return len(shape) == 1 and constants


def _gelu_ok(gm, node) -> bool:
    return arg(node, 1, "approximate", "none") == "none"


SUPPORTED = {"softmax": _softmax_ok, "layernorm": _layernorm_ok, "gelu": _gelu_ok}


def integer_kind(gm, node: fx.Node) -> str | None:
    """'softmax' | 'layernorm' | 'gelu' when `node` has an integer-only form, else None."""
    if node.op != "call_function" or not isinstance(node.args[0] if node.args else None,
                                                    fx.Node):
        return None
    kind = INTEGER_ONLY_KINDS.get(node.target)
    return kind if kind is not None and SUPPORTED[kind](gm, node) else None


def operand(gm, node: fx.Node, kind: str) -> fx.Node:
    """The value whose int8 form the integer op reads."""
    return softmax_input(gm, node).value if kind == "softmax" else node.args[0]
