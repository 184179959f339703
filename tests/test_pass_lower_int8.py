"""lower-int8: each dq -> op -> q pattern becomes one qcompile integer op whose integer
parameters (bias, multiplier, shift, clamp) follow from the qparams, bit-exact against the
reference kernels composed by hand."""
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qcompile.facts import facts_of
from qcompile.graph_run import run_recording
from qcompile.instruments import sqnr_db
from qcompile.ops import float_out, reference
from qcompile.passes.lower.common import clamp_bounds
from qcompile.quant_math import quantize_multiplier, quantize_multipliers, shared_shift_multipliers

from tiny_models import MLP

pytestmark = pytest.mark.usefixtures("one_thread")

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


# ---- linear -----------------------------------------------------------------------------

class LinearChain(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 24)
        self.fc3 = nn.Linear(24, 5)

    def forward(self, x):
        return self.fc3(self.fc2(torch.relu(self.fc1(x))))


def test_qlinear_chain_is_bit_exact_with_reference_kernels_composed_by_hand(qc):
    model = LinearChain()
    x = torch.randn(4, 16)
    low = lower(qc, model, x)
    no_float_compute(qc, low.gm)
    q1, q2 = qc.calls(low.gm, Q.qlinear.default)
    (q3,) = qc.calls(low.gm, Q.qlinear_f32.default)
    check_weighted(low, q1, "relu")
    check_weighted(low, q2)
    check_float_out(low, q3)
    # the whole graph, by hand from x: quantize -> qlinear(relu) -> qlinear -> qlinear_f32
    sx = low.qparams["x"]
    s1, s2 = low.qparams["relu"], low.qparams["linear_1"]
    h = reference.quantize(x, sx.scale, sx.zero_point, -128, 127)
    for name, s_in, s_out, act in (("linear", sx, s1, "relu"), ("linear_1", s1, s2, None)):
        wq, ws, b = low.weights[name]
        m, n = quantize_multipliers(s_in.scale * ws.double() / s_out.scale)
        bias = torch.round(b.double() / (s_in.scale * ws.double())).to(torch.int32)
        lo, hi = clamp_bounds(s_out, act)
        h = reference.qlinear(h, s_in.zero_point, wq, bias, m, n, s_out.zero_point, lo, hi)
    wq, ws, b = low.weights["linear_2"]
    y = float_out.qlinear_f32(h, s2.zero_point, wq, b,
                              torch.tensor(s2.scale, dtype=torch.float32) * ws)
    assert torch.equal(low.gm(x), y)
    assert sqnr_db(low.qdq_out, y) > 30
    assert sqnr_db(model(x), y) > 25


def test_linear_without_bias(qc):
    class NoBias(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(8, 8, bias=False)
            self.fc2 = nn.Linear(8, 3, bias=False)

        def forward(self, x):
            return self.fc2(self.fc1(x))

    low = lower(qc, NoBias(), torch.randn(3, 8))
    (q1,) = qc.calls(low.gm, Q.qlinear.default)
    (q2,) = qc.calls(low.gm, Q.qlinear_f32.default)
    assert q1.args[3] is None and q2.args[3] is None
    check_weighted(low, q1)
    check_float_out(low, q2)


# ---- conv2d -----------------------------------------------------------------------------

class ConvPair(nn.Module):
    def __init__(self, cin, cout, kernel, stride, padding, dilation, groups, bias=True):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, kernel, stride, padding, dilation, groups, bias=bias)
        self.conv2 = nn.Conv2d(cout, 4, 1)

    def forward(self, x):
        return self.conv2(F.relu6(self.conv1(x)))


CONVS = {
    "plain-3x3": (4, 8, 3, 1, 0, 1, 1, True),
    "stride2-pad1": (4, 8, 3, 2, 1, 1, 1, True),
    "dilation2-pad2": (4, 8, 3, 1, 2, 2, 1, False),
    "grouped": (4, 8, 3, 1, 1, 1, 2, True),
    "depthwise": (8, 8, 3, 2, 1, 1, 8, False),
    "asymmetric": (4, 6, (3, 1), (2, 1), (1, 0), (1, 1), 1, True),
}


