"""Pattern helpers for lowering: recognise quantize/dequantize nodes and read their qparams."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

from qcompile.facts import QParams
from qcompile.graph_edit import constant_value

Q = torch.ops.qcompile


@dataclass(frozen=True)
class Quantized:
    """An int8 value `node` with per-tensor qparams."""
    node: fx.Node
    qparams: QParams


def is_call(node, target) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target is target


def dequantized(node) -> Quantized | None:
    """If `node` is dequantize(q, s, zp): the int8 input and its qparams."""
    if not is_call(node, Q.dequantize.default):
        return None
    q, scale, zp = node.args[:3]
    return Quantized(q, QParams(float(scale), int(zp)))


def quantize_params(node) -> QParams | None:
    """If `node` is quantize(x, s, zp, qmin, qmax): its qparams."""
    if not is_call(node, Q.quantize.default):
        return None
    _, scale, zp, qmin, qmax = node.args[:5]
    return QParams(float(scale), int(zp), int(qmin), int(qmax))


@dataclass(frozen=True)
class PerChannelWeight:
    int8: fx.Node
    scales: torch.Tensor


def int8_weight(gm, node) -> PerChannelWeight | None:
    """If `node` is dequantize_per_channel(int8 constant, scales, 0): the weight."""
    if not is_call(node, Q.dequantize_per_channel.default):
        return None
    wq, scales, axis = node.args[:3]
    values = constant_value(gm, scales)
    if axis != 0 or values is None or constant_value(gm, wq) is None:
        return None
    return PerChannelWeight(wq, values)


def only_user_is(node: fx.Node, user: fx.Node) -> bool:
    return list(node.users) == [user]
