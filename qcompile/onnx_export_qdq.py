"""QuantizeLinear / DequantizeLinear helpers for the ONNX export, and the scale of int8 values.

The integer ops of the graph carry zero points, integer multipliers and shifts; ONNX QDQ
needs float scales. The scale of an int8 value is the one its producer recorded
(`facts.qparams`, or the arguments of a quantize), found by walking back through ops that
keep their input's qparams (layout, clamp, max pooling, concatenation).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from .errors import BackendError
from .facts import facts_of
from .op_kinds import LAYOUT_OPS

Q = torch.ops.qcompile
KEEPS_INPUT_QPARAMS = LAYOUT_OPS | {Q.qclamp.default, Q.qmax_pool2d.default}


def is_call(node, target) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target is target


def rescale_factor(multiplier, shift) -> np.ndarray:
    """M * 2^-n in float64 (per channel when M and n are tensors)."""
    m = np.asarray(multiplier.double() if isinstance(multiplier, torch.Tensor) else multiplier,
                   dtype=np.float64)
    n = np.asarray(shift.double() if isinstance(shift, torch.Tensor) else shift, dtype=np.float64)
    return m * np.exp2(-n)


def int8_scale(node: fx.Node) -> float:
    """The float scale of an int8 value, from the node that produced it."""
    start = node
    while True:
        if is_call(node, Q.quantize.default):
            return float(node.args[1])
        recorded = facts_of(node).qparams if isinstance(node, fx.Node) else None
        if recorded is not None:
            return recorded.scale
        if is_call(node, Q.requantize.default):
            return float(int8_scale(node.args[0]) / rescale_factor(node.args[2], node.args[3]))
        if is_call(node, Q.qcat.default):
            node = node.args[0][0]
        elif isinstance(node, fx.Node) and node.op == "call_function" and \
                node.target in KEEPS_INPUT_QPARAMS:
            node = node.args[0]
        else:
            raise BackendError("no quantization scale is recorded for this int8 value",
                               node=start)


def output_scale(node: fx.Node) -> float:
    """The output scale an integer op was lowered with."""
    recorded = facts_of(node).qparams
    if recorded is None:
        raise BackendError("the integer op has no recorded output qparams", node=node)
    return recorded.scale


def dequantize(g, x: str, scale, zero_point, base: str, axis: int | None = None,
               zp_dtype=np.int8) -> str:
    """DequantizeLinear(x, scale, zero_point); per channel along `axis` when scale is 1-D."""
    scale = np.asarray(scale, dtype=np.float32)
    zp = np.broadcast_to(np.asarray(zero_point, dtype=zp_dtype), scale.shape)
    return g.add("DequantizeLinear", [x, g.const(scale, np.float32, "c/scale"),
                                      g.const(zp, zp_dtype, "c/zero_point")], base, axis=axis)


def dequantize_input(g, node: fx.Node, index: int, zero_point: int) -> str:
    """DequantizeLinear of the int8 argument `index` of `node` with its producer's scale."""
    src = node.args[index]
    return dequantize(g, g.tensor(src), int8_scale(src), zero_point, f"{node.name}/dq{index}")


def weight(g, node: fx.Node, scales, axis: int, transpose: bool = False, index: int = 2) -> str:
    """The int8 weight (argument `index`) as an initializer, transposed for MatMul when
    asked, behind its per-channel DequantizeLinear."""
    w = g.tensor_of(node.args[index])
    w = w.T if transpose else w
    name = g.initializer(w.contiguous().numpy(), f"{node.name}/weight")
    return dequantize(g, name, scales, 0, f"{node.name}/w_dq", axis=axis)


def int32_bias(g, node: fx.Node, scales) -> str | None:
    """DequantizeLinear of the int32 bias (argument 3) at scale s_x * s_w[c], or None."""
    if node.args[3] is None:
        return None
    return dequantize(g, g.tensor(node.args[3]), scales, 0, f"{node.name}/b_dq", axis=0,
                      zp_dtype=np.int32)


def quantize_out(g, node: fx.Node, y: str, scale: float, zero_point: int, qmin: int,
                 qmax: int) -> str:
    """QuantizeLinear to int8, then an int8 Clip when the bounds are narrower (fused ReLU)."""
    narrow = (qmin, qmax) != (-128, 127)
    q = g.add("QuantizeLinear", [y, g.const(np.float32(scale), np.float32, "c/scale"),
                                 g.const(np.int8(zero_point), np.int8, "c/zero_point")],
              f"{node.name}/q" if narrow else node.name)
    if not narrow:
        return q
    return g.add("Clip", [q, g.const(qmin, np.int8, "c/qmin"), g.const(qmax, np.int8, "c/qmax")],
                 node.name)
