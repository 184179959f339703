"""decompose-attention: scaled_dot_product_attention -> matmul, scale, mask, softmax, matmul.

The two matmuls can then run as int8 qmatmul; softmax stays a float island.
"""
from __future__ import annotations

import math

import torch
import torch.fx as fx

from qcompile.facts import facts_of
from qcompile.graph_edit import call_before
from qcompile.op_kinds import arg
from qcompile.registry import PassResult, register_pass

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default


def _head_dim(q: fx.Node) -> int | None:
    info = facts_of(q).tensor
    return info.shape[-1] if info is not None and info.shape else None


def _decomposable(node: fx.Node) -> bool:
    dropout = arg(node, 4, "dropout_p", 0.0)
    causal = arg(node, 5, "is_causal", False)
    gqa = node.kwargs.get("enable_gqa", False)
    return dropout == 0.0 and not causal and not gqa and _head_dim(node.args[0]) is not None


def _decompose(node: fx.Node) -> None:
    g = node.graph
    q, k, v = node.args[:3]
    mask = arg(node, 3, "attn_mask", None)
    scale = arg(node, 6, "scale", None)
    scale = scale if scale is not None else 1.0 / math.sqrt(_head_dim(q))
    kt = call_before(g, node, aten.transpose.int, (k, -2, -1), origin=node)
    scores = call_before(g, node, aten.matmul.default, (q, kt), origin=node)
    scores = call_before(g, node, aten.mul.Tensor, (scores, scale), origin=node)
    if mask is not None:
        mask_info = facts_of(mask).tensor
        if mask_info is not None and mask_info.dtype == "bool":
            keep_out = call_before(g, node, aten.logical_not.default, (mask,), origin=node)
            scores = call_before(g, node, aten.masked_fill.Scalar,
                                 (scores, keep_out, float("-inf")), origin=node)
        else:
            scores = call_before(g, node, aten.add.Tensor, (scores, mask), origin=node)
    probs = call_before(g, node, aten.softmax.int, (scores, -1), origin=node)
    out = call_before(g, node, aten.matmul.default, (probs, v), origin=node)
    node.replace_all_uses_with(out)
    g.erase_node(node)


@register_pass("decompose-attention")
def decompose_attention(gm: fx.GraphModule, ctx) -> PassResult:
    """Split fused attention into matmul/softmax/matmul so the matmuls can be quantized."""
    done, kept = 0, 0
    for node in list(gm.graph.find_nodes(op="call_function", target=SDPA)):
        if _decomposable(node):
            _decompose(node)
            done += 1
        else:
            kept += 1
    if kept:
        ctx.note(f"{kept} attention op(s) with dropout, causal or grouped-query flags kept whole")
    return PassResult(gm, done > 0, {"decomposed": done, "kept": kept})
