"""ONNX forms of the weight-only int4 and low-precision (fp16/bf16) ops.

- `qlinear_w4`, `dequantize_int4`: the packed codes become a UINT4 initializer (same
  nibble order as ONNX: low nibble first) behind a blocked DequantizeLinear (opset 21).
- `linear_lowp`, `matmul_lowp`, `conv2d_lowp`: operands rounded by a Cast to fp16/bf16
  and back, then the float32 op.
"""
from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto, helper

from .onnx_export_graph import onnx_dtype
from .onnx_export_qops import conv_attrs
from .ops.lowp import DTYPES

Q = torch.ops.qcompile


def _pack_uint4(codes: np.ndarray) -> bytes:
    """Codes in [0, 15], two per byte, low nibble first (padded to a whole byte)."""
    flat = codes.astype(np.uint8).reshape(-1)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()


def _uint4(g, packed: bytes, shape, base: str) -> str:
    name = g.fresh(base)
    g.initializers.append(helper.make_tensor(name, TensorProto.UINT4, list(shape), packed,
                                             raw=True))
    return name


def _int4_weight(g, node, packed, scales, zeros, group_size) -> str:
    """Blocked DequantizeLinear of packed int4 codes -> float32 [N, K]. The codes are packed
    along K exactly as ONNX packs UINT4 (K is even), so their bytes are used as they are."""
    packed, zeros = g.tensor_of(packed), g.tensor_of(zeros).numpy()
    codes = _uint4(g, packed.contiguous().numpy().tobytes(),
                   (packed.shape[0], packed.shape[1] * 2), f"{node.name}/codes")
    zero = _uint4(g, _pack_uint4(zeros), zeros.shape, f"{node.name}/zeros")
    scale = g.initializer(g.tensor_of(scales).to(torch.float32).numpy(), f"{node.name}/scales")
    return g.add("DequantizeLinear", [codes, scale, zero], f"{node.name}/w_dq", axis=1,
                 block_size=int(group_size))


def qlinear_w4(g, node):
    x, packed, scales, zeros, group_size, bias = node.args[:6]
    w = _int4_weight(g, node, packed, scales, zeros, group_size)
    w_t = g.add("Transpose", [w], f"{node.name}/wT", perm=[1, 0])
    if bias is None:
        return g.add("MatMul", [g.tensor(x), w_t], node.name)
    y = g.add("MatMul", [g.tensor(x), w_t], f"{node.name}/matmul")
    return g.add("Add", [y, g.tensor(bias)], node.name)


def dequantize_int4(g, node):
    w = _int4_weight(g, node, *node.args[:4])
    return g.add("Identity", [w], node.name)


def _rounded(g, value: str, dtype: str, base: str) -> str:
    low = g.add("Cast", [value], f"{base}/to_{dtype}", to=onnx_dtype(DTYPES[dtype]))
    return g.add("Cast", [low], f"{base}/to_f32", to=TensorProto.FLOAT)


def _lowp_weight(g, node, transpose: bool) -> str:
    w = g.tensor_of(node.args[1]).to(torch.float32)
    return g.initializer((w.T if transpose else w).contiguous().numpy(), f"{node.name}/weight")


def linear_lowp(g, node):
    x, _, bias, dtype = node.args[:4]
    y = g.add("MatMul", [_rounded(g, g.tensor(x), dtype, f"{node.name}/x"),
                         _lowp_weight(g, node, transpose=True)],
              f"{node.name}/matmul" if bias is not None else node.name)
    return g.add("Add", [y, g.tensor(bias)], node.name) if bias is not None else y


def matmul_lowp(g, node):
    a, b, dtype = node.args[:3]
    return g.add("MatMul", [_rounded(g, g.tensor(a), dtype, f"{node.name}/a"),
                            _rounded(g, g.tensor(b), dtype, f"{node.name}/b")], node.name)


def conv2d_lowp(g, node):
    x, _, bias, stride, padding, dilation, groups, dtype = node.args[:8]
    return g.add("Conv", [_rounded(g, g.tensor(x), dtype, f"{node.name}/x"),
                          _lowp_weight(g, node, transpose=False),
                          g.tensor(bias) if bias is not None else None], node.name,
                 **conv_attrs(stride, padding, dilation, groups))


CONVERTERS = {
    Q.qlinear_w4.default: qlinear_w4,
    Q.dequantize_int4.default: dequantize_int4, Q.linear_lowp.default: linear_lowp,
    Q.matmul_lowp.default: matmul_lowp, Q.conv2d_lowp.default: conv2d_lowp,
}
