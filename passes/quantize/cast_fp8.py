"""cast-fp8: the fp8 recipe. Linear, conv2d and matmul read float8 operands (E4M3 or E5M2,
option fp8_format) with per-tensor scales and accumulate exactly (qcompile.linear_fp8,
conv2d_fp8, matmul_fp8); outputs are float32 and other ops stay float32.

Weights: scale = amax / max per tensor (per output channel with `cast-fp8{per-channel=true}`).
Activations: scale = calibrated amax / max, the range chosen by the recipe's calibration
method (symmetric) from one pass over the calibration batches; one quantize_fp8 per value.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompile.errors import CalibrationError
from qcompile.facts import ValueRange, facts_of, update_facts
from qcompile.graph_edit import add_constant, call_before, constant_value, replace_with
from qcompile.observers import make_observer
from qcompile.op_kinds import anchor_kind, arg, conv2d_geometry
from qcompile.ops.fp8 import MAX_REDUCTION, fp8_format, quantize_fp8_weight
from qcompile.registry import PassResult, register_pass

from .activation_stats import collect_statistics
from .plan import activation_inputs, quantizable_anchors

Q = torch.ops.qcompile
KINDS = ("linear", "conv2d", "matmul")


def _reduction(gm, node: fx.Node, kind: str) -> int | None:
    """Products summed per output element (K), when known."""
    if kind in ("linear", "conv2d"):
        weight = constant_value(gm, node.args[1])
        return int(weight[0].numel()) if weight is not None else None
    info = facts_of(node.args[0]).tensor
    return info.shape[-1] if info is not None and info.shape else None


def fp8_problem(gm, node: fx.Node, kind: str) -> str | None:
    """Why an otherwise quantizable layer cannot run in fp8, or None."""
    k = _reduction(gm, node, kind)
    if k is not None and k > MAX_REDUCTION:
        return f"reduction of {k} products exceeds the exact fp8 accumulator ({MAX_REDUCTION})"
    if kind in ("linear", "conv2d"):
        weight = constant_value(gm, node.args[1])
        if not bool(torch.isfinite(weight).all()):
            return "weight holds NaN or Inf"
    return None


def fp8_layers(gm, ctx) -> list[tuple[fx.Node, str]]:
    """(node, kind) of the layers that run in fp8; the others get a float_reason."""
    chosen = []
    for node, kind in quantizable_anchors(gm, ctx, record=True):
        problem = fp8_problem(gm, node, kind)
        if problem:
            update_facts(node, float_reason=problem)
        else:
            chosen.append((node, kind))
    return chosen


def _observer_factory(ctx):
    method, knobs = ctx.options.calibration, ctx.options.calibration_knobs()
    try:
        make_observer(method, symmetric=True, **knobs)
    except ValueError as err:
        raise CalibrationError(f"calibration method '{method}': {err}") from None
    return lambda: make_observer(method, symmetric=True, **knobs)


def activation_scales(gm, values: list[fx.Node], ctx, max_value: float) -> dict:
    """value -> (float32 scale, observed ValueRange): calibrated amax / max (1 when amax is 0)."""
    observers = collect_statistics(gm, values, ctx, _observer_factory(ctx))
    scales = {}
    for value, observer in observers.items():
        lo, hi = (float(v) for v in observer.range())
        amax = max(abs(lo), abs(hi))
        scale = float(torch.tensor(amax / max_value if amax > 0 else 1.0, dtype=torch.float32))
        scales[value] = (max(scale, torch.finfo(torch.float32).tiny),
                         ValueRange(lo, hi, ctx.options.calibration))
    ctx.calibration_summary = {
        "method": ctx.options.calibration, "knobs": ctx.options.calibration_knobs(),
        "batches": max((o.batches_seen for o in observers.values()), default=0),
        "observed_values": len(observers)}
    return scales


class _Inputs:
    """One quantize_fp8 node per activation value, placed before its first fp8 reader."""

    def __init__(self, gm, scales: dict, fmt: str):
        self.gm, self.scales, self.fmt, self.nodes = gm, scales, fmt, {}
        self.rewritten: dict[fx.Node, fx.Node] = {}  # fp8 op -> the layer it replaced

    def get(self, value: fx.Node, reader: fx.Node) -> tuple[fx.Node, float]:
        scale, observed = self.scales[self.rewritten.get(value, value)]
        if value not in self.nodes:
            q = call_before(self.gm.graph, reader, Q.quantize_fp8.default,
                            (value, scale, self.fmt), origin=value, name=f"{value.name}_fp8")
            update_facts(q, observed=observed)
            self.nodes[value] = q
        return self.nodes[value], scale


def _weights(gm, node: fx.Node, fmt: str, per_channel: bool) -> tuple[fx.Node, fx.Node]:
    w8, scales = quantize_fp8_weight(constant_value(gm, node.args[1]), fmt, per_channel)
    return (add_constant(gm, f"{node.name}_weight_{fmt}", w8, node),
            add_constant(gm, f"{node.name}_weight_scale", scales, node))


def _rewrite(gm, node: fx.Node, kind: str, inputs: _Inputs, per_channel: bool) -> fx.Node:
    name = f"{node.name}_fp8"
    if kind == "matmul":
        (a, sa), (b, sb) = (inputs.get(v, node) for v in node.args[:2])
        return call_before(gm.graph, node, Q.matmul_fp8.default, (a, sa, b, sb), origin=node,
                           name=name)
    x, sx = inputs.get(node.args[0], node)
    w, sw = _weights(gm, node, inputs.fmt, per_channel)
    bias = arg(node, 2, "bias", None)
    if kind == "linear":
        return call_before(gm.graph, node, Q.linear_fp8.default, (x, sx, w, sw, bias),
                           origin=node, name=name)
    return call_before(gm.graph, node, Q.conv2d_fp8.default,
                       (x, sx, w, sw, bias, *conv2d_geometry(node)), origin=node, name=name)


def _kept_float(gm) -> list[str]:
    """'name (reason)' of each linear/conv2d/matmul left in float32."""
    return [f"{n.name} ({facts_of(n).float_reason})" for n in gm.graph.nodes
            if anchor_kind(n) in KINDS and facts_of(n).float_reason]


def _note(ctx, fmt: str, count: int, per_channel: bool, kept: list[str]) -> None:
    text = (f"{fmt}: {count} layer(s) in fp8, weights per "
            f"{'channel' if per_channel else 'tensor'}, activations by "
            f"{ctx.options.calibration} amax")
    if kept:
        more = f" and {len(kept) - 5} more" if len(kept) > 5 else ""
        text += f"; kept float: {', '.join(kept[:5])}{more}"
    ctx.note(text)


@register_pass("cast-fp8")
def cast_fp8(gm: fx.GraphModule, ctx, *, per_channel=False) -> PassResult:
    """Run linear/conv2d/matmul on float8 operands with exact accumulation (recipe fp8)."""
    if ctx.recipe.weights != "fp8":
        return PassResult(gm, False, {})
    fmt = ctx.options.fp8_format
    layers = fp8_layers(gm, ctx)
    values = list(dict.fromkeys(v for node, kind in layers for v in activation_inputs(node, kind)))
    scales = activation_scales(gm, values, ctx, fp8_format(fmt).max) if values else {}
    inputs = _Inputs(gm, scales, fmt)
    for node, kind in layers:
        new = _rewrite(gm, node, kind, inputs, per_channel)
        inputs.rewritten[new] = node  # a later layer reading this output finds its scale
        update_facts(new, origin=node.name)
        replace_with(node, new)
    kept = _kept_float(gm)
    _note(ctx, fmt, len(layers), per_channel, kept)
    return PassResult(gm, bool(layers), {"fp8": len(layers), "activations": len(inputs.nodes),
                                         "kept_float": len(kept)})
