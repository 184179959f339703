"""cast-lowp: the fp16 / bf16 recipes. Linear, conv2d and matmul run on half-precision
operands with float32 accumulation (qcompile.linear_lowp, conv2d_lowp, matmul_lowp);
weights are stored in half precision. Other ops stay float32."""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompile.facts import update_facts
from qcompile.graph_edit import add_constant, call_before, constant_value, replace_with
from qcompile.op_kinds import arg, conv2d_geometry
from qcompile.ops.lowp import DTYPES
from qcompile.registry import PassResult, register_pass

from .plan import quantizable_anchors

Q = torch.ops.qcompile
aten = torch.ops.aten


def _weighted(gm, node: fx.Node, kind: str, dtype: str) -> fx.Node:
    weight = constant_value(gm, node.args[1]).detach().to(DTYPES[dtype])
    w = add_constant(gm, f"{node.name}_weight_{dtype}", weight, node)
    bias = arg(node, 2, "bias", None)
    if kind == "linear":
        return call_before(gm.graph, node, Q.linear_lowp.default, (node.args[0], w, bias, dtype),
                           origin=node, name=f"{node.name}_{dtype}")
    return call_before(gm.graph, node, Q.conv2d_lowp.default,
                       (node.args[0], w, bias, *conv2d_geometry(node), dtype), origin=node,
                       name=f"{node.name}_{dtype}")


@register_pass("cast-lowp")
def cast_lowp(gm: fx.GraphModule, ctx) -> PassResult:
    """Run linear/conv2d/matmul on fp16 or bf16 operands with float32 accumulation."""
    dtype = ctx.recipe.weights
    if dtype not in DTYPES:
        return PassResult(gm, False, {})
    count = 0
    for node, kind in quantizable_anchors(gm, ctx):
        if kind in ("linear", "conv2d"):
            new = _weighted(gm, node, kind, dtype)
        elif kind == "matmul":
            new = call_before(gm.graph, node, Q.matmul_lowp.default,
                              (node.args[0], node.args[1], dtype), origin=node,
                              name=f"{node.name}_{dtype}")
        else:
            continue
        update_facts(new, origin=node.name)
        replace_with(node, new)
        count += 1
    return PassResult(gm, count > 0, {"cast": count})
