"""ONNX forms of the float ATen ops left in a lowered graph (float islands and glue).

Simple ops are data: `UNARY` and `BINARY` map an ATen overload to one ONNX op. The rest
(LayerNormalization, Softmax, Gelu, Gather for embeddings, float linear/conv/pooling, ...)
have a small function each.
"""
from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx as fx
from onnx import helper

from .errors import BackendError
from .onnx_export_graph import value_info
from .onnx_export_qops import conv_attrs, pads, pair
from .op_kinds import arg

aten = torch.ops.aten

UNARY = {
    aten.relu.default: "Relu", aten.sigmoid.default: "Sigmoid", aten.tanh.default: "Tanh",
    aten.exp.default: "Exp", aten.sqrt.default: "Sqrt", aten.erf.default: "Erf",
    aten.abs.default: "Abs", aten.neg.default: "Neg", aten.log.default: "Log",
    aten.reciprocal.default: "Reciprocal", aten.logical_not.default: "Not",
    aten.cos.default: "Cos", aten.sin.default: "Sin", operator.neg: "Neg",
}
BINARY = {
    aten.add.Tensor: "Add", aten.add.Scalar: "Add", aten.sub.Tensor: "Sub",
    aten.sub.Scalar: "Sub", aten.mul.Tensor: "Mul", aten.mul.Scalar: "Mul",
    aten.div.Tensor: "Div", aten.div.Scalar: "Div", aten.pow.Tensor_Scalar: "Pow",
    aten.pow.Tensor_Tensor: "Pow", aten.__and__.Tensor: "And", aten.bitwise_and.Tensor: "And",
    aten.logical_and.default: "And", aten.__or__.Tensor: "Or", aten.logical_or.default: "Or",
    aten.eq.Tensor: "Equal", aten.eq.Scalar: "Equal", aten.lt.Tensor: "Less",
    aten.lt.Scalar: "Less", aten.gt.Tensor: "Greater", aten.gt.Scalar: "Greater",
    aten.le.Scalar: "LessOrEqual", aten.ge.Scalar: "GreaterOrEqual",
    aten.maximum.default: "Max", aten.minimum.default: "Min",
    operator.add: "Add", operator.sub: "Sub", operator.mul: "Mul", operator.floordiv: "Div",
}


def numpy_dtype(node) -> np.dtype | None:
    """numpy dtype of an fx value (None when unknown or not a node)."""
    dtype = value_info(node)[0] if isinstance(node, fx.Node) else None
    return None if dtype is None else torch.empty(0, dtype=dtype).numpy().dtype


def compute_dtype(node, operands) -> np.dtype:
    """The dtype the operands are computed in: the output's when it is floating (torch
    promotes an integer tensor with a float scalar), else the first tensor operand's."""
    out = numpy_dtype(node)
    if out is not None and out.kind == "f":
        return out
    tensors = [numpy_dtype(v) for v in operands if isinstance(v, fx.Node)]
    if tensors and tensors[0] is not None:
        return tensors[0]
    return np.dtype(np.int64 if all(isinstance(v, int) for v in operands) else np.float32)


def operand(g, value, dtype: np.dtype, base: str) -> str:
    """An operand as an ONNX name of `dtype`: scalars as constants, tensors cast if needed."""
    if not isinstance(value, fx.Node):
        return g.value(value, dtype)
    name = g.tensor(value)
    if numpy_dtype(value) not in (None, dtype):
        name = g.add("Cast", [name], f"{base}/cast", to=helper.np_dtype_to_tensor_dtype(dtype))
    return name


def unary(g, node):
    return g.add(UNARY[node.target], [g.tensor(node.args[0])], node.name)


def binary(g, node):
    a, b = node.args[:2]
    dtype = compute_dtype(node, (a, b))
    x, y = (operand(g, v, dtype, node.name) for v in (a, b))
    alpha = node.kwargs.get("alpha", 1)
    if alpha != 1:
        y = g.add("Mul", [y, g.const(alpha, dtype)], f"{node.name}/alpha")
    return g.add(BINARY[node.target], [x, y], node.name)


def where(g, node):
    cond, a, b = node.args[:3]
    dtype = compute_dtype(node, (a, b))
    x, y = (operand(g, v, dtype, node.name) for v in (a, b))
    return g.add("Where", [g.tensor(cond), x, y], node.name)


def layer_norm(g, node):
    x, shape = node.args[:2]
    weight, bias = arg(node, 2, "weight"), arg(node, 3, "bias")
    scale = g.tensor(weight) if weight is not None else g.const(np.ones(shape), np.float32)
    bias = g.tensor(bias) if bias is not None else None
    return g.add("LayerNormalization", [g.tensor(x), scale, bias], node.name,
                 axis=-len(shape), epsilon=float(arg(node, 4, "eps", 1e-5)))


def softmax(g, node):
    op = "LogSoftmax" if node.target is aten.log_softmax.int else "Softmax"
    return g.add(op, [g.tensor(node.args[0])], node.name, axis=node.args[1])


def gelu(g, node):
    approximate = node.kwargs.get("approximate", arg(node, 1, "approximate", "none"))
    return g.add("Gelu", [g.tensor(node.args[0])], node.name, approximate=approximate)


