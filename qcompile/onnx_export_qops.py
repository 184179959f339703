"""ONNX QDQ forms of the `qcompile::` integer ops.

Each integer op becomes DequantizeLinear on its int8 inputs, the float ONNX op, and
QuantizeLinear with the output scale. The weight scale is chosen so that
s_x * s_w[c] / s_y is exactly the op's integer rescale factor M[c] * 2^-n[c]; ONNX rounds
in float where the reference requantizes in integers, so an element may differ by one step.
"""
from __future__ import annotations

import numpy as np

from .onnx_export_qdq import (Q, dequantize, dequantize_input, int8_scale, int32_bias,
                              output_scale, quantize_out, rescale_factor, weight)


def pair(values) -> list[int]:
    values = [values] if isinstance(values, int) else list(values)
    return values * 2 if len(values) == 1 else values


def pads(padding) -> list[int]:
    """ONNX pads (begin h, begin w, end h, end w) from torch's symmetric padding."""
    return pair(padding) * 2


def quantize(g, node):
    x, scale, zp, qmin, qmax = node.args[:5]
    return quantize_out(g, node, g.tensor(x), scale, zp, qmin, qmax)


def dequantize_op(g, node):
    q, scale, zp = node.args[:3]
    return dequantize(g, g.tensor(q), scale, zp, node.name)


def quantize_per_channel(g, node):
    x, scales, axis, qmin, qmax = node.args[:5]
    s = g.tensor_of(scales).numpy()
    q = g.add("QuantizeLinear", [g.tensor(x), g.const(s, np.float32, "c/scale"),
                                 g.const(np.zeros(s.shape, np.int8), np.int8, "c/zero_point")],
              f"{node.name}/q", axis=axis)
    return g.add("Clip", [q, g.const(qmin, np.int8), g.const(qmax, np.int8)], node.name)


def dequantize_per_channel(g, node):
    q, scales, axis = node.args[:3]
    return dequantize(g, g.tensor(q), g.tensor_of(scales).numpy(), 0, node.name, axis=axis)


def requantize(g, node):
    src, in_zp, m, n, out_zp, qmin, qmax = node.args[:7]
    s_in = int8_scale(src)
    x = dequantize(g, g.tensor(src), s_in, in_zp, f"{node.name}/dq0")
    return quantize_out(g, node, x, s_in / rescale_factor(m, n), out_zp, qmin, qmax)


def _weighted_scales(g, node):
    """(s_y, per-channel weight scales, bias scales) of a qlinear/qconv2d, with
    s_x * s_w[c] / s_y = M[c] * 2^-n[c]."""
    s_x, s_y = int8_scale(node.args[0]), output_scale(node)
    factor = rescale_factor(g.tensor_of(node.args[4]), g.tensor_of(node.args[5]))
    s_w = (factor * s_y / s_x).astype(np.float32)
    return s_y, s_w, (s_x * s_w.astype(np.float64)).astype(np.float32)


def qlinear(g, node):
    s_y, s_w, s_b = _weighted_scales(g, node)
    x = dequantize_input(g, node, 0, node.args[1])
    y = g.add("MatMul", [x, weight(g, node, s_w, axis=1, transpose=True)], f"{node.name}/matmul")
    bias = int32_bias(g, node, s_b)
    if bias is not None:
        y = g.add("Add", [y, bias], f"{node.name}/add_bias")
    return quantize_out(g, node, y, s_y, *node.args[6:9])


def conv_attrs(stride, padding, dilation, groups) -> dict:
    return {"strides": pair(stride), "pads": pads(padding), "dilations": pair(dilation),
            "group": int(groups)}


def qconv2d(g, node):
    s_y, s_w, s_b = _weighted_scales(g, node)
    x = dequantize_input(g, node, 0, node.args[1])
    y = g.add("Conv", [x, weight(g, node, s_w, axis=0), int32_bias(g, node, s_b)],
              f"{node.name}/conv", **conv_attrs(*node.args[9:13]))
    return quantize_out(g, node, y, s_y, *node.args[6:9])


def qmatmul(g, node):
    a = dequantize_input(g, node, 0, node.args[1])
    b = dequantize_input(g, node, 2, node.args[3])
    y = g.add("MatMul", [a, b], f"{node.name}/matmul")
    return quantize_out(g, node, y, output_scale(node), *node.args[6:9])


def qadd(g, node):
    a = dequantize_input(g, node, 0, node.args[1])
    b = dequantize_input(g, node, 3, node.args[4])
    y = g.add("Add", [a, b], f"{node.name}/add")
    return quantize_out(g, node, y, output_scale(node), *node.args[7:10])


def qmax_pool2d(g, node):
    x, kernel, stride, padding, dilation, ceil_mode = node.args[:6]
    return g.add("MaxPool", [g.tensor(x)], node.name, kernel_shape=pair(kernel),
                 strides=pair(stride or kernel), pads=pads(padding),
                 dilations=pair(dilation), ceil_mode=int(ceil_mode))


def qavg_pool2d(g, node):
    _, zp, kernel, stride, padding, ceil_mode = node.args[:6]
    x = dequantize_input(g, node, 0, zp)
    y = g.add("AveragePool", [x], f"{node.name}/pool", kernel_shape=pair(kernel),
              strides=pair(stride or kernel), pads=pads(padding), ceil_mode=int(ceil_mode),
              count_include_pad=1)
    return quantize_out(g, node, y, output_scale(node), *node.args[8:11])


def qmean(g, node):
    _, zp, dims, keepdim = node.args[:4]
    x = dequantize_input(g, node, 0, zp)
    axes = g.ints(dims, "c/axes") if dims else None
    y = g.add("ReduceMean", [x, axes], f"{node.name}/mean", keepdims=int(keepdim))
    return quantize_out(g, node, y, output_scale(node), *node.args[6:9])


def qcat(g, node):
    return g.add("Concat", [g.tensor(t) for t in node.args[0]], node.name, axis=node.args[1])


def qclamp(g, node):
    x, qmin, qmax = node.args[:3]
    return g.add("Clip", [g.tensor(x), g.const(qmin, np.int8), g.const(qmax, np.int8)],
                 node.name)


CONVERTERS = {
    Q.quantize.default: quantize, Q.dequantize.default: dequantize_op,
    Q.quantize_per_channel.default: quantize_per_channel,
    Q.dequantize_per_channel.default: dequantize_per_channel,
    Q.requantize.default: requantize, Q.qlinear.default: qlinear, Q.qconv2d.default: qconv2d,
    Q.qmatmul.default: qmatmul, Q.qadd.default: qadd,
    Q.qmax_pool2d.default: qmax_pool2d, Q.qavg_pool2d.default: qavg_pool2d,
    Q.qmean.default: qmean, Q.qcat.default: qcat, Q.qclamp.default: qclamp,
}
