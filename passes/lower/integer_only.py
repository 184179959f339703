"""integer-only: dequantize -> softmax | layer_norm | gelu -> quantize becomes one integer op.

Runs after insert-qdq and before lower-int8 (which then lowers the ops around the new
ones), only with option integer_only. Layout ops are first moved behind dequantize (the
commute rule of lower-int8) so that a residual linear's int8 input is visible. The rules are data
(INTEGER_RULES: kind -> builder of the kernel's arguments); every other node stays as it
is, and float ops without an integer form keep their float_reason.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompile.errors import LoweringError
from qcompile.facts import QParams
from qcompile.graph_edit import add_constant, call_before, constant_value, replace_with
from qcompile.graph_run import record_tensor_facts
from qcompile.op_kinds import arg
from qcompile.ops.integer_only import WIDE_MAX, WIDE_MIN
from qcompile.ops.integer_only_params import (OutQ, add_params, gelu_params, layernorm_params,
                                              softmax_params, wide_linear_params, wide_scale)
from qcompile.registry import PassResult, register_pass

from .anchors import weighted_parts
from .common import check_accumulator, lowered_name, mark_lowered
from .commute import commute_layout
from .integer_only_match import integer_kind, softmax_input
from .lower_int8 import apply_rules
from .match import Q, Quantized, dequantized, only_user_is, quantize_params

aten = torch.ops.aten


def _out(qp: QParams) -> OutQ:
    return OutQ(qp.scale, qp.zero_point, qp.qmin, qp.qmax)


def _softmax(gm, node: fx.Node, before: fx.Node, out: QParams):
    found = softmax_input(gm, node)
    x = dequantized(found.value)
    if x is None:
        return None
    args = softmax_params(x.qparams.scale, x.qparams.zero_point, _out(out), found.factor)
    return x, Q.i_softmax.default, (x.node, *args, int(arg(node, 1, "dim", -1)),
                                    found.mask)


def _gelu(gm, node: fx.Node, before: fx.Node, out: QParams):
    x = dequantized(node.args[0])
    if x is None:
        return None
    args = gelu_params(x.qparams.scale, x.qparams.zero_point, _out(out))
    return x, Q.i_gelu.default, (x.node, *args)


def _wide_qparams(scale: float) -> QParams:
    return QParams(scale, 0, WIDE_MIN, WIDE_MAX, "int16")


def _wide_ready(gm, value) -> bool:
    """An int8 operand, or a float linear of int8 operands read only here."""
    if dequantized(value) is not None:
        return True
    return (isinstance(value, fx.Node) and value.target is aten.linear.default
            and len(value.users) == 1 and weighted_parts(gm, value) is not None)


def _wide_operand(gm, value, before: fx.Node, scale: float) -> Quantized:
    """A residual operand as a Quantized value: int8 via dequantize, or a linear of int8
    operands turned into a 16-bit i_linear at `scale`."""
    x = dequantized(value)
    if x is not None:
        return x
    x, weight, bias = weighted_parts(gm, value)
    w_int8 = constant_value(gm, weight.int8)
    consts = wide_linear_params(x.qparams.scale, weight.scales, bias, scale)
    check_accumulator(w_int8[0].numel(), w_int8, consts[0], value)
    names = ("bias_int32", "multiplier", "shift")
    nodes = [None if t is None else add_constant(gm, f"{value.name}_{n}", t, before)
             for n, t in zip(names, consts)]
    wide = call_before(gm.graph, before, Q.i_linear.default,
                       (x.node, x.qparams.zero_point, weight.int8, *nodes),
                       origin=value, name=f"{value.name}_i32")
    mark_lowered(wide, value, _wide_qparams(scale), (x.qparams,), origin=value)
    return Quantized(wide, _wide_qparams(scale))


def _wide_sum(gm, x: Quantized, before: fx.Node):
    """For dequantize(quantize(add(a, b))) with a, b int8 or linear: i_add at a 16-bit
    scale from the add's calibrated range, as a Quantized value; else None."""
    qnode = x.node
    value = qnode.args[0] if quantize_params(qnode) is not None else None
    if not (isinstance(value, fx.Node) and value.target is aten.add.Tensor
            and value.kwargs.get("alpha", 1) == 1 and len(value.users) == 1
            and all(_wide_ready(gm, v) for v in value.args[:2])):
        return None
    qp = x.qparams
    scale = wide_scale((qp.qmin - qp.zero_point) * qp.scale, (qp.qmax - qp.zero_point) * qp.scale)
    a = _wide_operand(gm, value.args[0], before, scale)
    b = _wide_operand(gm, value.args[1], before, scale)
    args = add_params(a.qparams.scale, a.qparams.zero_point, b.qparams.scale,
                      b.qparams.zero_point, scale)
    wide = call_before(gm.graph, before, Q.i_add.default,
                       (a.node, args[0], args[1], b.node, args[2], args[3], args[4]),
                       origin=value, name=lowered_name(value))
    mark_lowered(wide, value, _wide_qparams(scale), (a.qparams, b.qparams), origin=value)
    return Quantized(wide, _wide_qparams(scale))


