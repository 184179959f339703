"""Per-layer error: each node of the lowered graph against its float counterpart (SQNR, dB)."""
from __future__ import annotations

import torch
import torch.fx as fx

from .facts import facts_of
from .graph_run import run_recording
from .instruments import sqnr_db
from .report import is_reported


def _as_float(value: torch.Tensor, node: fx.Node) -> torch.Tensor:
    qp = facts_of(node).qparams
    if value.dtype == torch.int8 and qp is not None:
        return (value.to(torch.int32) - qp.zero_point).float() * qp.scale
    return value


def layer_sqnr(final_gm: fx.GraphModule, float_gm: fx.GraphModule, args: tuple) -> dict[str, float]:
    """SQNR of every reported node whose float counterpart (same name or origin) exists."""
    _, ref = run_recording(float_gm, args, keep_values=True)
    _, got = run_recording(final_gm, args, keep_values=True)
    result = {}
    for node in final_gm.graph.nodes:
        if not is_reported(node):
            continue
        origin = facts_of(node).origin or node.name
        expected, actual = ref.values.get(origin), got.values.get(node.name)
        if expected is None or actual is None or not expected.is_floating_point():
            continue
        actual = _as_float(actual, node)
        if actual.shape == expected.shape and actual.is_floating_point():
            result[node.name] = sqnr_db(expected, actual)
    return result
