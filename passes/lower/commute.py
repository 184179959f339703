"""Rules that move dequantize past ops that work on int8 as they are, and fold q(dq(x)).

    layout(dq(x))      -> dq(layout(x))            view, permute, transpose, flatten, ...
    max_pool2d(dq(x))  -> dq(qmax_pool2d(x))        dequantize is monotone
    relu(dq(x))        -> dq(qclamp(x, zp, 127))
    q(dq(x))           -> x, or requantize(x) when the qparams differ
    q(constant)        -> int8 constant
"""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompile.facts import facts_of, update_facts
from qcompile.graph_edit import add_constant, call_before, constant_value, replace_with
from qcompile.op_kinds import LAYOUT_OPS, arg
from qcompile.ops import reference

from .common import multiplier
from .match import Q, dequantized, quantize_params

aten = torch.ops.aten


def _redequantize(node: fx.Node, int8_node: fx.Node, qp) -> None:
    """Users of `node` now read dequantize(int8_node)."""
    with node.graph.inserting_after(int8_node):
        dq = node.graph.create_node("call_function", Q.dequantize.default,
                                    (int8_node, qp.scale, qp.zero_point), name=f"{node.name}_dq")
    node.replace_all_uses_with(dq)
    update_facts(int8_node, qparams=qp)


def commute_layout(gm, node: fx.Node) -> bool:
    src = dequantized(node.args[0]) if node.target in LAYOUT_OPS else None
    if src is None:
        return False
    new = call_before(gm.graph, node, node.target, (src.node,) + tuple(node.args[1:]),
                      node.kwargs, origin=node, name=f"{node.name}_i8")
    _redequantize(node, new, src.qparams)
    gm.graph.erase_node(node)
    return True


def commute_max_pool(gm, node: fx.Node) -> bool:
    src = dequantized(node.args[0]) if node.target is aten.max_pool2d.default else None
    if src is None:
        return False
    kernel = list(node.args[1])
    stride = list(arg(node, 2, "stride", []) or kernel)
    padding = list(arg(node, 3, "padding", [0, 0]))
    dilation = list(arg(node, 4, "dilation", [1, 1]))
    ceil_mode = bool(arg(node, 5, "ceil_mode", False))
    _swap_for_int8(gm, node, src, Q.qmax_pool2d.default,
                   (src.node, kernel, stride, padding, dilation, ceil_mode))
    return True


def commute_relu(gm, node: fx.Node) -> bool:
    src = dequantized(node.args[0]) if node.target is aten.relu.default else None
    if src is None:
        return False
    lo = max(-128, min(127, src.qparams.zero_point))
    _swap_for_int8(gm, node, src, Q.qclamp.default, (src.node, lo, 127), activation="relu")
    return True


def _swap_for_int8(gm, node: fx.Node, src, target, args, **facts) -> None:
    """Replace float `node` reading dq(src) by `target(*args)` on int8, then dequantize."""
    new = call_before(gm.graph, node, target, args, origin=node, name=f"q{node.name}")
    update_facts(new, origin=node.name, input_qparams=(src.qparams,), **facts)
    _redequantize(node, new, src.qparams)
    gm.graph.erase_node(node)


def fold_requantize(gm, node: fx.Node) -> bool:
    out = quantize_params(node)
    src = dequantized(node.args[0]) if out is not None else None
    if src is None:
        return False
    if (src.qparams.scale, src.qparams.zero_point) == (out.scale, out.zero_point) and \
            (out.qmin, out.qmax) == (-128, 127):
        node.replace_all_uses_with(src.node)
        gm.graph.erase_node(node)
        return True
    m, n = multiplier(src.qparams.scale / out.scale, node)
    new = call_before(gm.graph, node, Q.requantize.default,
                      (src.node, src.qparams.zero_point, m, n, out.zero_point, out.qmin, out.qmax),
                      name=f"{src.node.name}_requant")
    update_facts(new, qparams=out, input_qparams=(src.qparams,), origin=facts_of(node).origin)
    replace_with(node, new)
    return True


def fold_constant_quantize(gm, node: fx.Node) -> bool:
    out = quantize_params(node)
    value = constant_value(gm, node.args[0]) if out is not None else None
    if value is None:
        return False
    int8 = reference.quantize(value.float(), out.scale, out.zero_point, out.qmin, out.qmax)
    const = add_constant(gm, f"{node.args[0].target}_int8", int8, node)
    update_facts(const, qparams=out)
    replace_with(node, const)
    return True


COMMUTE_RULES = (commute_layout, commute_max_pool, commute_relu, fold_constant_quantize,
                 fold_requantize)
