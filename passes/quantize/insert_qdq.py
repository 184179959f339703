"""insert-qdq: observers become quantize/dequantize pairs; weights become int8 per channel."""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompile.errors import PipelineError
from qcompile.facts import ChannelQParams, facts_of, update_facts
from qcompile.graph_edit import add_constant, call_before, constant_value
from qcompile.quant_math import WEIGHT_QMAX, WEIGHT_QMIN
from qcompile.weight_ranges import weight_scales
from qcompile.op_kinds import module_path
from qcompile.ops import reference
from qcompile.ops.weight_only import quantize_int4_codes
from qcompile.registry import PassResult, register_pass

from .gptq import install_int4_weight
from .plan import quantizable_anchors
from .scale_profile import constrain_weight_scales, constrained, profile_warning
from .site import observer_sites

Q = torch.ops.qcompile


def _replace_site(gm: fx.GraphModule, node: fx.Node) -> None:
    qp = facts_of(node).qparams
    if qp is None:
        raise PipelineError("observer has no qparams: run 'calibrate' before 'insert-qdq'",
                            node=node)
    value = node.args[0]
    q = call_before(gm.graph, node, Q.quantize.default,
                    (value, qp.scale, qp.zero_point, qp.qmin, qp.qmax), origin=value,
                    name=f"{value.name}_q")
    dq = call_before(gm.graph, node, Q.dequantize.default, (q, qp.scale, qp.zero_point),
                     origin=value, name=f"{value.name}_dq")
    update_facts(q, qparams=qp, observed=facts_of(node).observed)
    update_facts(dq, input_qparams=(qp,))
    node.replace_all_uses_with(dq)
    target = node.target
    gm.graph.erase_node(node)
    gm.delete_submodule(target)


def _quantize_weight_int4(gm: fx.GraphModule, anchor: fx.Node, options) -> None:
    weight_node = anchor.args[1]
    if isinstance(weight_node, fx.Node) and weight_node.target is Q.dequantize_int4.default:
        return                                      # already solved (gptq)
    weight = constant_value(gm, anchor.args[1]).detach().float()
    codes, scales, zeros = quantize_int4_codes(weight, options.group_size,
                                               options.weight_symmetric)
    install_int4_weight(gm, anchor, codes, scales, zeros, options.group_size)


def _profiled_scales(weight: torch.Tensor, anchor: fx.Node, ctx) -> torch.Tensor:
    """The weight's scales by the options' method, under the options' scale profile (with a
    warning where the profile costs too much; see scale_profile.py)."""
    free = weight_scales(weight, ctx.options.weight_calibration)
    if not constrained(ctx.options):
        return free
    bound = constrain_weight_scales(free, ctx.options)
    warning = profile_warning(module_path(anchor) or anchor.name, weight, free, bound)
    if warning:
        ctx.warn(warning)
    return bound


def _quantize_weight(gm: fx.GraphModule, anchor: fx.Node, ctx,
                     weight_only: bool = False) -> None:
    """int8 per output channel; `weight_only` dequantizes with dequantize_w8 (w8a16), which
    lowers to qlinear_w8 instead of an integer-activation op."""
    if isinstance(anchor.args[1], fx.Node) and anchor.args[1].target is Q.dequantize_w8.default:
        return                                      # already solved (gptq)
    weight = constant_value(gm, anchor.args[1]).detach().float()
    scales = _profiled_scales(weight, anchor, ctx)
    wq = reference.quantize_per_channel(weight, scales, 0, WEIGHT_QMIN, WEIGHT_QMAX)
    wq_node = add_constant(gm, f"{anchor.name}_weight_int8", wq, anchor)
    ws_node = add_constant(gm, f"{anchor.name}_weight_scale", scales, anchor)
    target, args = ((Q.dequantize_w8.default, (wq_node, ws_node)) if weight_only else
                    (Q.dequantize_per_channel.default, (wq_node, ws_node, 0)))
    dq = call_before(gm.graph, anchor, target, args, name=f"{anchor.name}_weight_dq")
    anchor.args = (anchor.args[0], dq) + tuple(anchor.args[2:])
    update_facts(anchor, weight_qparams=ChannelQParams(tuple(scales.tolist())))


@register_pass("insert-qdq")
def insert_qdq(gm: fx.GraphModule, ctx) -> PassResult:
    """Replace observer sites by quantize->dequantize; quantize conv/linear weights per channel."""
    anchors = quantizable_anchors(gm, ctx)
    sites = observer_sites(gm)
    for node, _ in sites:
        _replace_site(gm, node)
    weights = 0
    for anchor, kind in anchors:
        if ctx.recipe.weights == "int4-group":
            _quantize_weight_int4(gm, anchor, ctx.options)
        elif kind in ("linear", "conv2d"):
            _quantize_weight(gm, anchor, ctx, weight_only=ctx.recipe.weights == "int8-weight-only")
        else:
            continue
        weights += 1
    return PassResult(gm, bool(sites) or weights > 0,
                      {"activations": len(sites), "weights": weights})
