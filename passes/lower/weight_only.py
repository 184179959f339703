"""Rules for weight-only linears, float activations throughout:
linear(x, dequantize_int4(codes, scales, zeros, g), b) -> qlinear_w4(x, codes, scales, zeros, g, b)
linear(x, dequantize_w8(w_int8, scales), b) -> qlinear_w8(x, w_int8, scales, b)."""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompile.graph_edit import call_before, replace_with
from qcompile.op_kinds import arg

from .common import lowered_name, mark_lowered
from .match import Q, is_call

aten = torch.ops.aten


def lower_weight_only_linear(gm, node: fx.Node) -> bool:
    if node.op != "call_function" or node.target is not aten.linear.default:
        return False
    weight = node.args[1]
    if not is_call(weight, Q.dequantize_int4.default):
        return False
    packed, scales, zeros, group_size = weight.args[:4]
    new = call_before(gm.graph, node, Q.qlinear_w4.default,
                      (node.args[0], packed, scales, zeros, group_size,
                       arg(node, 2, "bias", None)), origin=node, name=lowered_name(node))
    mark_lowered(new, node, None, ())
    replace_with(node, new)
    return True


def lower_weight_only_linear_w8(gm, node: fx.Node) -> bool:
    if node.op != "call_function" or node.target is not aten.linear.default:
        return False
    weight = node.args[1]
    if not is_call(weight, Q.dequantize_w8.default):
        return False
    new = call_before(gm.graph, node, Q.qlinear_w8.default,
                      (node.args[0], *weight.args[:2], arg(node, 2, "bias", None)),
                      origin=node, name=lowered_name(node))
    mark_lowered(new, node, None, ())
    replace_with(node, new)
    return True


WEIGHT_ONLY_RULES = (lower_weight_only_linear, lower_weight_only_linear_w8)
