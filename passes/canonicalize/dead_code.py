"""dead-code: remove nodes nobody uses, and the weights only they read."""
from __future__ import annotations

import torch.fx as fx

from qcompile.graph_edit import remove_unused_attributes
from qcompile.registry import PassResult, register_pass


@register_pass("dead-code")
def dead_code(gm: fx.GraphModule, ctx) -> PassResult:
    """Erase unused pure nodes, unused submodules and unread parameters/buffers."""
    before = len(gm.graph.nodes)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    removed_attrs = remove_unused_attributes(gm)
    erased = before - len(gm.graph.nodes)
    return PassResult(gm, erased > 0 or removed_attrs > 0,
                      {"erased": erased, "attributes_removed": removed_attrs})
