"""bias-correction: remove the mean output shift of int8 weight rounding (Nagel et al. 2019).

Rounding W to W_q shifts a layer's output by (W_q - W) x, whose mean over the data is
(W_q - W) E[x]. For every conv2d/linear that insert-qdq will quantize to int8 per channel:
    bias <- bias - (W_q - W) @ E[x]
with E[x] the per-input-channel mean of the layer's float input over the calibration
batches (a conv sums its error over the kernel taps; zero padding at the borders is
ignored). W_q is exactly what insert-qdq will use (qcompile.weight_ranges.weight_scales with
option weight_calibration, reference.quantize_per_channel), so this pass runs after the
passes that change weights (equalize, smooth-quant). Only with option `bias_correction`.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompile.graph_edit import add_constant, constant_value
from qcompile.op_kinds import arg
from qcompile.ops import reference
from qcompile.quant_math import WEIGHT_QMAX, WEIGHT_QMIN
from qcompile.registry import PassResult, register_pass
from qcompile.weight_ranges import weight_scales

from .activation_stats import collect_statistics
from .plan import quantizable_anchors

INT8_WEIGHTS = ("int8-per-channel", "int8-weight-only")


class ChannelMean(torch.nn.Module):
    """Identity that keeps the mean of x per channel: along dim 1 (conv) and the last dim."""

    def __init__(self):
        super().__init__()
        self.sums, self.counts = {}, {}

    def _add(self, key: str, x: torch.Tensor, dim: int) -> None:
        moved = x.detach().double().movedim(dim, -1)
        flat = moved.reshape(-1, moved.shape[-1])
        self.sums[key] = flat.sum(dim=0) + self.sums.get(key, 0)
        self.counts[key] = flat.shape[0] + self.counts.get(key, 0)

    def forward(self, x):
        self._add("last", x, -1)
        if x.dim() == 4:
            self._add("conv", x, 1)
        return x

    def mean(self, key: str) -> torch.Tensor:
        return (self.sums[key] / self.counts[key]).float()


def rounding_error(weight: torch.Tensor, method: str) -> torch.Tensor:
    """W_q - W for the int8 per-channel weight insert-qdq makes from `weight`."""
    scales = weight_scales(weight, method)
    wq = reference.quantize_per_channel(weight, scales, 0, WEIGHT_QMIN, WEIGHT_QMAX)
    shape = [-1] + [1] * (weight.dim() - 1)
    return wq.to(torch.float32) * scales.reshape(shape) - weight


def output_shift(error: torch.Tensor, mean: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Mean output error per output channel: (W_q - W) @ E[x], conv taps summed, by group."""
    per_input = error.reshape(error.shape[0], error.shape[1], -1).sum(dim=2)   # [O, I/groups]
    grouped = mean.reshape(groups, -1).repeat_interleave(error.shape[0] // groups, dim=0)
    return (per_input * grouped).sum(dim=1)


def _set_bias(gm, node: fx.Node, bias: torch.Tensor) -> None:
    args = list(node.args) + [None] * max(0, 3 - len(node.args))
    args[2] = add_constant(gm, f"{node.name}_corrected_bias", bias, node)
    node.args = tuple(args)


def correct_layer(gm, node: fx.Node, kind: str, mean: torch.Tensor, method: str) -> float:
    """Correct one layer's bias; returns the largest |shift| removed."""
    weight = constant_value(gm, node.args[1]).detach().float()
    groups = arg(node, 6, "groups", 1) if kind == "conv2d" else 1
    shift = output_shift(rounding_error(weight, method), mean, groups)
    bias_node = arg(node, 2, "bias", None)
    bias = constant_value(gm, bias_node) if bias_node is not None else None
    base = torch.zeros_like(shift) if bias is None else bias.detach().float()
    _set_bias(gm, node, base - shift)
    return float(shift.abs().max())


def _layers(gm, ctx) -> list[tuple[fx.Node, str]]:
    layers = []
    for node, kind in quantizable_anchors(gm, ctx):
        if kind not in ("linear", "conv2d") or constant_value(gm, node.args[1]) is None:
            continue
        bias_node = arg(node, 2, "bias", None)
        if bias_node is None or constant_value(gm, bias_node) is not None:
            layers.append((node, kind))
    return layers


@register_pass("bias-correction")
def bias_correction(gm: fx.GraphModule, ctx) -> PassResult:
    """Subtract the mean output error of int8 weight rounding from each conv/linear bias."""
    if not ctx.options.bias_correction or ctx.recipe.weights not in INT8_WEIGHTS:
        return PassResult(gm, False, {})
    layers = _layers(gm, ctx)
    if not layers:
        return PassResult(gm, False, {})
    inputs = list(dict.fromkeys(node.args[0] for node, _ in layers))
    stats = collect_statistics(gm, inputs, ctx, ChannelMean)
    largest = 0.0
    for node, kind in layers:
        mean = stats[node.args[0]].mean("conv" if kind == "conv2d" else "last")
        largest = max(largest, correct_layer(gm, node, kind, mean,
                                              ctx.options.weight_calibration))
    ctx.note(f"bias-correction: {len(layers)} bias(es) corrected; largest shift {largest:.3g}")
    return PassResult(gm, True, {"corrected": len(layers)})
