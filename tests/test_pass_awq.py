"""AWQ: scales searched on calibration rows; exact in float; better than rounding alone."""
import warnings

import pytest

import torch

import qcompile
from qcompile.instruments import sqnr_db
from qcompile.passes.quantize.awq import _rounded, search_scales

warnings.filterwarnings("ignore", category=qcompile.QCompileWarning)


def _salient_inputs(rows=256, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 64, generator=gen)
    x[:, :4] *= 20.0                                    # a few salient input channels
    return x


def test_search_prefers_scaling_when_channels_are_salient():
    torch.manual_seed(1)
    x, w = _salient_inputs(), torch.randn(32, 64)
    scales, exponent = search_scales(x.abs().mean(dim=0), x, [w], 32, True)
    assert exponent > 0
    plain = (x @ (_rounded(w, 32, True) - w).T).pow(2).mean()
    scaled = (x @ (_rounded(w * scales, 32, True) / scales - w).T).pow(2).mean()
    assert scaled < plain


@pytest.mark.parametrize("bits", ["w4", "w8"])
def test_awq_pass_is_exact_in_float_and_beats_rtn(bits):
    torch.manual_seed(2 if bits == "w4" else 5)
    model = torch.nn.Sequential(torch.nn.LayerNorm(64), torch.nn.Linear(64, 64),
                                torch.nn.GELU(), torch.nn.Linear(64, 8)).eval()
    with torch.no_grad():
        model[0].weight[:4] = 25.0 if bits == "w4" else 60.0
    batches = [torch.randn(32, 64) for _ in range(4)]
    x = torch.randn(64, 64)
    options = {"group_size": 32} if bits == "w4" else {"weight_calibration": "minmax"}
    lowered = torch.ops.qcompile.qlinear_w4 if bits == "w4" else torch.ops.qcompile.qlinear_w8
    results = {}
    for solver in ("rtn", "awq"):
        cm = qcompile.compile(model, example_inputs=(batches[0],), calibration_data=batches,
                              recipe=f"{bits}a16-{solver}", options=options)
        assert [n.target for n in cm.graph.graph.nodes].count(lowered.default) == 2
        with torch.no_grad():
            results[solver] = sqnr_db(model(x), cm(x))
        if solver == "awq" and bits == "w4":
            awq = next(p for p in cm.report.passes if p.name == "awq")
            assert awq.changed and awq.sqnr_db > 80       # scaling alone changes nothing
    assert results["awq"] >= results["rtn"] if bits == "w8" else results["awq"] > results["rtn"]


def test_int8_rounding_is_per_row_symmetric():
    w = torch.tensor([[1.0, -0.5], [0.01, 0.02]])
    out = _rounded(w, 0, True)
    half_steps = w.abs().amax(dim=1, keepdim=True) / 127 / 2
    assert ((out - w).abs() <= half_steps + 1e-9).all()
    assert out[0, 0] == 1.0 and out[1, 1] == 0.02
