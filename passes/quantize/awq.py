"""awq: activation-aware weight scales (AWQ, Lin et al. 2024), recipes w4a16-awq, w8a16-awq.

For the linears reading one activation X: s = mean|X|^a (normalised), with a searched on a
grid to minimise || X W^T - X (Q(W * s) / s)^T || over sampled calibration rows, Q being the
int4 group rounding (int8 per-channel rounding for w8a16-awq). Then W <- W * s and X <- X / s (folded into a LayerNorm when it is the
only producer-consumer link, else one float multiply), and insert-qdq rounds W * s.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompile.graph_edit import constant_value
from qcompile.ops.weight_only import dequantize_int4, quantize_int4_groups
from qcompile.quant_math import WEIGHT_QMAX, WEIGHT_QMIN, weight_scales_per_channel
from qcompile.registry import PassResult, register_pass

from .activation_stats import channel_means_and_samples
from .smooth_quant import _apply, _groups

GRID = 20


def _rounded(w: torch.Tensor, group_size: int, symmetric: bool) -> torch.Tensor:
    """w after weight rounding: int4 groups, or int8 per row (group_size 0: w8a16-awq)."""
    if group_size == 0:
        scales = weight_scales_per_channel(w, axis=0).unsqueeze(1)
        return torch.clamp(torch.round(w / scales), WEIGHT_QMIN, WEIGHT_QMAX) * scales
    return dequantize_int4(*quantize_int4_groups(w, group_size, symmetric), group_size)


def search_scales(mean_abs: torch.Tensor, sample: torch.Tensor, weights: list[torch.Tensor],
                  group_size: int, symmetric: bool) -> tuple[torch.Tensor, float]:
    """The scales s (and exponent a) with the least output error on `sample`."""
    w = torch.cat(weights, dim=0)
    reference = sample @ w.T
    best = (torch.ones_like(mean_abs), 0.0, float("inf"))
    for step in range(GRID + 1):
        a = step / GRID
        s = mean_abs.clamp(min=1e-4).pow(a)
        s = s / (s.max() * s.min()).sqrt()
        error = (sample @ (_rounded(w * s, group_size, symmetric) / s).T - reference).pow(2).mean()
        if error < best[2]:
            best = (s, a, float(error))
    return best[0], best[1]


@register_pass("awq")
def awq(gm: fx.GraphModule, ctx) -> PassResult:
    """Activation-aware per-channel weight scaling before weight rounding (w4a16-awq, w8a16-awq)."""
    if ctx.recipe.weight_solver != "awq":
        return PassResult(gm, False, {})
    groups = _groups(gm, ctx)
    stats = channel_means_and_samples(gm, list(groups), ctx)
    exponents = []
    for x, readers in groups.items():
        weights = [constant_value(gm, r.args[1]).detach().float() for r in readers]
        group = 0 if ctx.recipe.weights == "int8-weight-only" else ctx.options.group_size
        scales, a = search_scales(*stats[x], weights, group, ctx.options.weight_symmetric)
        if a > 0:
            _apply(gm, x, readers, scales)
        exponents.append(a)
    ctx.note(f"awq: {sum(a > 0 for a in exponents)} of {len(groups)} activation(s) scaled; "
             f"exponents {sorted(set(exponents))}")
    return PassResult(gm, any(a > 0 for a in exponents), {"scaled": sum(a > 0 for a in exponents)})
