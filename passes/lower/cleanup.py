"""cleanup: drop what lowering left unused (dead q/dq pairs, float weights, observers)."""
from __future__ import annotations

import torch.fx as fx

from qcompile.graph_edit import remove_unused_attributes
from qcompile.registry import PassResult, register_pass

from .commute import fold_requantize
from .lower_int8 import apply_rules
from .match import Q, is_call


def read_float_originals(gm: fx.GraphModule) -> int:
    """Float ops reading dequantize(quantize(x)) read x itself: x is computed in float anyway,
    so only the int8 consumers pay for the rounding."""
    rewired = 0
    for dq in list(gm.graph.find_nodes(op="call_function", target=Q.dequantize.default)):
        q = dq.args[0]
        if is_call(q, Q.quantize.default) and dq.users:
            dq.replace_all_uses_with(q.args[0])
            rewired += 1
    return rewired


@register_pass("cleanup")
def cleanup(gm: fx.GraphModule, ctx) -> PassResult:
    """Fold redundant quantize(dequantize(x)) pairs, let float ops read float originals,
    erase dead nodes and unread weights."""
    folded = sum(apply_rules(gm, (fold_requantize,)).values())
    folded += read_float_originals(gm)
    before = len(gm.graph.nodes)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    attrs = remove_unused_attributes(gm)
    erased = before - len(gm.graph.nodes)
    return PassResult(gm, bool(folded or erased or attrs),
                      {"folded": folded, "erased": erased, "attributes_removed": attrs})