def silu(g, node):
    x = g.tensor(node.args[0])
    return g.add("Mul", [x, g.add("Sigmoid", [x], f"{node.name}/sigmoid")], node.name)


def rsqrt(g, node):
    root = g.add("Sqrt", [g.tensor(node.args[0])], f"{node.name}/sqrt")
    return g.add("Reciprocal", [root], node.name)


def clip(g, node):
    defaults = (-1.0, 1.0) if node.target is aten.hardtanh.default else (None, None)
    lo, hi = arg(node, 1, "min_val", defaults[0]), arg(node, 2, "max_val", defaults[1])
    like = numpy_dtype(node.args[0]) or np.float32
    bounds = [None if v is None else g.const(v, like) for v in (lo, hi)]
    return g.add("Clip", [g.tensor(node.args[0]), *bounds], node.name)


def embedding(g, node):
    weight, indices = node.args[:2]
    return g.add("Gather", [g.tensor(weight), g.tensor(indices)], node.name, axis=0)


def linear(g, node):
    w = g.add("Transpose", [g.tensor(node.args[1])], f"{node.name}/wT", perm=[1, 0])
    bias = arg(node, 2, "bias")
    if bias is None:
        return g.add("MatMul", [g.tensor(node.args[0]), w], node.name)
    y = g.add("MatMul", [g.tensor(node.args[0]), w], f"{node.name}/matmul")
    return g.add("Add", [y, g.tensor(bias)], node.name)


def conv2d(g, node):
    x, w, bias = node.args[0], node.args[1], arg(node, 2, "bias")
    if isinstance(arg(node, 4, "padding", 0), str):
        raise BackendError("string padding is not exported", node=node)
    bias = g.tensor(bias) if bias is not None else None
    return g.add("Conv", [g.tensor(x), g.tensor(w), bias], node.name,
                 **conv_attrs(arg(node, 3, "stride", 1), arg(node, 4, "padding", 0),
                              arg(node, 5, "dilation", 1), arg(node, 6, "groups", 1)))


def matmul(g, node):
    return g.add("MatMul", [g.tensor(node.args[0]), g.tensor(node.args[1])], node.name)


def reduce(g, node):
    dims = arg(node, 1, "dim", None)
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    op = "ReduceSum" if node.target is aten.sum.dim_IntList else "ReduceMean"
    axes = g.ints(dims, "c/axes") if dims else None
    return g.add(op, [g.tensor(node.args[0]), axes], node.name,
                 keepdims=int(bool(arg(node, 2, "keepdim", False))))


def max_pool2d(g, node):
    kernel = pair(node.args[1])
    return g.add("MaxPool", [g.tensor(node.args[0])], node.name, kernel_shape=kernel,
                 strides=pair(arg(node, 2, "stride", None) or kernel),
                 pads=pads(arg(node, 3, "padding", 0)), dilations=pair(arg(node, 4, "dilation", 1)),
                 ceil_mode=int(bool(arg(node, 5, "ceil_mode", False))))


def avg_pool2d(g, node):
    if arg(node, 6, "divisor_override") is not None:
        raise BackendError("avg_pool2d with divisor_override is not exported", node=node)
    kernel = pair(node.args[1])
    return g.add("AveragePool", [g.tensor(node.args[0])], node.name, kernel_shape=kernel,
                 strides=pair(arg(node, 2, "stride", None) or kernel),
                 pads=pads(arg(node, 3, "padding", 0)),
                 ceil_mode=int(bool(arg(node, 4, "ceil_mode", False))),
                 count_include_pad=int(bool(arg(node, 5, "count_include_pad", True))))


def adaptive_avg_pool2d(g, node):
    if pair(node.args[1]) != [1, 1]:
        raise BackendError("adaptive_avg_pool2d is exported only to a 1x1 output", node=node)
    return g.add("GlobalAveragePool", [g.tensor(node.args[0])], node.name)


def cat(g, node):
    return g.add("Concat", [g.tensor(t) for t in node.args[0]], node.name,
                 axis=arg(node, 1, "dim", 0))


CONVERTERS = {
    **{target: unary for target in UNARY}, **{target: binary for target in BINARY},
    aten.where.self: where, aten.where.ScalarOther: where, aten.where.ScalarSelf: where,
    aten.layer_norm.default: layer_norm, aten.softmax.int: softmax, aten._softmax.default: softmax,
    aten.log_softmax.int: softmax, aten.gelu.default: gelu, aten.silu.default: silu,
    aten.rsqrt.default: rsqrt, aten.hardtanh.default: clip, aten.clamp.default: clip,
    aten.embedding.default: embedding, aten.linear.default: linear, aten.conv2d.default: conv2d,
    aten.matmul.default: matmul, aten.bmm.default: matmul, aten.mean.dim: reduce,
    aten.sum.dim_IntList: reduce, aten.max_pool2d.default: max_pool2d,
    aten.avg_pool2d.default: avg_pool2d, aten.adaptive_avg_pool2d.default: adaptive_avg_pool2d,
    aten.cat.default: cat,
}
