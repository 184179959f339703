"""ONNX forms of the integer ops with a float32 epilogue, exact like the reference.

`qlinear_f32`, `qconv2d_f32`, `qmatmul_f32` and `qlinear_dynamic` accumulate in int32 and
never round to int8 again, so ONNX's integer ops match them exactly: MatMulInteger /
ConvInteger with the activation zero point give the int32 accumulator, then
`float32(acc) * scale (+ bias)` in the reference's order.

`qlinear_dynamic` quantizes each row at run time (asymmetric int8, per token). ONNX's
DynamicQuantizeLinear is per tensor and uint8, so the row scale and zero point are spelled
out (ReduceMin/ReduceMax, Round, Clip) and the per-row zero point is taken out of the
accumulator with the weight's column sums: sum((q - zp) * w) = sum(q * w) - zp * sum(w).
"""
from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto

from .onnx_export_qops import conv_attrs

Q = torch.ops.qcompile


def _int8_weight(g, node, index: int, transpose: bool) -> str:
    w = g.tensor_of(node.args[index])
    return g.initializer((w.T if transpose else w).contiguous().numpy(), f"{node.name}/weight")


def _epilogue(g, node, acc: str, scale: str, bias: str | None) -> str:
    """float32(acc) * scale (+ bias), the last op named after the node."""
    y = g.add("Cast", [acc], f"{node.name}/acc_f32", to=TensorProto.FLOAT)
    y = g.add("Mul", [y, scale], node.name if bias is None else f"{node.name}/scaled")
    return y if bias is None else g.add("Add", [y, bias], node.name)


def _as_uint8(g, x: str, zp: int, base: str) -> tuple[str, str]:
    """(x + 128 as uint8, zp + 128): the same integers minus the same zero point, in the
    form onnxruntime's integer GEMM and convolution kernels are fast for. The shift is a
    DequantizeLinear/QuantizeLinear pair with scale 1 (exact for 0..255)."""
    one = g.const(np.float32(1), np.float32, "c/one")
    shifted = g.add("DequantizeLinear", [x, one, g.const(np.int8(-128), np.int8, "c/minus_128")],
                    f"{base}/plus_128")
    return (g.add("QuantizeLinear", [shifted, one, g.const(np.uint8(0), np.uint8, "c/zero_u8")],
                  f"{base}/u8"),
            g.const(np.uint8(zp + 128), np.uint8, "c/zero_point_u8"))


def qlinear_f32(g, node):
    x, x_zp, _, bias, scale = node.args[:5]
    x, x_zp = _as_uint8(g, g.tensor(x), x_zp, f"{node.name}/x")
    acc = g.add("MatMulInteger", [x, _int8_weight(g, node, 2, transpose=True), x_zp],
                f"{node.name}/acc")
    return _epilogue(g, node, acc, g.tensor(scale), g.tensor(bias) if bias is not None else None)


def _per_channel(g, node, arg, base: str) -> str:
    """A per-output-channel constant reshaped to broadcast over NCHW."""
    return g.initializer(g.tensor_of(arg).reshape(1, -1, 1, 1).numpy(), f"{node.name}/{base}")


def qconv2d_f32(g, node):
    x, x_zp, _, bias, scale = node.args[:5]
    x, x_zp = _as_uint8(g, g.tensor(x), x_zp, f"{node.name}/x")
    acc = g.add("ConvInteger", [x, _int8_weight(g, node, 2, transpose=False), x_zp],
                f"{node.name}/acc",
                **conv_attrs(*node.args[5:9]))
    return _epilogue(g, node, acc, _per_channel(g, node, scale, "scale"),
                     _per_channel(g, node, bias, "bias") if bias is not None else None)


def qmatmul_f32(g, node):
    a, a_zp, b, b_zp, scale = node.args[:5]
    a, a_zp = _as_uint8(g, g.tensor(a), a_zp, f"{node.name}/a")
    b, b_zp = _as_uint8(g, g.tensor(b), b_zp, f"{node.name}/b")
    acc = g.add("MatMulInteger", [a, b, a_zp, b_zp], f"{node.name}/acc")
    return _epilogue(g, node, acc, g.const(np.float32(scale), np.float32, "c/scale"), None)


def _per_token_qparams(g, x: str, base: str):
    """(scale, zero point) of each row of x, as float32, like quantize_per_token."""
    f32 = np.float32
    axes = g.ints([-1], "c/axes")
    lo = g.add("Min", [g.add("ReduceMin", [x, axes], f"{base}/row_min"), g.const(0, f32)],
               f"{base}/lo")
    hi = g.add("Max", [g.add("ReduceMax", [x, axes], f"{base}/row_max"), g.const(0, f32)],
               f"{base}/hi")
    scale = g.add("Div", [g.add("Sub", [hi, lo], f"{base}/range"), g.const(255, f32)],
                  f"{base}/raw_scale")
    is_zero = g.add("Equal", [scale, g.const(0, f32)], f"{base}/scale_is_zero")
    scale = g.add("Where", [is_zero, g.const(1, f32), scale], f"{base}/scale")
    shifted = g.add("Sub", [g.const(-128, f32), g.add("Div", [lo, scale], f"{base}/lo_s")],
                    f"{base}/raw_zp")
    zp = g.add("Clip", [g.add("Round", [shifted], f"{base}/round_zp"), g.const(-128, f32),
                        g.const(127, f32)], f"{base}/zp")
    return scale, zp


def _row_codes(g, x: str, scale: str, zp: str, base: str) -> str:
    """int8 codes clamp(round(x / s) + zp, -128, 127) of each row."""
    f32 = np.float32
    rounded = g.add("Round", [g.add("Div", [x, scale], f"{base}/x_s")], f"{base}/round_x")
    codes = g.add("Clip", [g.add("Add", [rounded, zp], f"{base}/x_zp"), g.const(-128, f32),
                           g.const(127, f32)], f"{base}/codes_f32")
    return g.add("Cast", [codes], f"{base}/codes", to=TensorProto.INT8)


def qlinear_dynamic(g, node):
    x, w, w_scale, bias = node.args[:4]
    name, x = node.name, g.tensor(x)
    scale, zp = _per_token_qparams(g, x, name)
    raw = g.add("MatMulInteger", [_row_codes(g, x, scale, zp, name),
                                  _int8_weight(g, node, 1, transpose=True)], f"{name}/raw_acc")
    column_sums = g.tensor_of(w).to(torch.int32).sum(dim=1).to(torch.int32).numpy()
    zp_i32 = g.add("Cast", [zp], f"{name}/zp_i32", to=TensorProto.INT32)
    correction = g.add("Mul", [zp_i32, g.initializer(column_sums, f"{name}/weight_sums")],
                       f"{name}/zp_term")
    acc = g.add("Sub", [raw, correction], f"{name}/acc")
    out_scale = g.add("Mul", [scale, g.tensor(w_scale)], f"{name}/out_scale")
    return _epilogue(g, node, acc, out_scale, g.tensor(bias) if bias is not None else None)


CONVERTERS = {
    Q.qlinear_f32.default: qlinear_f32, Q.qconv2d_f32.default: qconv2d_f32,
    Q.qmatmul_f32.default: qmatmul_f32, Q.qlinear_dynamic.default: qlinear_dynamic,
}
