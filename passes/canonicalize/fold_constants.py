"""fold-constants: evaluate every op whose inputs are all constants, once, at compile time."""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompile.graph_edit import add_constant, constant_value
from qcompile.registry import PassResult, register_pass

MAX_FOLDED_ELEMENTS = 1 << 22
_NEVER_FOLD = {torch.ops.aten.rand.default, torch.ops.aten.randn.default,
               torch.ops.aten.dropout.default}


def _returns_alias(node: fx.Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return (node.op == "call_function" and schema is not None and bool(schema.returns)
            and schema.returns[0].alias_info is not None and bool(node.args))


def _written_in_place(gm: fx.GraphModule) -> set[fx.Node]:
    """Values an in-place op writes to, and the tensors they are views of: not constants."""
    written: set[fx.Node] = set()
    for node in gm.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        for i, a in enumerate(schema.arguments if node.op == "call_function" and schema else ()):
            if a.alias_info is None or not a.alias_info.is_write:
                continue
            value = node.args[i] if i < len(node.args) else node.kwargs.get(a.name)
            while isinstance(value, fx.Node) and value not in written:
                written.add(value)
                value = value.args[0] if _returns_alias(value) else None
    return written


def _evaluate_constants(gm: fx.GraphModule) -> dict[fx.Node, object]:
    values: dict[fx.Node, object] = {}
    written = _written_in_place(gm)
    for node in gm.graph.nodes:
        if node in written:
            continue
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
