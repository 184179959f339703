"""smooth-quant: move activation outliers into the weights (SmoothQuant, Xiao et al. 2023).

For the linears reading one activation X, per input channel j:
    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha),   X' = X / s,   W' = W * s
so X' is easier to quantize per tensor and X' W'^T = X W^T. 1/s is folded into the LayerNorm
that produces X when the linears are its only readers; otherwise X is divided by s with one
float multiply on the way to the linears (the other readers keep the original X).
Only active for recipes with smoothing ("w8a8-smoothquant").
"""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompile.graph_edit import add_constant, call_before, constant_value
from qcompile.registry import PassResult, register_pass

from .plan import quantizable_anchors
from .activation_stats import channel_absmax

aten = torch.ops.aten
MIN_SCALE = 1e-5


def _groups(gm, ctx) -> dict[fx.Node, list[fx.Node]]:
    groups: dict[fx.Node, list[fx.Node]] = {}
    for node, kind in quantizable_anchors(gm, ctx):
        if kind == "linear" and isinstance(node.args[0], fx.Node):
            groups.setdefault(node.args[0], []).append(node)
    return groups


def smoothing_scales(x_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float):
    w_absmax = torch.stack([w.abs().amax(dim=0) for w in weights]).amax(dim=0)
    scales = x_absmax.clamp(min=1e-8).pow(alpha) / w_absmax.clamp(min=1e-8).pow(1 - alpha)
    usable = (x_absmax > 0) & (w_absmax > 0)
    return torch.where(usable, scales.clamp(min=MIN_SCALE), torch.ones_like(scales))


def _foldable_norm(gm, x: fx.Node, readers: list[fx.Node]):
    if x.op != "call_function" or x.target is not aten.layer_norm.default:
        return None
    if set(x.users) != set(readers) or len(x.args) < 4:
        return None
    weight, bias = constant_value(gm, x.args[2]), constant_value(gm, x.args[3])
    return (weight, bias) if weight is not None and bias is not None else None


def _apply(gm, x: fx.Node, readers: list[fx.Node], scales: torch.Tensor) -> bool:
    for linear in readers:
        w = constant_value(gm, linear.args[1]).detach()
        new_w = add_constant(gm, f"{linear.name}_smoothed_weight", w * scales, linear)
        linear.args = (linear.args[0], new_w) + tuple(linear.args[2:])
    norm = _foldable_norm(gm, x, readers)
    if norm is not None:
        weight = add_constant(gm, f"{x.name}_smoothed_weight", norm[0] / scales, x)
        bias = add_constant(gm, f"{x.name}_smoothed_bias", norm[1] / scales, x)
        x.args = x.args[:2] + (weight, bias) + tuple(x.args[4:])
        return True
    inverse = add_constant(gm, f"{x.name}_smooth_inverse", (1.0 / scales).float(), readers[0])
    scaled = call_before(gm.graph, readers[0], aten.mul.Tensor, (x, inverse), origin=x,
                         name=f"{x.name}_smoothed")
    for linear in readers:
        linear.args = (scaled,) + tuple(linear.args[1:])
    return False


@register_pass("smooth-quant")
def smooth_quant(gm: fx.GraphModule, ctx, *, alpha=-1.0) -> PassResult:
    """Migrate activation outliers into linear weights (recipe w8a8-smoothquant; alpha)."""
    if not ctx.recipe.smoothing:
        return PassResult(gm, False, {})
    alpha = ctx.options.alpha if alpha < 0 else alpha
    groups = _groups(gm, ctx)
    if not groups:
        return PassResult(gm, False, {})
    absmax = channel_absmax(gm, list(groups), ctx)
    folded = 0
    for x, readers in groups.items():
        weights = [constant_value(gm, r.args[1]).detach().float() for r in readers]
        scales = smoothing_scales(absmax[x], weights, alpha)
        folded += _apply(gm, x, readers, scales)
    ctx.note(f"smooth-quant (alpha={alpha}): {len(groups)} activation(s) smoothed, {folded} "
             f"folded into a LayerNorm, {len(groups) - folded} by a multiply")
    return PassResult(gm, True, {"smoothed": len(groups), "folded": folded})
