"""Which ops a recipe quantizes, which values need a calibrated range, and why others stay float."""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompile.facts import facts_of, update_facts
from qcompile.graph_edit import constant_value
from qcompile.op_kinds import RANGE_PRESERVING, anchor_kind, arg, module_path
from ..fuse.fuse import group_output

aten = torch.ops.aten
INT32_LIMIT = 2 ** 31


def _dtype(node) -> str | None:
    info = facts_of(node).tensor if isinstance(node, fx.Node) else None
    return info.dtype if info is not None else None


def activation_inputs(node: fx.Node, kind: str) -> list:
    """The activation operands of an anchor (weights excluded)."""
    if kind in ("linear", "conv2d", "pool"):
        return [node.args[0]]
    if kind in ("matmul", "add"):
        return list(node.args[:2])
    if kind == "cat":
        return list(node.args[0])
    return []


def _kept_by_option(node: fx.Node, kind: str, options) -> str | None:
    path = module_path(node)
    for entry in options.keep_float:
        if node.name == entry or (path and (path == entry or path.startswith(entry + "."))):
            return f"kept in float by option keep_float={entry!r}"
    if kind in options.keep_float_ops:
        return f"kept in float by option keep_float_ops={kind!r}"
    return None


def _group_problem(gm, node: fx.Node, group_size: int) -> str | None:
    weight = constant_value(gm, node.args[1])
    if weight is not None and weight.shape[1] % group_size:
        return f"in_features {weight.shape[1]} is not a multiple of group_size {group_size}"
    return None


def _pool_problem(node: fx.Node) -> str | None:
    if node.target is aten.avg_pool2d.default:
        padding = arg(node, 3, "padding", [0])
        if arg(node, 4, "ceil_mode", False) or arg(node, 6, "divisor_override", None):
            return "avg_pool2d with ceil_mode or divisor_override has no integer kernel"
        if not arg(node, 5, "count_include_pad", True) and any(padding):
            return "avg_pool2d with count_include_pad=False and padding has no integer kernel"
    if node.target is aten.adaptive_avg_pool2d.default and list(node.args[1]) != [1, 1]:
        return "adaptive_avg_pool2d to a size other than 1x1 has no integer kernel"
    return None


def _shape_problem(gm, node: fx.Node, kind: str) -> str | None:
    if kind in ("linear", "conv2d") and constant_value(gm, node.args[1]) is None:
        return "weight is not a constant"
    if kind == "matmul":
        info = facts_of(node.args[0]).tensor
        if info is not None and info.shape and info.shape[-1] * 255 * 255 >= INT32_LIMIT:
            return "reduction too long for an int32 accumulator"
    if kind == "add" and node.kwargs.get("alpha", 1) != 1:
        return "add with alpha != 1"
    if kind == "pool":
        return _pool_problem(node) or _dynamic_reduction(node)
    return None


def _dynamic_reduction(node: fx.Node) -> str | None:
    """A mean over a dimension whose size varies (the batch) has no fixed integer divisor."""
    if node.target is not aten.mean.dim:
        return None
    source = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
    if source is None:
        return None
    dims = arg(node, 1, "dim", None)
    dims = range(source.dim()) if dims is None else ([dims] if isinstance(dims, int) else dims)
    if any(not isinstance(source.shape[d], int) for d in dims):
        return "mean over a dimension whose size varies at run time"
    return None


def skip_reason(gm, node: fx.Node, kind: str, ctx) -> str | None:
    """Why `node` stays float under the recipe, or None when it is quantized.

    A float_reason set by an earlier pass (a user pass, say) is respected."""
    earlier = facts_of(node).float_reason
    if earlier:
        return earlier
    if ctx.recipe.activations == "lowp":
        if kind not in ("linear", "conv2d", "matmul"):
            return f"recipe {ctx.recipe.name} casts linear, conv2d and matmul only"
    elif ctx.recipe.linear_only and kind != "linear":
        return f"recipe {ctx.recipe.name} quantizes linear layers only"
    if ctx.recipe.weights == "int4-group" and kind == "linear":
        problem = _group_problem(gm, node, ctx.options.group_size)
        if problem:
            return problem
    kept = _kept_by_option(node, kind, ctx.options)
    if kept:
        return kept
    operands = activation_inputs(node, kind)
    if not all(isinstance(x, fx.Node) for x in operands):
        return f"{kind} with a Python scalar operand"
    if not operands or any(_dtype(x) != "f32" for x in operands):
        return "an operand is not a float32 tensor"
    return _shape_problem(gm, node, kind)


def quantizable_anchors(gm: fx.GraphModule, ctx, record: bool = False) -> list[tuple]:
    """(node, kind) of every op the recipe could quantize; with `record`, others get a reason."""
    found = []
    for node in gm.graph.nodes:
        kind = anchor_kind(node)
        if kind is None:
            continue
        reason = skip_reason(gm, node, kind, ctx)
        if reason is None:
            found.append((node, kind))
        elif record:
            update_facts(node, float_reason=reason)
    return found


def range_root(value: fx.Node) -> fx.Node:
    """Walk back through ops that keep values inside their input's range."""
    while (value.op == "call_function" and value.target in RANGE_PRESERVING
           and isinstance(value.args[0], fx.Node) and _dtype(value.args[0]) == "f32"):
        value = value.args[0]
    return value


# Anchors worth quantizing only when their output is needed in int8 by a quantized consumer;
# linear, conv2d and matmul are always quantized (their output may stay float32).
OUTPUT_DRIVEN = {"add", "pool", "cat"}


def plan(gm: fx.GraphModule, ctx, record: bool = False) -> tuple[list[tuple], set]:
    """Decide, from the outputs back, which anchors run in int8 and which outputs are int8.

    Returns (anchors, int8_values): quantized (node, kind) pairs and the values that must be
    int8 because a quantized op reads them (anchor inputs, at their range root).
    """
    candidates = quantizable_anchors(gm, ctx, record)
    needed: set = set()
    chosen = []
    for node, kind in reversed(candidates):
        if kind in OUTPUT_DRIVEN and group_output(node) not in needed:
            if record:
                update_facts(node, float_reason="its output only feeds float ops")
            continue
        chosen.append((node, kind))
        needed.update(range_root(x) for x in activation_inputs(node, kind))
    chosen.reverse()
    return chosen, needed


def observation_points(anchors: list[tuple], needed: set) -> list[fx.Node]:
    """Values needing a calibrated range: anchor inputs (at their range root) and the
    outputs that a quantized consumer reads."""
    points: dict[fx.Node, None] = {}
    for node, kind in anchors:
        for operand in activation_inputs(node, kind):
            points[range_root(operand)] = None
        out = group_output(node)
        if out in needed:
            points[out] = None
    return list(points)
