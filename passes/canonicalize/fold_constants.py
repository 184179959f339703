"""fold-constants: evaluate every op whose inputs are all constants, once, at compile time."""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompile.graph_edit import add_constant, constant_value
from qcompile.registry import PassResult, register_pass

MAX_FOLDED_ELEMENTS = 1 << 22
_NEVER_FOLD = {torch.ops.aten.rand.default, torch.ops.aten.randn.default,
               torch.ops.aten.dropout.default}


def _evaluate_constants(gm: fx.GraphModule) -> dict[fx.Node, object]:
    values: dict[fx.Node, object] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = constant_value(gm, node)
            if value is not None:
                values[node] = value
            continue
        if node.op != "call_function" or node.is_impure() or node.target in _NEVER_FOLD:
            continue
        inputs = node.all_input_nodes
        if not all(i in values for i in inputs):
            continue
        args = fx.node.map_arg(node.args, lambda n: values[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n])
        with torch.no_grad():
            values[node] = node.target(*args, **kwargs)
    return values


def _worth_replacing(node: fx.Node, value) -> bool:
    if node.op != "call_function" or not isinstance(value, torch.Tensor):
        return False
    if value.numel() > MAX_FOLDED_ELEMENTS:
        return False
    return any(u.op != "get_attr" for u in node.users)


@register_pass("fold-constants")
def fold_constants(gm: fx.GraphModule, ctx) -> PassResult:
    """Replace constant subgraphs by their value (a new buffer read with get_attr)."""
    values = _evaluate_constants(gm)
    folded = 0
    for node, value in values.items():
        if not _worth_replacing(node, value):
            continue
        const = add_constant(gm, f"_folded_{node.name}", value, before=node)
        node.replace_all_uses_with(const)
        folded += 1
    if folded:
        gm.graph.eliminate_dead_code()
    return PassResult(gm, folded > 0, {"folded": folded})
