"""fuse: group an anchor (conv2d, linear, add) with the ReLU/ReLU6 that alone consumes it.

The pass only annotates: each member gets a `FusionGroup` fact and the anchor its
activation. Later passes quantize only the group's output and lower the group as one op.
"""
from __future__ import annotations

import torch.fx as fx

from qcompile.facts import FusionGroup, facts_of, update_facts
from qcompile.graph_edit import single_user
from qcompile.op_kinds import activation_of, anchor_kind
from qcompile.registry import PassResult, register_pass

FUSABLE_ANCHORS = {"linear", "conv2d", "add"}


def _group_for(anchor: fx.Node, group_id: int) -> FusionGroup | None:
    if anchor_kind(anchor) not in FUSABLE_ANCHORS or facts_of(anchor).fusion is not None:
        return None
    follower = single_user(anchor)
    activation = activation_of(follower) if follower is not None else None
    if activation is None:
        return None
    return FusionGroup(group_id, anchor.name, (anchor.name, follower.name), activation)


@register_pass("fuse")
def fuse(gm: fx.GraphModule, ctx) -> PassResult:
    """Mark conv/linear/add + ReLU/ReLU6 groups (the activation becomes clamp bounds)."""
    groups = 0
    for node in list(gm.graph.nodes):
        group = _group_for(node, groups + 1)
        if group is None:
            continue
        groups += 1
        follower = single_user(node)
        update_facts(node, fusion=group, activation=group.activation)
        update_facts(follower, fusion=group)
    return PassResult(gm, groups > 0, {"groups": groups})


def group_output(node: fx.Node) -> fx.Node:
    """The last node of the fusion group that `node` anchors (the node itself if none)."""
    group = facts_of(node).fusion
    if group is None or group.anchor != node.name:
        return node
    follower = single_user(node)
    return follower if follower is not None and follower.name == group.members[-1] else node
