"""fold-batchnorm: conv2d/linear followed by inference BatchNorm -> one conv2d/linear."""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from qcompile.facts import facts_of
from qcompile.graph_edit import add_constant, constant_value
from qcompile.op_kinds import arg
from qcompile.registry import PassResult, register_pass

aten = torch.ops.aten
BATCH_NORMS = {aten.batch_norm.default: 5, aten._native_batch_norm_legit_no_training.default: None}
PRODUCERS = {aten.conv2d.default, aten.linear.default}


def _bn_params(gm, bn: fx.Node):
    weight, bias, mean, var = (constant_value(gm, a) for a in bn.args[1:5])
    training_index = BATCH_NORMS[bn.target]
    training = bn.args[training_index] if training_index is not None else False
    eps = bn.args[7] if bn.target is aten.batch_norm.default else bn.args[6]
    if mean is None or var is None or training:
        return None
    channels = mean.shape[0]
    weight = weight if weight is not None else torch.ones(channels)
    bias = bias if bias is not None else torch.zeros(channels)
    return weight, bias, mean, var, eps


def _normalized_values(bn: fx.Node) -> list[fx.Node] | None:
    """Nodes holding the normalized value: bn itself, or getitem(bn, 0) for the tuple variant."""
    if bn.target is aten.batch_norm.default:
        return [bn]
    users = list(bn.users)
    ok = all(u.target is operator.getitem and u.args[1] == 0 for u in users)
    return users if ok else None


def _channels_match(producer: fx.Node) -> bool:
    """BatchNorm normalizes dim 1: a linear's features only when its output is [N, C]."""
    info = facts_of(producer).tensor
    return producer.target is aten.conv2d.default or (info is not None and len(info.shape) == 2)


def _foldable(gm, bn: fx.Node):
    producer = bn.args[0]
    if not isinstance(producer, fx.Node) or producer.target not in PRODUCERS:
        return None
    if _normalized_values(bn) is None or not _channels_match(producer):
        return None
    if len(producer.users) != 1 or constant_value(gm, producer.args[1]) is None:
        return None
    bias = arg(producer, 2, "bias", None)
    if bias is not None and constant_value(gm, bias) is None:
        return None
    params = _bn_params(gm, bn)
    return (producer, params) if params is not None else None


def _fold(gm, bn: fx.Node, producer: fx.Node, params) -> None:
    gamma, beta, mean, var, eps = (p.detach().double() if torch.is_tensor(p) else p
                                   for p in params)
    weight = constant_value(gm, producer.args[1]).detach().double()
    bias_node = arg(producer, 2, "bias", None)
    bias = (constant_value(gm, bias_node).detach().double() if bias_node is not None
            else torch.zeros(weight.shape[0], dtype=torch.float64))
    factor = gamma / torch.sqrt(var + eps)
    new_weight = weight * factor.reshape(-1, *([1] * (weight.dim() - 1)))
    new_bias = (bias - mean) * factor + beta
    dtype = constant_value(gm, producer.args[1]).dtype
    w_node = add_constant(gm, f"{producer.name}_bn_weight", new_weight.to(dtype), producer)
    b_node = add_constant(gm, f"{producer.name}_bn_bias", new_bias.to(dtype), producer)
    args = list(producer.args) + [None] * max(0, 3 - len(producer.args))
    args[1], args[2] = w_node, b_node
    producer.args = tuple(args)
    producer.kwargs = {k: v for k, v in producer.kwargs.items() if k != "bias"}
    for value in _normalized_values(bn):
        value.replace_all_uses_with(producer)
        if value is not bn:
            gm.graph.erase_node(value)
    gm.graph.erase_node(bn)


@register_pass("fold-batchnorm")
def fold_batchnorm(gm: fx.GraphModule, ctx) -> PassResult:
    """Fold inference BatchNorm into the weights and bias of the conv2d/linear before it."""
    folded = 0
    for bn in list(gm.graph.nodes):
        if bn.op != "call_function" or bn.target not in BATCH_NORMS:
            continue
        found = _foldable(gm, bn)
        if found is not None:
            _fold(gm, bn, *found)
            folded += 1
    return PassResult(gm, folded > 0, {"folded": folded})
