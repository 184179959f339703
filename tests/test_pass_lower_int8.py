"""lower-int8: linear, conv2d, matmul and layout patterns, bit-exact with the reference."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qcompile.facts import facts_of
from qcompile.instruments import sqnr_db
from qcompile.ops import float_out, reference
from qcompile.quant_math import quantize_multiplier, quantize_multipliers

from lowering_checks import (Q, aten, check_float_out,
                             check_weighted, lower, no_float_compute, value)
from qcompile.passes.lower.common import clamp_bounds

pytestmark = pytest.mark.usefixtures("one_thread")

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
