"""The engine's memory: activation buffers placed by lifetime, weight bytes, for the report.

Every value computed by the graph is an activation buffer live from the node that writes it
to the last node that reads it; buffers whose lifetimes do not meet share bytes (the same
interval planner the npu-int8 arena uses). Constants (get_attr) are weights.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompile.facts import facts_of

from ..npu.arena import Buffer, plan

_BYTES = {"int8": 1, "uint8": 1, "int32": 4, "float32": 4, "int64": 8, "float16": 2,
          "bfloat16": 2, "float64": 8, "bool": 1}


def _nbytes(node: fx.Node) -> int | None:
    info = facts_of(node).tensor
    if info is None:
        return None
    count = 1
    for d in info.shape:
        count *= d
    return count * _BYTES.get(str(info.dtype).replace("torch.", ""), 4)


def _activation_buffers(gm: fx.GraphModule) -> list[Buffer]:
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    buffers = []
    for node in gm.graph.nodes:
        size = _nbytes(node) if node.op == "call_function" else None
        if not size:
            continue
        last = max((order[u] for u in node.users), default=order[node])
        buffers.append(Buffer(node.name, size, order[node], last))
    return buffers


def _weight_bytes(gm: fx.GraphModule) -> int:
    total = 0
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = gm
            for part in node.target.split("."):
                value = getattr(value, part)
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
    return total


def engine_memory(gm: fx.GraphModule, steps=None) -> dict:
    """{"activation_bytes": planned peak, "naive_activation_bytes", "weight_bytes"}."""
    placed = plan(_activation_buffers(gm))
    return {"activation_bytes": placed.size, "naive_activation_bytes": placed.naive,
            "weight_bytes": _weight_bytes(gm)}