@pytest.mark.parametrize("case", CONVS)
def test_qconv2d_geometry_and_bit_exactness(qc, case):
    cin, cout, kernel, stride, padding, dilation, groups, bias = CONVS[case]
    model = ConvPair(cin, cout, kernel, stride, padding, dilation, groups, bias)
    x = torch.randn(2, cin, 9, 9)
    low = lower(qc, model, x)
    no_float_compute(qc, low.gm)
    (conv,) = qc.calls(low.gm, Q.qconv2d.default)
    (conv_f32,) = qc.calls(low.gm, Q.qconv2d_f32.default)
    pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]   # noqa: E731
    assert conv.args[9:13] == (pair(stride), pair(padding), pair(dilation), groups)
    check_weighted(low, conv, "relu6")
    check_float_out(low, conv_f32)
    assert low.values[conv.name].shape == model.conv1(x).shape
    assert sqnr_db(low.qdq_out, low.gm(x)) > 30


# ---- matmul, layout ops on int8 ---------------------------------------------------------

class TinyAttention(nn.Module):
    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def split(self, t):
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.hd).permute(0, 2, 1, 3)

    def forward(self, x):
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        probs = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.hd ** -0.5, dim=-1)
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(x.shape)
        return self.o(ctx)


def test_qmatmul_and_qmatmul_f32(qc):
    model = TinyAttention()
    x = torch.randn(2, 5, 16)
    low = lower(qc, model, x)
    no_float_compute(qc, low.gm)
    (scores,) = qc.calls(low.gm, Q.qmatmul_f32.default)     # feeds the float scale + softmax
    (context,) = qc.calls(low.gm, Q.qmatmul.default)        # feeds the int8 output projection
    a, a_zp, b, b_zp, scale = scores.args
    qa, qb = facts_of(scores).input_qparams
    assert scale == float(torch.tensor(qa.scale, dtype=torch.float32)
                          * torch.tensor(qb.scale, dtype=torch.float32))
    assert torch.equal(low.values[scores.name],
                       float_out.qmatmul_f32(value(low, a), a_zp, value(low, b), b_zp, scale))
    a, a_zp, b, b_zp, m, n, out_zp, lo, hi = context.args
    qa, qb = facts_of(context).input_qparams
    out = low.qparams[facts_of(context).origin]
    assert (m, n) == quantize_multiplier(qa.scale * qb.scale / out.scale)
    assert (a_zp, b_zp, out_zp, lo, hi) == (qa.zero_point, qb.zero_point, out.zero_point, -128, 127)
    assert torch.equal(low.values[context.name],
                       reference.qmatmul(value(low, a), a_zp, value(low, b), b_zp, m, n, out_zp,
                                         lo, hi))
    assert sqnr_db(model(x), low.gm(x)) > 20


def test_layout_ops_run_on_int8(qc):
    low = lower(qc, TinyAttention(), torch.randn(2, 5, 16))
    layout = [n for n in qc.calls(low.gm) if n.target in (aten.reshape.default,
                                                          aten.permute.default,
                                                          aten.transpose.int)]
    assert len(layout) >= 5
    for node in layout:
        assert facts_of(node).tensor.dtype == "i8", node
        assert node.args[0].target is not Q.dequantize.default
    # the only dequantize left feeds the float softmax island
    for dq in qc.calls(low.gm, Q.dequantize.default):
        assert all(u.target is not aten.reshape.default for u in dq.users)
    assert aten.softmax.int in qc.targets(low.gm)


def test_float_islands_are_named(qc):
    low = lower(qc, TinyAttention(), torch.randn(2, 5, 16))
    (softmax,) = qc.calls(low.gm, aten.softmax.int)
    assert "no integer kernel" in facts_of(softmax).float_reason
    assert low.stats["float_islands"] >= 2                     # softmax and the scale mul
    assert low.stats["lower_matmul"] == 1 and low.stats["lower_matmul_float_out"] == 1


# ---- add, pooling, cat ------------------------------------------------------------------

