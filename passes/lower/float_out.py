"""Rules for quantized ops whose output feeds float ops: int8 in, exact int32 sum, float32 out.

    linear(dq(x), dq_pc(w), b)   -> qlinear_f32(x, w, b, s_x * s_w)     (no quantize after it)
    conv2d(dq(x), dq_pc(w), b)   -> qconv2d_f32(...)
    matmul(dq(a), dq(b))         -> qmatmul_f32(a, b, s_a * s_b)
"""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompile.graph_edit import add_constant, call_before, replace_with
from qcompile.op_kinds import activation_of, arg, conv2d_geometry

from .anchors import weighted_parts
from .common import lowered_name, mark_lowered
from .match import Q, dequantized, quantize_params

aten = torch.ops.aten


def feeds_quantize(node: fx.Node) -> bool:
    """True when the node's value is quantized right after it (or after its fused ReLU)."""
    users = list(node.users)
    if len(users) != 1:
        return False
    user = users[0]
    if activation_of(user) and len(user.users) == 1:
        user = next(iter(user.users))
    return quantize_params(user) is not None


def lower_weighted_float_out(gm, node: fx.Node) -> bool:
    if node.op != "call_function" or node.target not in (aten.linear.default,
                                                         aten.conv2d.default):
        return False
    # no users: the dead anchor left behind once its dq -> op -> q pattern was lowered
    parts = weighted_parts(gm, node) if node.users and not feeds_quantize(node) else None
    if parts is None:
        return False
    x, weight, _ = parts
    bias_node = arg(node, 2, "bias", None)
    scale = (torch.tensor(x.qparams.scale, dtype=torch.float32) * weight.scales.float())
    scale_node = add_constant(gm, f"{node.name}_out_scale", scale, node)
    common = (x.node, x.qparams.zero_point, weight.int8, bias_node, scale_node)
    if node.target is aten.linear.default:
        new = call_before(gm.graph, node, Q.qlinear_f32.default, common, origin=node,
                          name=lowered_name(node))
    else:
        new = call_before(gm.graph, node, Q.qconv2d_f32.default, common + conv2d_geometry(node),
                          origin=node, name=lowered_name(node))
    mark_lowered(new, node, None, (x.qparams,))
    replace_with(node, new)
    return True


def lower_matmul_float_out(gm, node: fx.Node) -> bool:
    if node.op != "call_function" or node.target not in (aten.matmul.default, aten.bmm.default):
        return False
    a, b = dequantized(node.args[0]), dequantized(node.args[1])
    if a is None or b is None or not node.users or feeds_quantize(node):
        return False
    scale = float(torch.tensor(a.qparams.scale, dtype=torch.float32)
                  * torch.tensor(b.qparams.scale, dtype=torch.float32))
    new = call_before(gm.graph, node, Q.qmatmul_f32.default,
                      (a.node, a.qparams.zero_point, b.node, b.qparams.zero_point, scale),
                      origin=node, name=lowered_name(node))
    mark_lowered(new, node, None, (a.qparams, b.qparams))
    replace_with(node, new)
    return True


FLOAT_OUT_RULES = (lower_weighted_float_out, lower_matmul_float_out)
