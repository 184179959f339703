"""Shared checks for the lower-int8 tests: lower a model, compare ops with the reference."""
from dataclasses import dataclass

import torch

from qcompile.facts import facts_of
from qcompile.graph_run import run_recording
from qcompile.ops import float_out, reference
from qcompile.passes.lower.common import clamp_bounds
from qcompile.quant_math import quantize_multipliers


aten = torch.ops.aten
Q = torch.ops.qcompile
FLOAT_COMPUTE = {aten.linear.default, aten.conv2d.default, aten.matmul.default, aten.bmm.default}


@dataclass
class Lowered:
    gm: object
    qparams: dict          # float value name -> QParams of its quantize in the q/dq graph
    weights: dict          # anchor name -> (int8 weight, scales, float bias or None)
    qdq_out: object        # output of the q/dq graph (float simulation)
    values: dict           # node name -> value when the lowered graph runs
    stats: dict

    def const(self, node):
        from qcompile.graph_edit import constant_value
        return constant_value(self.gm, node)


def lower(qc, model, inputs, recipe="w8a8", options=None, batches=3, scale=1.0):
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    calibration = [tuple(torch.randn(t.shape, generator=torch.Generator().manual_seed(i)) * scale
                         for t in inputs) for i in range(batches)]
    options = {"calibration": "minmax", **(options or {})}
    gm, ctx = qc.context(model.eval(), inputs, calibration=calibration, recipe=recipe,
                         options=options)
    gm, _ = qc.apply(gm, ctx, "canonicalize,fuse,observe,calibrate,insert-qdq")
    qparams = {q.args[0].name: facts_of(q).qparams for q in qc.calls(gm, Q.quantize.default)}
    weights = {}
    for dq in qc.calls(gm, Q.dequantize_per_channel.default):
        (anchor,) = dq.users
        bias = anchor.args[2] if len(anchor.args) > 2 else None
        weights[anchor.name] = (qc.const(gm, dq.args[0]), qc.const(gm, dq.args[1]),
                                qc.const(gm, bias) if bias is not None else None)
    qdq_out = gm(*inputs)
    gm, records = qc.apply(gm, ctx, "lower-int8")
    _, interp = run_recording(gm, inputs, keep_values=True)
    return Lowered(gm, qparams, weights, qdq_out, interp.values, records[-1].stats)


def no_float_compute(qc, gm):
    assert not (qc.targets(gm) & FLOAT_COMPUTE), qc.targets(gm) & FLOAT_COMPUTE


def value(low, arg):
    return low.values[arg.name]


def anchor_of(node) -> str:
    """The float anchor a lowered node replaced ('qlinear_1' -> 'linear_1')."""
    return node.name[1:] if node.name.startswith("q") else node.name.rsplit("_int8", 1)[0]


def check_weighted(low, node, activation=None):
    """A qlinear/qconv2d node: int32 bias, per-channel M/n, clamp and output, bit-exact."""
    x, x_zp, w, bias, m, n, out_zp, lo, hi = node.args[:9]
    in_qp = facts_of(node).input_qparams[0]
    out_qp = low.qparams[facts_of(node).origin]
    assert facts_of(node).qparams == out_qp and in_qp in low.qparams.values()
    assert facts_of(node).activation == activation
    wq, ws, b = low.weights[anchor_of(node)]
    assert torch.equal(low.const(w), wq)
    real = in_qp.scale * ws.double() / out_qp.scale
    want_m, want_n = quantize_multipliers(real)
    assert torch.equal(low.const(m), want_m) and torch.equal(low.const(n), want_n)
    want_bias = None
    if b is not None:
        want_bias = torch.round(b.double() / (in_qp.scale * ws.double())).to(torch.int32)
        assert torch.equal(low.const(bias), want_bias)
    assert (x_zp, out_zp) == (in_qp.zero_point, out_qp.zero_point)
    assert (lo, hi) == clamp_bounds(out_qp, activation)
    args = (value(low, x), x_zp, wq, want_bias, want_m, want_n, out_zp, lo, hi)
    if node.target is Q.qlinear.default:
        expected = reference.qlinear(*args)
    else:
        expected = reference.qconv2d(*args, *node.args[9:13])
    assert torch.equal(low.values[node.name], expected)
    return expected


def check_float_out(low, node):
    """qlinear_f32/qconv2d_f32: exact int32 sum, float32 epilogue s_x * s_w[c] (+ bias)."""
    x, x_zp, w, bias, scale = node.args[:5]
    in_qp = facts_of(node).input_qparams[0]
    wq, ws, b = low.weights[anchor_of(node)]
    want_scale = torch.tensor(in_qp.scale, dtype=torch.float32) * ws
    assert torch.equal(low.const(scale), want_scale) and torch.equal(low.const(w), wq)
    assert x_zp == in_qp.zero_point and facts_of(node).qparams is None
    bias_value = low.const(bias) if bias is not None else None
    assert (b is None) == (bias_value is None)
    if b is not None:
        assert torch.equal(bias_value, b)
    args = (value(low, x), x_zp, wq, b, want_scale)
    if node.target is Q.qlinear_f32.default:
        expected = float_out.qlinear_f32(*args)
    else:
        expected = float_out.qconv2d_f32(*args, *node.args[5:9])
    assert torch.equal(low.values[node.name], expected)
