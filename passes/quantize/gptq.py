"""gptq: weight-only codes chosen by GPTQ (recipes w4a16-gptq, w8a16-gptq) instead of rounding.

Collects each linear input's Hessian over the calibration batches, solves every linear's
codes with gptq_solver, and puts `dequantize_int4(codes, scales, zeros, g)` (int4 groups) or
`dequantize_w8(codes, scales)` (int8 per channel) in front of the linear, exactly as
insert-qdq does for round-to-nearest (which then leaves it alone).
"""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompile.graph_edit import add_constant, call_before, constant_value
from qcompile.ops.weight_only import pack_int4
from qcompile.progress import Progress
from qcompile.registry import PassResult, register_pass

from .activation_stats import input_hessians
from .gptq_solver import GptqSettings, gptq_quantize
from .plan import quantizable_anchors

Q = torch.ops.qcompile


def _settings(ctx, damp: float, act_order: bool) -> GptqSettings:
    bits = 8 if ctx.recipe.weights == "int8-weight-only" else 4
    return GptqSettings(group_size=ctx.options.group_size, symmetric=ctx.options.weight_symmetric,
                        damp=damp, act_order=act_order, bits=bits)


def install_int8_weight(gm, linear: fx.Node, codes, scales) -> None:
    """Replace the linear's weight by dequantize_w8 of int8 codes and per-row scales."""
    wq = add_constant(gm, f"{linear.name}_weight_int8", codes, linear)
    ws = add_constant(gm, f"{linear.name}_weight_scale", scales.reshape(-1), linear)
    dq = call_before(gm.graph, linear, Q.dequantize_w8.default, (wq, ws),
                     name=f"{linear.name}_weight_dq")
    linear.args = (linear.args[0], dq) + tuple(linear.args[2:])


def install_int4_weight(gm, linear: fx.Node, codes, scales, zeros, group_size: int) -> None:
    """Replace the linear's weight by dequantize_int4 of the given codes."""
    parts = (("int4", pack_int4(codes)), ("scale", scales), ("zero", zeros))
    nodes = [add_constant(gm, f"{linear.name}_weight_{name}", value, linear)
             for name, value in parts]
    dq = call_before(gm.graph, linear, Q.dequantize_int4.default, (*nodes, group_size),
                     name=f"{linear.name}_weight_dq")
    linear.args = (linear.args[0], dq) + tuple(linear.args[2:])


@register_pass("gptq")
def gptq(gm: fx.GraphModule, ctx, *, damp=0.01, act_order=False) -> PassResult:
    """GPTQ weights from calibration Hessians (w4a16-gptq, w8a16-gptq; damp, act-order)."""
    if ctx.recipe.weight_solver != "gptq":
        return PassResult(gm, False, {})
    linears = [node for node, kind in quantizable_anchors(gm, ctx) if kind == "linear"]
    inputs = list(dict.fromkeys(node.args[0] for node in linears))
    hessians = input_hessians(gm, inputs, ctx)
    settings = _settings(ctx, damp, act_order)
    with Progress("gptq", total=len(linears), enabled=ctx.options.progress) as bar:
        for linear in linears:
            weight = constant_value(gm, linear.args[1])
            codes, scales, zeros = gptq_quantize(weight, hessians[linear.args[0]], settings)
            if settings.bits == 8:
                install_int8_weight(gm, linear, codes, scales)
            else:
                install_int4_weight(gm, linear, codes, scales, zeros, settings.group_size)
            bar.update()
    return PassResult(gm, bool(linears), {"layers": len(linears)})
