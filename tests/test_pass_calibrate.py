"""calibrate: stream the batches once through the observers, pick ranges and int8 qparams."""
import pytest
import torch
from torch import nn

import qcompile
from qcompile.errors import CalibrationError, QCompileError
from qcompile.facts import QParams, facts_of
from qcompile.passes.quantize.site import observer_sites
from qcompile.quant_math import qparams_from_range

pytestmark = pytest.mark.usefixtures("one_thread")

UP_TO = "canonicalize,fuse,observe"


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc1 = nn.Linear(16, 16)
        self.fc2 = nn.Linear(16, 4)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.randn(16, 16, generator=g) * 0.3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def outlier_batches(count=4, outlier=1000.0):
    """Mostly N(0,1) values, one huge outlier in the first batch."""
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(64, 16, generator=g),) for _ in range(count)]
    batches[0][0][3, 5] = outlier
    return batches


def site_of(gm, value_name):
    return next(node for node, site in observer_sites(gm) if site.value_name == value_name)


def calibrated(qc, pipeline="calibrate", **kwargs):
    kwargs.setdefault("calibration", outlier_batches())
    gm, ctx = qc.context(Chain(), (torch.randn(2, 16),), **kwargs)
    gm, records = qc.apply(gm, ctx, f"{UP_TO},{pipeline}")
    return gm, ctx, records[-1]


def test_minmax_range_is_min_and_max_over_all_batches(qc):
    batches = outlier_batches()
    gm, ctx, record = calibrated(qc, calibration=batches, options={"calibration": "minmax"})
    facts = facts_of(site_of(gm, "x"))
    data = torch.cat([b[0] for b in batches])
    assert facts.observed.method == "minmax"
    assert (facts.observed.lo, facts.observed.hi) == (data.min().item(), data.max().item())
    scale, zp = qparams_from_range(data.min().item(), data.max().item(), symmetric=False)
    assert facts.qparams == QParams(scale, zp)
    assert record.stats == {"batches": 4, "observed": 2}
    assert ctx.calibration_summary["method"] == "minmax"
    assert ctx.calibration_summary["batches"] == 4


def test_every_site_gets_qparams_matching_its_range(qc):
    gm, _, _ = calibrated(qc)
    sites = observer_sites(gm)
    assert [s.value_name for _, s in sites] == ["x", "relu"]
    for node, site in sites:
        facts = facts_of(node)
        scale, zp = qparams_from_range(facts.observed.lo, facts.observed.hi, symmetric=False)
        assert facts.qparams == QParams(scale, zp)
        assert not site.enabled                     # observing only while calibrating
    relu = facts_of(site_of(gm, "relu"))
    assert relu.observed.lo == 0.0 and relu.qparams.zero_point == -128


def test_percentile_through_pipeline_options(qc):
    gm, ctx, _ = calibrated(qc, "calibrate{method=percentile,p=99.9}")
    facts = facts_of(site_of(gm, "x"))
    assert facts.observed.method == "percentile"
    assert 2.0 < facts.observed.hi < 10.0           # the 1000.0 outlier is clipped
    assert ctx.calibration_summary["knobs"]["p"] == pytest.approx(99.9)
    scale, zp = qparams_from_range(facts.observed.lo, facts.observed.hi, symmetric=False)
    assert facts.qparams == QParams(scale, zp)


def test_recipe_option_picks_the_default_method(qc):
    gm, ctx, _ = calibrated(qc, options={"calibration": "entropy"})
    assert facts_of(site_of(gm, "x")).observed.method == "entropy"
    gm, ctx, _ = calibrated(qc)
    assert facts_of(site_of(gm, "x")).observed.method == ctx.options.calibration


def test_pipeline_method_overrides_the_recipe_option(qc):
    gm, ctx, _ = calibrated(qc, "calibrate{method=percentile,p=99.9}",
                            options={"calibration": "minmax"})
    assert facts_of(site_of(gm, "x")).observed.method == "percentile"


def test_percentile_through_compile_options():
    model = Chain().eval()
    cm = qcompile.compile(model, target="reference", example_inputs=(torch.randn(2, 16),),
                          calibration_data=outlier_batches(),
                          options={"calibration": "percentile", "calibration_options": {"p": 99.9}})
    assert cm.report.calibration["method"] == "percentile"
    assert cm.report.calibration["knobs"]["p"] == pytest.approx(99.9)
    (x_q,) = [n for n in cm.graph.graph.nodes
              if n.target is torch.ops.qcompile.quantize.default and n.args[0].name == "x"]
    assert facts_of(x_q).observed.method == "percentile"
    assert facts_of(x_q).observed.hi < 10.0


def test_minmax_keeps_the_outlier(qc):
    gm, _, _ = calibrated(qc, "calibrate{method=minmax}")
    assert facts_of(site_of(gm, "x")).observed.hi == 1000.0


@pytest.mark.parametrize("method", ["minmax", "moving-average", "percentile", "mse", "entropy"])
def test_every_method_runs_and_yields_valid_qparams(qc, method):
    gm, ctx, _ = calibrated(qc, f"calibrate{{method={method}}}")
    for node, _ in observer_sites(gm):
        facts = facts_of(node)
        assert facts.observed.method == method
        assert facts.observed.lo <= facts.observed.hi
        assert facts.qparams.scale > 0 and -128 <= facts.qparams.zero_point <= 127
    assert ctx.calibration_summary["method"] == method


def test_symmetric_activations_give_zero_point_zero(qc):
    gm, _, _ = calibrated(qc, options={"symmetric_activations": True})
    facts = facts_of(site_of(gm, "x"))
    bound = max(-facts.observed.lo, facts.observed.hi)
    assert facts.qparams.zero_point == 0
    assert facts.qparams.scale == pytest.approx(bound / 127, rel=1e-6)


def test_calibration_data_is_read_once_from_a_generator(qc):
    batches = outlier_batches(count=3)
    reads = []

    def stream():
        for b in batches:
            reads.append(1)
            yield b

    gm, ctx, record = calibrated(qc, calibration=stream())
    assert len(reads) == 3 and record.stats["batches"] == 3


def test_unknown_method_is_a_typed_error(qc):
    with pytest.raises(QCompileError, match="bogus"):
        calibrated(qc, "calibrate{method=bogus}")


def test_knob_of_another_method_is_a_calibration_error(qc):
    with pytest.raises(CalibrationError, match="p"):
        calibrated(qc, "calibrate{method=minmax,p=99}")


def test_empty_calibration_data_is_an_error(qc):
    with pytest.raises(CalibrationError, match="no batches"):
        calibrated(qc, calibration=[])


def test_badly_shaped_batch_is_an_error(qc):
    with pytest.raises(CalibrationError, match="calibration batch 1"):
        calibrated(qc, calibration=[(torch.randn(4, 16),), (torch.randn(4, 15),)])


def test_no_sites_means_nothing_to_do(qc):
    gm, ctx, record = calibrated(qc, recipe="w8a8-dynamic")
    assert record.stats == {"batches": 0} and not record.changed
