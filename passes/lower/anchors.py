"""Rules that replace dq -> op -> [relu] -> q by one integer op of the qcompile namespace."""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompile.graph_edit import add_constant, call_before, constant_value, replace_with
from qcompile.op_kinds import activation_of, arg, conv2d_geometry
from qcompile.quant_math import shared_shift_multipliers

from .common import (channel_multipliers, check_accumulator, clamp_bounds, int32_bias,
                     lowered_name, mark_lowered, multiplier)
from .match import Q, dequantized, int8_weight, only_user_is, quantize_params

aten = torch.ops.aten


def _group_behind(qnode: fx.Node, targets) -> tuple | None:
    """For q = quantize(y): (anchor, activation) when y is anchor or relu(anchor)."""
    if quantize_params(qnode) is None:
        return None
    y = qnode.args[0]
    if not isinstance(y, fx.Node) or not only_user_is(y, qnode):
        return None
    activation = activation_of(y)
    anchor = y.args[0] if activation else y
    if activation and (not isinstance(anchor, fx.Node) or not only_user_is(anchor, y)):
        return None
    if anchor.op != "call_function" or anchor.target not in targets:
        return None
    return anchor, activation


def weighted_parts(gm, anchor: fx.Node):
    """(dequantized input, int8 weight, float bias or None) when all three are lowerable."""
    x = dequantized(anchor.args[0])
    weight = int8_weight(gm, anchor.args[1])
    bias_node = arg(anchor, 2, "bias", None)
    bias = constant_value(gm, bias_node) if bias_node is not None else None
    if x is None or weight is None or (bias_node is not None and bias is None):
        return None
    return x, weight, bias


def lower_weighted(gm, qnode: fx.Node) -> bool:
    """qlinear / qconv2d with int32 bias, per-channel requantize and fused clamp."""
    found = _group_behind(qnode, (aten.linear.default, aten.conv2d.default))
    parts = weighted_parts(gm, found[0]) if found else None
    if parts is None:
        return False
    (anchor, activation), (x, weight, bias) = found, parts
    out = quantize_params(qnode)
    scales = weight.scales.double()
    bias_i32 = int32_bias(bias, x.qparams.scale, scales, anchor)
    w_int8 = constant_value(gm, weight.int8)
    check_accumulator(w_int8[0].numel(), w_int8, bias_i32, anchor)
    m, n = channel_multipliers(x.qparams.scale * scales / out.scale, anchor)
    consts = _register(gm, anchor, qnode, bias_i32, m, n)
    lo, hi = clamp_bounds(out, activation)
    common = (x.node, x.qparams.zero_point, weight.int8, consts[0], consts[1], consts[2],
              out.zero_point, lo, hi)
    if anchor.target is aten.linear.default:
        new = call_before(gm.graph, qnode, Q.qlinear.default, common, origin=anchor,
                          name=lowered_name(anchor))
    else:
        new = call_before(gm.graph, qnode, Q.qconv2d.default, common + conv2d_geometry(anchor),
                          origin=anchor, name=lowered_name(anchor))
    mark_lowered(new, anchor, out, (x.qparams,), activation, origin=qnode.args[0])
    replace_with(qnode, new)
    return True


def _register(gm, anchor, before, bias_i32, m, n):
    bias_node = (add_constant(gm, f"{anchor.name}_bias_int32", bias_i32, before)
                 if bias_i32 is not None else None)
    m_node = add_constant(gm, f"{anchor.name}_multiplier", m, before)
    n_node = add_constant(gm, f"{anchor.name}_shift", n, before)
    return bias_node, m_node, n_node


def lower_matmul(gm, qnode: fx.Node) -> bool:
    """qmatmul of two int8 activations (attention scores and context)."""
    found = _group_behind(qnode, (aten.matmul.default, aten.bmm.default))
    if found is None or found[1] is not None:
        return False
    anchor = found[0]
    a, b = dequantized(anchor.args[0]), dequantized(anchor.args[1])
    if a is None or b is None:
        return False
    out = quantize_params(qnode)
    m, n = multiplier(a.qparams.scale * b.qparams.scale / out.scale, anchor)
    new = call_before(gm.graph, qnode, Q.qmatmul.default,
                      (a.node, a.qparams.zero_point, b.node, b.qparams.zero_point, m, n,
                       out.zero_point, out.qmin, out.qmax), origin=anchor,
                      name=lowered_name(anchor))
    mark_lowered(new, anchor, out, (a.qparams, b.qparams))
    replace_with(qnode, new)
    return True


def lower_add(gm, qnode: fx.Node) -> bool:
    """qadd: both operands rescaled to the output scale with one shared shift."""
    found = _group_behind(qnode, (aten.add.Tensor,))
    if found is None:
        return False
    (anchor, activation) = found
    a, b = dequantized(anchor.args[0]), dequantized(anchor.args[1])
    if a is None or b is None or anchor.kwargs.get("alpha", 1) != 1:
        return False
    out = quantize_params(qnode)
    (ma, mb), n = shared_shift_multipliers([a.qparams.scale / out.scale,
                                            b.qparams.scale / out.scale])
    lo, hi = clamp_bounds(out, activation)
    new = call_before(gm.graph, qnode, Q.qadd.default,
                      (a.node, a.qparams.zero_point, ma, b.node, b.qparams.zero_point, mb, n,
                       out.zero_point, lo, hi), origin=anchor, name=lowered_name(anchor))
    mark_lowered(new, anchor, out, (a.qparams, b.qparams), activation, origin=qnode.args[0])
    replace_with(qnode, new)
    return True


def lower_dynamic_linear(gm, node: fx.Node) -> bool:
    """linear(float x, dequantized int8 weight) -> qlinear_dynamic (per-token int8 at run time)."""
    if node.op != "call_function" or node.target is not aten.linear.default:
        return False
    weight = int8_weight(gm, node.args[1])
    if weight is None or dequantized(node.args[0]) is not None:
        return False
    bias = arg(node, 2, "bias", None)
    new = call_before(gm.graph, node, Q.qlinear_dynamic.default,
                      (node.args[0], weight.int8, node.args[1].args[1], bias), origin=node,
                      name=lowered_name(node))
    mark_lowered(new, node, None, ())
    replace_with(node, new)
    return True


ANCHOR_RULES = (lower_weighted, lower_matmul, lower_add, lower_dynamic_linear)
