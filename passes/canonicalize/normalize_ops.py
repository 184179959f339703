"""normalize-ops: one spelling per op, and no inference no-ops (dropout, asserts, same-dtype casts)."""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompile.facts import facts_of
from qcompile.registry import PassResult, register_pass

aten = torch.ops.aten

# In-place or alternative spellings -> the one the rest of the compiler matches.
RESPELL = {
    aten.relu_.default: aten.relu.default,
    aten.hardtanh_.default: aten.hardtanh.default,
    aten.add_.Tensor: aten.add.Tensor,
    aten.mul_.Tensor: aten.mul.Tensor,
    aten.silu_.default: aten.silu.default,
    aten.gelu_.default: aten.gelu.default,
    aten.relu6.default: None,
}

IDENTITY = {aten.contiguous.default, aten.clone.default, aten.alias.default,
            aten.detach.default, aten.dropout.default, aten.feature_dropout.default}
CASTS = {aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten._to_copy.default}
ERASE = {aten._assert_tensor_metadata.default, aten._assert_scalar.default}


def _is_noop_cast(node: fx.Node) -> bool:
    src = node.args[0]
    if not isinstance(src, fx.Node):
        return False
    a, b = facts_of(src).tensor, facts_of(node).tensor
    return a is not None and b is not None and a.dtype == b.dtype


def _is_view(node) -> bool:
    """True for an op whose result aliases its first argument (a view, an in-place op)."""
    schema = getattr(node.target, "_schema", None)
    return (isinstance(node, fx.Node) and node.op == "call_function" and schema is not None
            and bool(schema.returns) and schema.returns[0].alias_info is not None)


def _writes(user: fx.Node, node: fx.Node) -> bool:
    schema = getattr(user.target, "_schema", None)
    for i, a in enumerate(schema.arguments if schema is not None else ()):
        value = user.args[i] if i < len(user.args) else user.kwargs.get(a.name)
        if value is node and a.alias_info is not None and a.alias_info.is_write:
            return True
    return False


def _written_in_place(node: fx.Node) -> bool:
    """True when an op writes into `node` in place, directly or through a view of it."""
    return any(_writes(u, node) or (_is_view(u) and u.args[0] is node and _written_in_place(u))
               for u in node.users)


def _respell_is_safe(node: fx.Node) -> bool:
    """An in-place op may become out-of-place only when no one else sees the write: its
    target is no view, has no views, and is read by nobody after it."""
    target = node.args[0] if node.args else None
    if not isinstance(target, fx.Node):
        return True
    return not _is_view(target) and not any(
        u is not node and (_is_view(u) or u > node) for u in target.users)


def _rewrite(node: fx.Node) -> bool:
    target = node.target
    if target in ERASE and not node.users:
        node.graph.erase_node(node)
        return True
    if (target in IDENTITY or (target in CASTS and _is_noop_cast(node))) and \
            not _written_in_place(node):
        node.replace_all_uses_with(node.args[0])
        node.graph.erase_node(node)
        return True
    if target is aten.relu6.default:
        node.target, node.args = aten.hardtanh.default, (node.args[0], 0.0, 6.0)
        return True
    if RESPELL.get(target) is not None and _respell_is_safe(node):
        node.target = RESPELL[target]
        return True
    return False


@register_pass("normalize-ops")
def normalize_ops(gm: fx.GraphModule, ctx) -> PassResult:
    """Respell in-place and alias ops; drop dropout, asserts and casts to the same dtype."""
    count = sum(_rewrite(n) for n in list(gm.graph.nodes) if n.op == "call_function")
    return PassResult(gm, count > 0, {"rewritten": count})