class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.out = nn.Conv2d(4, 2, 1)
        with torch.no_grad():
            self.b.weight.mul_(4.0)            # operand scales differ

    def forward(self, x):
        return self.out(torch.relu(self.a(x) + self.b(x)))


def test_qadd_shares_one_shift(qc):
    low = lower(qc, Residual(), torch.randn(2, 3, 6, 6))
    no_float_compute(qc, low.gm)
    (add,) = qc.calls(low.gm, Q.qadd.default)
    a, a_zp, ma, b, b_zp, mb, n, out_zp, lo, hi = add.args
    qa, qb = facts_of(add).input_qparams
    out = low.qparams[facts_of(add).origin]
    assert facts_of(add).activation == "relu" and facts_of(add).origin.startswith("relu")
    assert qa != qb
    (want_ma, want_mb), want_n = shared_shift_multipliers([qa.scale / out.scale,
                                                          qb.scale / out.scale])
    assert (ma, mb, n) == (want_ma, want_mb, want_n)
    assert (lo, hi) == clamp_bounds(out, "relu")
    expected = reference.qadd(value(low, a), qa.zero_point, ma, value(low, b), qb.zero_point, mb,
                              n, out.zero_point, lo, hi)
    assert (a_zp, b_zp, out_zp) == (qa.zero_point, qb.zero_point, out.zero_point)
    assert torch.equal(low.values[add.name], expected)


class Pooled(nn.Module):
    def __init__(self, pool):
        super().__init__()
        self.pool = pool
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        if self.pool == "mean":
            return self.fc(y.mean((2, 3)))
        if self.pool == "adaptive":
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))
        if self.pool == "avg":
            return self.conv2(F.avg_pool2d(y, 2))
        if self.pool == "avg-pad":
            return self.conv2(F.avg_pool2d(y, 3, stride=1, padding=1))
        return self.conv2(F.max_pool2d(y, 3, stride=2, padding=1))


@pytest.mark.parametrize("pool", ["mean", "adaptive"])
def test_qmean(qc, pool):
    low = lower(qc, Pooled(pool), torch.randn(2, 3, 6, 6))
    no_float_compute(qc, low.gm)
    (mean,) = qc.calls(low.gm, Q.qmean.default)
    x, x_zp, dims, keepdim, m, n, out_zp, lo, hi = mean.args
    (qin,) = facts_of(mean).input_qparams
    out = facts_of(mean).qparams
    assert out == low.qparams[facts_of(mean).origin]
    assert (m, n) == quantize_multiplier(qin.scale / (out.scale * 36))
    assert keepdim == (pool == "adaptive")
    expected = reference.qmean(value(low, x), qin.zero_point, dims, keepdim, m, n, out_zp, lo, hi)
    assert torch.equal(low.values[mean.name], expected)
    assert (x_zp, out_zp, lo, hi) == (qin.zero_point, out.zero_point, -128, 127)


@pytest.mark.parametrize("pool,kernel,stride,padding", [("avg", 2, 2, 0), ("avg-pad", 3, 1, 1)])
def test_qavg_pool2d(qc, pool, kernel, stride, padding):
    low = lower(qc, Pooled(pool), torch.randn(2, 3, 6, 6))
    no_float_compute(qc, low.gm)
    (avg,) = qc.calls(low.gm, Q.qavg_pool2d.default)
    x, x_zp, k, s, p, ceil, m, n, out_zp, lo, hi = avg.args
    assert (list(k), list(s), list(p), ceil) == ([kernel] * 2, [stride] * 2, [padding] * 2, False)
    (qin,) = facts_of(avg).input_qparams
    out = facts_of(avg).qparams
    assert (m, n) == quantize_multiplier(qin.scale / (out.scale * kernel * kernel))
    expected = reference.qavg_pool2d(value(low, x), qin.zero_point, k, s, p, False, m, n, out_zp,
                                     lo, hi)
    assert torch.equal(low.values[avg.name], expected)


