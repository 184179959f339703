"""smooth-quant: exact in float, folds into a LayerNorm when it can, helps outlier channels."""
import warnings

import torch
from torch import nn

import qcompile
from qcompile.instruments import sqnr_db

warnings.filterwarnings("ignore", category=qcompile.QCompileWarning)


class PreNorm(nn.Module):
    """LayerNorm read only by linears (foldable), then a GELU read by one linear (multiply)."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(32)
        self.up = nn.Linear(32, 64)
        self.gate = nn.Linear(32, 64)
        self.down = nn.Linear(64, 32)

    def forward(self, x):
        h = self.norm(x)
        return self.down(nn.functional.gelu(self.up(h)) * self.gate(h))


def _outlier_model():
    torch.manual_seed(0)
    model = PreNorm().eval()
    with torch.no_grad():
        model.norm.weight[:3] = 40.0            # three outlier channels, as in transformers
    return model


def _batches(seed=1, count=4):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 16, 32, generator=gen) for _ in range(count)]


def test_smoothing_is_exact_in_float_and_reports_what_it_did(qc):
    model, batches = _outlier_model(), _batches()
    gm, ctx = qc.context(model, batches[0], calibration=batches, recipe="w8a8-smoothquant")
    gm, records = qc.apply(gm, ctx, "canonicalize,fuse,smooth-quant")
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        assert sqnr_db(model(x), gm(x)) > 100
    assert records[-1].stats == {"smoothed": 2, "folded": 1}
    muls = [n for n in gm.graph.nodes if n.name.endswith("_smoothed")]
    assert len(muls) == 1                    # the gelu*gate product is divided explicitly
    assert any("folded into a LayerNorm" in m[2] for m in ctx.diagnostics.messages)


def test_other_recipes_leave_the_graph_alone(qc):
    model, batches = _outlier_model(), _batches()
    gm, ctx = qc.context(model, batches[0], calibration=batches)
    _, records = qc.apply(gm, ctx, "canonicalize,fuse,smooth-quant")
    assert records[-1].changed is False


def test_smoothquant_beats_plain_w8a8_on_outlier_channels():
    model, batches = _outlier_model(), _batches()
    x = torch.randn(4, 16, 32)
    results = {}
    for recipe in ("w8a8", "w8a8-smoothquant"):
        cm = qcompile.compile(model, example_inputs=(batches[0],), calibration_data=batches,
                              recipe=recipe)
        with torch.no_grad():
            results[recipe] = sqnr_db(model(x), cm(x))
    assert results["w8a8-smoothquant"] > results["w8a8"] + 3


def test_alpha_option_reaches_the_pass(qc):
    model, batches = _outlier_model(), _batches()
    gm, ctx = qc.context(model, batches[0], calibration=batches, recipe="w8a8-smoothquant",
                         options={"alpha": 0.8})
    qc.apply(gm, ctx, "canonicalize,fuse,smooth-quant")
    assert any("alpha=0.8" in m[2] for m in ctx.diagnostics.messages)
