"""insert-qdq: observer sites -> quantize/dequantize; weights -> int8 per channel, symmetric."""
import pytest
import torch
from torch import nn

from qcompile.errors import PipelineError
from qcompile.facts import ChannelQParams, facts_of
from qcompile.instruments import sqnr_db
from qcompile.ops import reference
from qcompile.passes.quantize.site import observer_sites
from qcompile.quant_math import weight_scales_per_channel

pytestmark = pytest.mark.usefixtures("one_thread")

aten = torch.ops.aten
UP_TO_CALIBRATE = "canonicalize,fuse,observe,calibrate"


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
        self.fc = nn.Linear(6, 4)
        with torch.no_grad():
            for m in (self.conv, self.dw, self.fc):             # very different channel ranges
                spread = torch.logspace(-2, 1, m.weight.shape[0])
                m.weight.mul_(spread.reshape(-1, *[1] * (m.weight.dim() - 1)))
                m.weight.add_(torch.randn(m.weight.shape, generator=g) * 1e-3)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        y = torch.relu(self.dw(y))
        return self.fc(y.mean((2, 3)))


def quantized(qc, options=None, recipe="w8a8"):
    model = Net().eval()
    x = torch.randn(2, 3, 6, 6)
    gm, ctx = qc.context(model, (x,), calibration=qc.batches((2, 3, 6, 6)), recipe=recipe,
                         options=options)
    gm, _ = qc.apply(gm, ctx, UP_TO_CALIBRATE)
    sites = {site.value_name: facts_of(node).qparams for node, site in observer_sites(gm)}
    gm, records = qc.apply(gm, ctx, "insert-qdq")
    return model, x, gm, sites, records[-1]


def weight_dqs(qc, gm):
    """anchor -> (int8 weight, scales) read through dequantize_per_channel."""
    out = {}
    for anchor in qc.calls(gm, aten.conv2d.default) + qc.calls(gm, aten.linear.default):
        dq = anchor.args[1]
        assert dq.target is qc.Q.dequantize_per_channel.default, anchor
        wq, scales, axis = dq.args
        assert axis == 0
        out[anchor] = (qc.const(gm, wq), qc.const(gm, scales))
    return out


def test_observers_become_quantize_dequantize_pairs(qc):
    _, _, gm, sites, record = quantized(qc)
    assert not observer_sites(gm)
    assert not [n for n in gm.graph.nodes if n.op == "call_module"]
    assert not [name for name, _ in gm.named_children() if name.startswith("obs_")]
    quantizes = qc.calls(gm, qc.Q.quantize.default)
    assert {q.args[0].name for q in quantizes} == set(sites)
    for q in quantizes:
        qp = sites[q.args[0].name]
        assert q.args[1:] == (qp.scale, qp.zero_point, qp.qmin, qp.qmax)
        assert facts_of(q).qparams == qp
        (dq,) = q.users
        assert dq.target is qc.Q.dequantize.default
        assert dq.args == (q, qp.scale, qp.zero_point)
    assert record.stats == {"activations": len(sites), "weights": 3}


def float_weights(model) -> dict:
    """shape -> float weight (the three shapes differ)."""
    return {tuple(m.weight.shape): m.weight.detach() for m in (model.conv, model.dw, model.fc)}


def test_minmax_weights_are_per_channel_symmetric_int8(qc):
    model, _, gm, _, _ = quantized(qc, options={"weight_calibration": "minmax"})
    weights = float_weights(model)
    found = weight_dqs(qc, gm)
    assert len(found) == 3
    for anchor, (wq, scales) in found.items():
        weight = weights[tuple(wq.shape)]
        assert wq.dtype == torch.int8 and scales.dtype == torch.float32
        assert scales.shape == (wq.shape[0],)
        assert int(wq.min()) >= -127 and int(wq.max()) <= 127
        torch.testing.assert_close(scales, weight_scales_per_channel(weight, axis=0),
                                   rtol=0, atol=0)
        assert torch.equal(wq, reference.quantize_per_channel(weight, scales, 0, -127, 127))
        # every channel reaches +-127 (max-abs) and reconstructs within half a step
        assert torch.equal(wq.reshape(wq.shape[0], -1).abs().amax(1),
                           torch.full((wq.shape[0],), 127, dtype=torch.int8))
        err = (wq.float() * scales.reshape(-1, *[1] * (wq.dim() - 1)) - weight).abs()
        assert (err.reshape(wq.shape[0], -1).amax(1) <= scales / 2 + 1e-7).all()
        assert facts_of(anchor).weight_qparams == ChannelQParams(tuple(scales.tolist()))


def test_mse_weights_stay_in_range_and_never_widen(qc):
    model, _, gm, _, _ = quantized(qc, options={"weight_calibration": "mse"})
    weights = float_weights(model)
    for anchor, (wq, scales) in weight_dqs(qc, gm).items():
        weight = weights[tuple(wq.shape)]
        assert wq.dtype == torch.int8
        assert int(wq.min()) >= -127 and int(wq.max()) <= 127
        assert (scales <= weight_scales_per_channel(weight, axis=0) * (1 + 1e-6)).all()
        assert torch.equal(wq, reference.quantize_per_channel(weight, scales, 0, -127, 127))
        assert facts_of(anchor).weight_qparams == ChannelQParams(tuple(scales.tolist()))


def test_depthwise_scales_follow_output_channels(qc):
    _, _, gm, _, _ = quantized(qc, options={"weight_calibration": "minmax"})
    (dw,) = [a for a in qc.calls(gm, aten.conv2d.default) if a.args[6:] and a.args[6] == 6]
    wq, scales = weight_dqs(qc, gm)[dw]
    assert wq.shape == (6, 1, 3, 3) and scales.shape == (6,)
    assert scales.max() / scales.min() > 100            # one scale per channel, not per tensor


def test_qdq_graph_stays_close_to_float(qc):
    model, x, gm, _, _ = quantized(qc)
    out = gm(x)
    assert out.dtype == torch.float32
    assert sqnr_db(model(x), out) > 25


def test_dynamic_recipe_quantizes_only_linear_weights(qc):
    _, _, gm, sites, record = quantized(qc, recipe="w8a8-dynamic")
    assert sites == {}
    assert not qc.calls(gm, qc.Q.quantize.default)
    (fc,) = qc.calls(gm, aten.linear.default)
    assert fc.args[1].target is qc.Q.dequantize_per_channel.default
    for conv in qc.calls(gm, aten.conv2d.default):
        assert conv.args[1].op == "get_attr"
    assert record.stats == {"activations": 0, "weights": 1}


def test_without_calibrate_is_a_pipeline_error(qc):
    gm, ctx = qc.context(Net(), (torch.randn(1, 3, 6, 6),))
    with pytest.raises(PipelineError, match="calibrate"):
        qc.apply(gm, ctx, "canonicalize,fuse,observe,insert-qdq")