def test_qmax_pool2d_keeps_its_input_qparams(qc):
    low = lower(qc, Pooled("max"), torch.randn(2, 3, 6, 6))
    no_float_compute(qc, low.gm)
    (pool,) = qc.calls(low.gm, Q.qmax_pool2d.default)
    assert pool.args[0].target is Q.qconv2d.default             # observed at the range root
    assert pool.args[1:] == ([3, 3], [2, 2], [1, 1], [1, 1], False)
    assert facts_of(pool).qparams == facts_of(pool.args[0]).qparams
    assert "max_pool2d" not in low.qparams                         # no range of its own
    expected = reference.qmax_pool2d(value(low, pool.args[0]), *pool.args[1:])
    assert torch.equal(low.values[pool.name], expected)
    (conv2,) = qc.calls(low.gm, Q.qconv2d_f32.default)
    assert conv2.args[0] is pool


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.out = nn.Conv2d(8, 2, 1)
        with torch.no_grad():
            self.b.weight.mul_(10.0)

    def forward(self, x):
        return self.out(torch.cat([self.a(x), self.b(x)], dim=1))


def test_qcat_requantizes_mismatched_inputs(qc):
    low = lower(qc, Concat(), torch.randn(2, 3, 5, 5))
    no_float_compute(qc, low.gm)
    (cat,) = qc.calls(low.gm, Q.qcat.default)
    parts, dim = cat.args
    assert dim == 1
    out = facts_of(cat).qparams
    assert out == low.qparams["cat"]
    requantized = 0
    for part, src_qp in zip(parts, facts_of(cat).input_qparams):
        if part.target is Q.requantize.default:
            requantized += 1
            src, in_zp, m, n, out_zp, lo, hi = part.args
            assert src.target is Q.qconv2d.default and facts_of(src).qparams == src_qp
            assert (m, n) == quantize_multiplier(src_qp.scale / out.scale)
            assert (in_zp, out_zp, lo, hi) == (src_qp.zero_point, out.zero_point, -128, 127)
            assert torch.equal(low.values[part.name],
                               reference.requantize(value(low, src), in_zp, m, n, out_zp, lo, hi))
        else:
            assert (src_qp.scale, src_qp.zero_point) == (out.scale, out.zero_point)
    assert requantized >= 1
    assert torch.equal(low.values[cat.name], torch.cat([value(low, p) for p in parts], 1))


def test_standalone_relu_on_int8_is_a_qclamp(qc):
    class SharedOutput(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = nn.Linear(8, 4)
            self.c = nn.Linear(8, 4)

        def forward(self, x):
            y = self.a(x)                      # two readers: relu is not fused
            return self.b(torch.relu(y)) + self.c(y)

    low = lower(qc, SharedOutput(), torch.randn(3, 8))
    no_float_compute(qc, low.gm)
    (clamp,) = qc.calls(low.gm, Q.qclamp.default)
    src, lo, hi = clamp.args
    zp = facts_of(src).qparams.zero_point
    assert (lo, hi) == (max(-128, zp), 127)
    assert torch.equal(low.values[clamp.name], reference.qclamp(value(low, src), lo, hi))


# ---- dynamic ----------------------------------------------------------------------------

def test_w8a8_dynamic_lowers_to_qlinear_dynamic(qc):
    model = MLP(12, 20, 6, act=F.gelu)
    x = torch.randn(2, 7, 12)
    low = lower(qc, model, x, recipe="w8a8-dynamic")
    no_float_compute(qc, low.gm)
    nodes = qc.calls(low.gm, Q.qlinear_dynamic.default)
    assert len(nodes) == 2
    assert not qc.calls(low.gm, Q.quantize.default)
    for node in nodes:
        xin, w, w_scale, bias = node.args
        wq, ws, b = low.weights[anchor_of(node)]
        assert torch.equal(low.const(w), wq) and torch.equal(low.const(w_scale), ws)
        assert torch.equal(low.const(bias), b)
        expected = reference.qlinear_dynamic(value(low, xin), wq, ws, b)
        assert torch.equal(low.values[node.name], expected)
    assert sqnr_db(model(x), low.gm(x)) > 25
