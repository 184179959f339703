"""cleanup: drop what lowering left unused (dead q/dq pairs, float weights, observers)."""
from __future__ import annotations

import torch.fx as fx

from qcompile.graph_edit import remove_unused_attributes
from qcompile.registry import PassResult, register_pass

from .commute import fold_requantize
from .lower_int8 import apply_rules


@register_pass("cleanup")
def cleanup(gm: fx.GraphModule, ctx) -> PassResult:
    """Fold redundant quantize(dequantize(x)) pairs; erase dead nodes and unread weights."""
    folded = sum(apply_rules(gm, (fold_requantize,)).values())
    before = len(gm.graph.nodes)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    attrs = remove_unused_attributes(gm)
    erased = before - len(gm.graph.nodes)
    return PassResult(gm, bool(folded or erased or attrs),
                      {"folded": folded, "erased": erased, "attributes_removed": attrs})
