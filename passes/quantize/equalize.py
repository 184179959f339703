"""equalize: cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization").

For two conv2d/linear layers in a row, the first's output read only by the second (directly
or through one ReLU, which is positive-homogeneous: relu(x / s) = relu(x) / s for s > 0):
    s_i = sqrt(r1_i * r2_i) / r2_i,   W1[i] /= s_i, b1[i] /= s_i,   W2[:, i] *= s_i
with r1_i the range (max |w|) of output channel i of the first layer and r2_i that of input
channel i of the second, so both become sqrt(r1_i * r2_i) and per-tensor / per-channel
weight grids waste less range. Depthwise convolutions take part on either side (input
channel i of a depthwise conv is its output channel i), so conv -> depthwise -> conv chains
equalize; the sweep over all pairs repeats until the scales settle.

ReLU6 is not positive-homogeneous (relu6(x / s) clamps at 6, not 6 / s), so pairs through
ReLU6 are skipped and counted (`skipped_relu6`). Only with option `equalize` (off by
default); runs in `methods`, before observe/calibrate.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

from qcompile.graph_edit import add_constant, constant_value
from qcompile.op_kinds import activation_of, arg
from qcompile.registry import PassResult, register_pass

from .plan import quantizable_anchors

aten = torch.ops.aten
WEIGHTED = {aten.conv2d.default, aten.linear.default}


@dataclass
class Layer:
    """A conv2d/linear node and its working (float32) weight and bias."""
    node: fx.Node
    weight: torch.Tensor
    bias: torch.Tensor | None

    @property
    def depthwise(self) -> bool:
        groups = arg(self.node, 6, "groups", 1) if self.node.target is aten.conv2d.default else 1
        return groups > 1 and groups == self.weight.shape[0] and self.weight.shape[1] == 1

    @property
    def grouped(self) -> bool:
        groups = arg(self.node, 6, "groups", 1) if self.node.target is aten.conv2d.default else 1
        return groups > 1 and not self.depthwise


def _load(gm, node: fx.Node) -> Layer | None:
    weight = constant_value(gm, node.args[1])
    bias_node = arg(node, 2, "bias", None)
    bias = constant_value(gm, bias_node) if bias_node is not None else None
    if weight is None or (bias_node is not None and bias is None):
        return None
    return Layer(node, weight.detach().float().clone(),
                 None if bias is None else bias.detach().float().clone())


def _successor(node: fx.Node) -> tuple[fx.Node | None, str | None]:
    """(next weighted layer, activation between) when node's value reaches exactly one."""
    value, users = node, list(node.users)
    if len(users) != 1:
        return None, None
    activation = activation_of(users[0])
    if activation is not None:
        value, users = users[0], list(users[0].users)
        if len(users) != 1:
            return None, activation
    after = users[0]
    if (after.op == "call_function" and after.target in WEIGHTED and after.args[0] is value
            and value not in after.args[1:]):
        return after, activation
    return None, activation


def find_pairs(gm, layers: dict[fx.Node, Layer]) -> tuple[list[tuple[Layer, Layer]], int]:
    """Equalizable (first, second) pairs and how many were skipped for a ReLU6 between."""
    pairs, skipped = [], 0
    for node, first in layers.items():
        second_node, activation = _successor(node)
        if second_node not in layers:
            continue
        if activation == "relu6":
            skipped += 1
            continue
        second = layers[second_node]
        if first.grouped or second.grouped:
            continue
        if first.weight.shape[0] != _in_channels(second):
            continue
        pairs.append((first, second))
    return pairs, skipped


def _in_channels(layer: Layer) -> int:
    return layer.weight.shape[0] if layer.depthwise else layer.weight.shape[1]


def output_ranges(layer: Layer) -> torch.Tensor:
    return layer.weight.abs().reshape(layer.weight.shape[0], -1).amax(dim=1)


def input_ranges(layer: Layer) -> torch.Tensor:
    if layer.depthwise:
        return output_ranges(layer)
    return layer.weight.abs().transpose(0, 1).reshape(layer.weight.shape[1], -1).amax(dim=1)


def equalization_scales(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """s_i = sqrt(r1_i * r2_i) / r2_i; 1 where either range is 0."""
    usable = (r1 > 0) & (r2 > 0)
    scales = torch.sqrt(r1 * r2) / r2.clamp(min=1e-30)
    return torch.where(usable, scales, torch.ones_like(scales))


def _channel_shape(layer: Layer, axis: int) -> list[int]:
    shape = [1] * layer.weight.dim()
    shape[axis] = -1
    return shape


def rescale_pair(first: Layer, second: Layer, scales: torch.Tensor) -> None:
    first.weight /= scales.reshape(_channel_shape(first, 0))
    if first.bias is not None:
        first.bias /= scales
    axis = 0 if second.depthwise else 1
    second.weight *= scales.reshape(_channel_shape(second, axis))


def equalize_pairs(pairs, iterations: int, tolerance: float) -> int:
    """Sweep all pairs until every scale is within `tolerance` of 1; returns sweeps run."""
    for sweep in range(1, iterations + 1):
        largest = 0.0
        for first, second in pairs:
            scales = equalization_scales(output_ranges(first), input_ranges(second))
            rescale_pair(first, second, scales)
            largest = max(largest, float((scales.log().abs()).max()))
        if largest < tolerance:
            return sweep
    return iterations


def _store(gm, layer: Layer) -> None:
    node = layer.node
    weight = add_constant(gm, f"{node.name}_equalized_weight", layer.weight, node)
    args = list(node.args) + [None] * max(0, 3 - len(node.args))
    args[1] = weight
    if layer.bias is not None:
        args[2] = add_constant(gm, f"{node.name}_equalized_bias", layer.bias, node)
    node.args = tuple(args)


@register_pass("equalize")
def equalize(gm: fx.GraphModule, ctx, *, iterations=20, tolerance=1e-3) -> PassResult:
    """Cross-layer equalization of conv/linear pairs (option equalize; iterations, tolerance)."""
    if not ctx.options.equalize:
        return PassResult(gm, False, {})
    layers = {}
    for node, kind in quantizable_anchors(gm, ctx):
        layer = _load(gm, node) if kind in ("linear", "conv2d") else None
        if layer is not None:
            layers[node] = layer
    pairs, skipped = find_pairs(gm, layers)
    sweeps = equalize_pairs(pairs, iterations, tolerance) if pairs else 0
    touched = {layer.node: layer for pair in pairs for layer in pair}
    for layer in touched.values():
        _store(gm, layer)
    ctx.note(f"equalize: {len(pairs)} layer pair(s) equalized in {sweeps} sweep(s); "
             f"{skipped} skipped (ReLU6 between)")
    return PassResult(gm, bool(pairs), {"pairs": len(pairs), "sweeps": sweeps,
                                        "skipped_relu6": skipped})
