"""integer-only-observe: calibrate the inputs and outputs of softmax, layer_norm and GELU.

Runs between `observe` and `calibrate`, and only with option integer_only. A residual add
feeding a layer_norm gets its output range observed (the 16-bit scale of i_add) and its
non-linear operands observed; linear operands are not quantized at their output, so that
`integer-only` turns them into 16-bit i_linear (BERT's residual stream has outlier channels
that an int8 scale would flatten the other channels under).
"""
from __future__ import annotations

import torch.fx as fx

from qcompile.facts import facts_of
from qcompile.op_kinds import anchor_kind
from qcompile.registry import PassResult, register_pass

from ..quantize.observe import observe_value
from ..quantize.plan import activation_inputs, range_root
from ..quantize.site import ObserverSite
from .integer_only_match import integer_kind, operand

FEEDS_FLOAT_ONLY = "its output only feeds float ops"
QUANTIZED_PRODUCERS = ("linear", "conv2d", "matmul")


def _is_site(gm, node) -> bool:
    return (isinstance(node, fx.Node) and node.op == "call_module"
            and isinstance(gm.get_submodule(node.target), ObserverSite))


def observed(gm, value: fx.Node) -> bool:
    return _is_site(gm, value) or any(_is_site(gm, user) for user in value.users)


def _float(value: fx.Node) -> bool:
    info = facts_of(value).tensor
    return info is not None and info.dtype == "f32"


def insert_site(gm: fx.GraphModule, value: fx.Node) -> bool:
    """Put an observer site after `value` (all its users read the site). False if present."""
    if observed(gm, value) or not _float(value):
        return False
    observe_value(gm, value)
    return True


def _promotable_add(gm, node: fx.Node, kind: str, root: fx.Node) -> list | None:
    """The operand roots of a float residual add feeding a layer_norm, when its operands
    come from quantized ops (the add then becomes i_add at 16 bits)."""
    if kind != "layernorm" or anchor_kind(root) != "add" or list(root.users) != [node]:
        return None
    if facts_of(root).float_reason != FEEDS_FLOAT_ONLY or root.kwargs.get("alpha", 1) != 1:
        return None
    roots = [range_root(x) for x in activation_inputs(root, "add")]
    if all(isinstance(r, fx.Node) and (observed(gm, r) or anchor_kind(r) in QUANTIZED_PRODUCERS)
           for r in roots):
        return roots
    return None


def observe_node(gm: fx.GraphModule, node: fx.Node, kind: str) -> int:
    """Observe the op's output and operand; for a residual add also the add's operands,
    except linear outputs (they become 16-bit i_linear). Returns the sites added."""
    added = int(insert_site(gm, node))
    root = range_root(operand(gm, node, kind))
    added += int(insert_site(gm, root))
    for value in _promotable_add(gm, node, kind, root) or []:
        if anchor_kind(value) != "linear":
            added += int(insert_site(gm, value))
    return added


@register_pass("integer-only-observe")
def integer_only_observe(gm: fx.GraphModule, ctx) -> PassResult:
    """With option integer_only: observer sites around softmax, layer_norm and GELU."""
    if not ctx.options.integer_only or ctx.recipe.linear_only:
        return PassResult(gm, False, {})
    found = [(n, k) for n in gm.graph.nodes if (k := integer_kind(gm, n)) is not None]
    added = sum(observe_node(gm, node, kind) for node, kind in found)
    if added:
        gm.recompile()
    return PassResult(gm, bool(added), {"ops": len(found), "observed": added})
