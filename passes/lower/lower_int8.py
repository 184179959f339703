"""lower-int8: rewrite quantize/dequantize patterns into integer qcompile ops, to a fixed point.

The rules are data (passes/lower/commute.py, anchors.py, pooling.py); this pass only applies
them in graph order until none fires, then names every op left in float and why.
"""
from __future__ import annotations

from collections import Counter

import torch.fx as fx

from qcompile.dump import op_name
from qcompile.facts import facts_of, update_facts
from qcompile.graph_run import record_tensor_facts
from qcompile.op_kinds import BOOKKEEPING, FLOAT_ONLY, LAYOUT_OPS, anchor_kind, is_qcompile_op
from qcompile.registry import PassResult, register_pass

from .anchors import ANCHOR_RULES
from .commute import COMMUTE_RULES
from .float_out import FLOAT_OUT_RULES
from .pooling import POOL_RULES
from .weight_only import WEIGHT_ONLY_RULES

RULES = ANCHOR_RULES + POOL_RULES + FLOAT_OUT_RULES + WEIGHT_ONLY_RULES + COMMUTE_RULES
MAX_ROUNDS = 64


def apply_rules(gm: fx.GraphModule, rules=RULES, refresh=None) -> Counter:
    """Apply `rules` in graph order until none fires; `refresh()` runs after each round."""
    fired: Counter = Counter()
    for _ in range(MAX_ROUNDS):
        changed = False
        for node in list(gm.graph.nodes):
            if getattr(node, "_erased", False) or node.op != "call_function":
                continue
            for rule in rules:
                if rule(gm, node):
                    fired[rule.__name__] += 1
                    changed = True
                    break
        if not changed:
            break
        if refresh is not None:
            refresh()
    return fired


def float_reason(node: fx.Node) -> str | None:
    """Why a node still computes in float after lowering (None for int8 and bookkeeping)."""
    if node.op != "call_function" or is_qcompile_op(node):
        return None
    if node.target in LAYOUT_OPS or node.target in BOOKKEEPING:
        return None
    known = facts_of(node).float_reason
    if known:
        return known
    if node.target in FLOAT_ONLY:
        return f"no integer kernel for {op_name(node.target)}"
    if anchor_kind(node) is not None:
        return "quantized pattern not matched (an input or the output is not quantized)"
    return f"{op_name(node.target)} is outside the quantized op set"


def mark_float_islands(gm: fx.GraphModule) -> int:
    count = 0
    for node in gm.graph.nodes:
        reason = float_reason(node)
        if reason is not None:
            update_facts(node, float_reason=reason)
            count += 1
    return count


@register_pass("lower-int8")
def lower_int8(gm: fx.GraphModule, ctx) -> PassResult:
    """Replace dq -> op -> q patterns by qcompile integer ops; mark float islands."""
    fired = apply_rules(gm, refresh=lambda: record_tensor_facts(gm, ctx.example_inputs))
    gm.graph.eliminate_dead_code()
    islands = mark_float_islands(gm)
    stats = dict(sorted(fired.items()))
    stats["float_islands"] = islands
    return PassResult(gm, bool(fired) or islands > 0, stats)
