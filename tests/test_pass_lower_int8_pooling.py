"""lower-int8: add, pooling, cat, standalone ReLU and dynamic linear patterns."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qcompile.facts import facts_of
from qcompile.instruments import sqnr_db
from qcompile.ops import reference
from qcompile.quant_math import quantize_multiplier, shared_shift_multipliers

from lowering_checks import (Q, anchor_of, lower, no_float_compute, value)
from qcompile.passes.lower.common import clamp_bounds

pytestmark = pytest.mark.usefixtures("one_thread")
from tiny_models import MLP

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
