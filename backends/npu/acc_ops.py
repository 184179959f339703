"""Float-output integer ops split at the accumulator, so their integer work runs in C.

    qlinear_f32(x, zp, w, b, s)  ->  acc = qcompile_npu::linear_acc(x, zp, w)        (C, int32)
                                     y = scale_bias(acc, s, b, axis=-1)               (host)
    qconv2d_f32(x, zp, w, b, s, ...) -> acc = qcompile_npu::conv2d_acc(x, zp, w, ...) (C, int32)
                                     y = scale_bias(acc, s, b, axis=1)                (host)

`float32(acc) * scale (+ bias)` in torch, as the reference kernels compute it, so the final
floats are identical. The accumulator ops are torch custom ops (exact int64 reference, fake
kernels for export) with Relax converters for the integer module.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx

Q = torch.ops.qcompile


@torch.library.custom_op("qcompile_npu::linear_acc", mutates_args=())
def linear_acc(x: torch.Tensor, x_zp: int, w: torch.Tensor) -> torch.Tensor:
    """int32 sum((x - x_zp) * w) over K: int8 [..., K] x int8 [N, K] -> int32 [..., N]."""
    acc = torch.matmul(x.to(torch.float64) - x_zp, w.to(torch.float64).T)
    return acc.round().to(torch.int32)


@linear_acc.register_fake
def _linear_acc_fake(x, x_zp, w):
    return x.new_empty((*x.shape[:-1], w.shape[0]), dtype=torch.int32)


@torch.library.custom_op("qcompile_npu::conv2d_acc", mutates_args=())
def conv2d_acc(x: torch.Tensor, x_zp: int, w: torch.Tensor, stride: list[int],
               padding: list[int], dilation: list[int], groups: int) -> torch.Tensor:
    """int32 NCHW convolution of (x - x_zp) (padding counts 0) with w."""
    acc = F.conv2d(x.to(torch.float64) - x_zp, w.to(torch.float64), None, stride, padding,
                   dilation, groups)
    return acc.round().to(torch.int32)


@conv2d_acc.register_fake
def _conv2d_acc_fake(x, x_zp, w, stride, padding, dilation, groups):
    out = F.conv2d(torch.empty(x.shape, device="meta"), torch.empty(w.shape, device="meta"),
                   None, stride, padding, dilation, groups)
    return x.new_empty(out.shape, dtype=torch.int32)


def scale_bias(acc: torch.Tensor, scale: torch.Tensor, bias, axis: int) -> torch.Tensor:
    """float32(acc) * scale (+ bias), per channel along `axis` (-1 or 1), on the host."""
    shape = [1] * acc.dim()
    shape[axis] = -1
    y = acc.to(torch.float32) * (scale.reshape(shape) if axis == 1 else scale)
    if bias is None:
        return y
    return y + (bias.reshape(shape) if axis == 1 else bias)


def _as_pair(value, default):
    values = list(value) if value else list(default)
    return [int(v) for v in (values * 2 if len(values) == 1 else values)]


def _split_node(graph: fx.Graph, node: fx.Node) -> None:
    ops = torch.ops.qcompile_npu
    if node.target is Q.qlinear_f32.default:
        x, zp, w, bias, scale = node.args
        with graph.inserting_before(node):
            acc = graph.call_function(ops.linear_acc.default, (x, zp, w))
            y = graph.call_function(scale_bias, (acc, scale, bias, -1))
    else:
        x, zp, w, bias, scale, stride, padding, dilation, groups = node.args
        args = (x, zp, w, _as_pair(stride, [1]), _as_pair(padding, [0]),
                _as_pair(dilation, [1]), int(groups))
        with graph.inserting_before(node):
            acc = graph.call_function(ops.conv2d_acc.default, args)
            y = graph.call_function(scale_bias, (acc, scale, bias, 1))
    node.replace_all_uses_with(y)
    graph.erase_node(node)


def split_float_out(gm: fx.GraphModule) -> list:
    """Rewrite qlinear_f32 / qconv2d_f32 of `gm` in place; returns the names of those split."""
    nodes = [n for n in gm.graph.nodes
             if n.target in (Q.qlinear_f32.default, Q.qconv2d_f32.default)]
    names = [n.name for n in nodes]
    for node in nodes:
        _split_node(gm.graph, node)
    if nodes:
        gm.recompile()
    return names


def _linear_acc_relax(node, importer):
    from ..tvm.relax_ops import _linear_acc
    x, x_zp, w = importer.retrieve_args(node)
    return _linear_acc(x, x_zp, w)


def _conv2d_acc_relax(node, importer):
    from ..tvm.relax_ops import _conv_acc
    x, x_zp, w, stride, padding, dilation, groups = importer.retrieve_args(node)
    return _conv_acc(x, x_zp, w, stride, padding, dilation, groups)


CONVERTERS = {"linear_acc.default": _linear_acc_relax, "conv2d_acc.default": _conv2d_acc_relax}
