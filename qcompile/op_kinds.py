"""What kind of op a node is, as data: which ATen overloads count as linear, layout, ...

The documented op set: `SUPPORTED` maps each ATen op the compiler understands to its kind.
Ops outside it still run (in float), and the report says so.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

aten = torch.ops.aten

ANCHOR_KINDS: dict = {
    aten.linear.default: "linear",
    aten.conv2d.default: "conv2d",
    aten.matmul.default: "matmul",
    aten.bmm.default: "matmul",
    aten.add.Tensor: "add",
    aten.avg_pool2d.default: "pool",
    aten.adaptive_avg_pool2d.default: "pool",
    aten.mean.dim: "pool",
    aten.cat.default: "cat",
}

# Ops that only move or select int8 values: they run on int8 and keep their input's qparams.
LAYOUT_OPS = frozenset({
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.permute.default,
    aten.transpose.int, aten.t.default, aten.flatten.using_ints, aten.squeeze.dim,
    aten.squeeze.dims, aten.squeeze.default, aten.unsqueeze.default, aten.expand.default,
    aten.slice.Tensor, aten.select.int, aten.contiguous.default, aten.clone.default,
    aten.unflatten.int,
})

# Ops whose output range lies inside their input range (max pooling selects values).
RANGE_PRESERVING = LAYOUT_OPS | {aten.max_pool2d.default}

ACTIVATIONS = {aten.relu.default: "relu", aten.relu_.default: "relu"}

FLOAT_ONLY = {
    aten.softmax.int: "softmax", aten._softmax.default: "softmax",
    aten.layer_norm.default: "layernorm", aten.gelu.default: "gelu", aten.tanh.default: "tanh",
    aten.sigmoid.default: "sigmoid", aten.silu.default: "silu", aten.embedding.default: "embedding",
    aten.mul.Tensor: "mul", aten.div.Tensor: "div", aten.sub.Tensor: "sub",
    aten.batch_norm.default: "batchnorm", aten.hardtanh.default: "hardtanh",
    aten.exp.default: "exp", aten.sqrt.default: "sqrt", aten.rsqrt.default: "rsqrt",
    aten.pow.Tensor_Scalar: "pow", aten.max_pool2d.default: "maxpool",
    aten.scaled_dot_product_attention.default: "attention", aten.relu.default: "relu",
}

# Float-only ops that have integer-only (I-BERT) kernels, used under option integer_only.
INTEGER_ONLY_KINDS = {
    aten.softmax.int: "softmax", aten._softmax.default: "softmax",
    aten.layer_norm.default: "layernorm", aten.gelu.default: "gelu",
}

# Nodes that compute nothing worth reporting (indexing into tuples, symbolic sizes).
BOOKKEEPING = {operator.getitem, aten.sym_size.int}


def activation_of(node: fx.Node) -> str | None:
    """'relu' or 'relu6' when `node` is such an activation, else None."""
    if node.op != "call_function":
        return None
    if node.target in ACTIVATIONS:
        return ACTIVATIONS[node.target]
    if node.target in (aten.hardtanh.default, aten.hardtanh_.default):
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
        if (lo, hi) == (0.0, 6.0):
            return "relu6"
    return None


def anchor_kind(node: fx.Node) -> str | None:
    return ANCHOR_KINDS.get(node.target) if node.op == "call_function" else None


def is_layout(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in LAYOUT_OPS


def is_qcompile_op(node: fx.Node) -> bool:
    target = node.target
    return (node.op == "call_function" and isinstance(target, torch._ops.OpOverload)
            and target.namespace == "qcompile")


def arg(node: fx.Node, index: int, name: str, default=None):
    """Argument `index` (or keyword `name`) of a call node, or `default`."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _pair(value, default) -> list[int]:
    value = list(value) if value is not None else list(default)
    return value * 2 if len(value) == 1 else value


def conv2d_geometry(conv: fx.Node) -> tuple:
    """(stride, padding, dilation, groups) of an aten.conv2d node, defaults filled in."""
    stride = _pair(arg(conv, 3, "stride", None), [1, 1])
    padding = _pair(arg(conv, 4, "padding", None), [0, 0])
    dilation = _pair(arg(conv, 5, "dilation", None), [1, 1])
    return stride, padding, dilation, int(arg(conv, 6, "groups", 1))


def module_path(node: fx.Node) -> str:
    """Dotted path of the innermost nn.Module that produced `node` ('' at top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path.replace("L['self'].", "").replace("L__self___", "")
