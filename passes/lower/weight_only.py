"""Rules for weight-only linears, float activations throughout:
linear(x, dequantize_int4(codes, scales, zeros, g), b) -> qlinear_w4(x, codes, scales, zeros, g, b)
linear(x, dequantize_w8(w_int8, scales), b) -> qlinear_w8(x, w_int8, scales, b)."""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompile.graph_edit import call_before, replace_with
from qcompile.op_kinds import arg

from .common import lowered_name, mark_lowered
from .match import Q

aten = torch.ops.aten


# weight dequantize op -> (weight-only linear op, how many of its arguments it takes over)
_WEIGHT_ONLY = {
    Q.dequantize_int4.default: (Q.qlinear_w4.default, 4),  # codes, scales, zeros, group size
    Q.dequantize_w8.default: (Q.qlinear_w8.default, 2),    # int8 weight, scales
}


def lower_weight_only_linear(gm, node: fx.Node) -> bool:
    if node.op != "call_function" or node.target is not aten.linear.default:
        return False
    weight = node.args[1]
    if not isinstance(weight, fx.Node) or weight.target not in _WEIGHT_ONLY:
        return False
    op, count = _WEIGHT_ONLY[weight.target]
    new = call_before(gm.graph, node, op,
                      (node.args[0], *weight.args[:count], arg(node, 2, "bias", None)),
                      origin=node, name=lowered_name(node))
    mark_lowered(new, node, None, ())
    replace_with(node, new)
    return True


WEIGHT_ONLY_RULES = (lower_weight_only_linear,)