def _layernorm(gm, node: fx.Node, before: fx.Node, out: QParams):
    x = dequantized(node.args[0])
    if x is None:
        return None
    x = _wide_sum(gm, x, before) or x
    weight, bias = (constant_value(gm, arg(node, i, name, None))
                    for i, name in ((2, "weight"), (3, "bias")))
    n = int(list(node.args[1])[0])
    consts = layernorm_params(x.qparams.scale, x.qparams.zero_point, weight, bias,
                              float(arg(node, 4, "eps", 1e-5)), _out(out), n)
    gamma = add_constant(gm, f"{node.name}_gamma_int32", consts.gamma, before)
    beta = add_constant(gm, f"{node.name}_beta_int32", consts.beta, before)
    args = consts.args()
    return x, Q.i_layernorm.default, (x.node, args[0], gamma, beta, *args[3:])


# kind -> builder(gm, float op, quantize node, output qparams) -> (input, target, args) | None
INTEGER_RULES = {"softmax": _softmax, "gelu": _gelu, "layernorm": _layernorm}


def _build(gm, node: fx.Node, kind: str, qnode: fx.Node, out: QParams):
    try:
        return INTEGER_RULES[kind](gm, node, qnode, out)
    except ValueError as err:
        raise LoweringError(f"no integer-only {kind} for these qparams: {err}",
                            node=node) from None


def lower_integer_only(gm, qnode: fx.Node) -> bool:
    """quantize(op(dequantize(q))) -> qcompile.i_<op>(q, ...) for softmax, layernorm, gelu."""
    out = quantize_params(qnode)
    node = qnode.args[0] if out is not None else None
    if not isinstance(node, fx.Node) or not only_user_is(node, qnode):
        return False
    kind = integer_kind(gm, node)
    built = _build(gm, node, kind, qnode, out) if kind is not None else None
    if built is None:
        return False
    x, target, args = built
    new = call_before(gm.graph, qnode, target, args, origin=node, name=lowered_name(node))
    mark_lowered(new, node, out, (x.qparams,), origin=node)
    replace_with(qnode, new)
    return True


@register_pass("integer-only")
def integer_only(gm: fx.GraphModule, ctx) -> PassResult:
    """With option integer_only: softmax, layer_norm and GELU islands as integer ops."""
    if not ctx.options.integer_only:
        return PassResult(gm, False, {})
    moved = apply_rules(gm, (commute_layout,),
                        refresh=lambda: record_tensor_facts(gm, ctx.example_inputs))
    fired = apply_rules(gm, (lower_integer_only,))
    if fired:
        gm.graph.eliminate_dead_code()
    if moved or fired:
        gm.recompile()
    return PassResult(gm, bool(moved or fired), {"lowered": sum(fired.values()),
                                                 "layout_moved": sum(moved.values())})
