"""Accuracy-budget mixed precision (budget=) and the sensitivity ranking in the report."""
import warnings

import pytest
import torch

import qcompile
from qcompile.mixed_precision import _decision, _shortest_prefix

from tiny_models import MLP

warnings.filterwarnings("ignore", category=qcompile.QCompileWarning)


def _model():
    torch.manual_seed(0)
    model = MLP(8, 16, 16, 4).eval()
    with torch.no_grad():
        model.fc2.weight[0, 0] = 60.0       # fc2's per-channel grid is ruined by one outlier
    return model


def _compile(model, x, **options):
    return qcompile.compile(model, example_inputs=(x,), calibration_data=[x], options=options)


def _cosine(cm, model, x):
    with torch.no_grad():
        return float(torch.nn.functional.cosine_similarity(
            cm(x).reshape(-1), model(x).reshape(-1), dim=0))


def test_budget_keeps_the_most_sensitive_layer_float():
    x = torch.randn(32, 8)
    model = _model()
    plain = _compile(model, x)
    target = plain.report.output_sqnr_db + 3.0
    cm = _compile(model, x, budget={"metric": "sqnr", "min": target})
    budget = cm.report.budget
    assert budget["met"] and budget["score"] >= target
    ranked = [r["layer"] for r in cm.report.sensitivity]
    kept = budget["kept_float"]
    assert kept and kept == ranked[:len(kept)]  # the most sensitive layers, in rank order
    fewer = [t["score"] for t in budget["tried"] if t["kept_float"] < len(kept)]
    assert fewer and max(fewer) < target  # minimal: every shorter prefix tried missed it
    islands = [r for r in cm.report.nodes if r.float_reason and "keep_float" in r.float_reason]
    assert islands, "the kept layers show as float islands with their reason"
    assert "accuracy budget sqnr" in str(cm.report)


def test_budget_already_met_keeps_everything_quantized():
    x = torch.randn(32, 8)
    cm = _compile(_model(), x, budget={"metric": "cosine", "min": 0.5})
    assert cm.report.budget["met"] and cm.report.budget["kept_float"] == []
    assert cm.report.sensitivity == []  # no search needed


def test_user_metric_on_user_data():
    x = torch.randn(32, 8)
    model = _model()
    data = [torch.randn(16, 8) for _ in range(2)]
    calls = []

    def negative_max_error(want, got):
        calls.append(len(want))
        return -max(float((w - g).abs().max()) for w, g in zip(want, got))
    plain_error = -negative_max_error([model(x)], [_compile(model, x)(x)])
    cm = _compile(model, x, budget={"metric": negative_max_error, "min": -plain_error / 4,
                                    "data": data})
    assert calls and all(n == len(data) for n in calls[1:])
    assert cm.report.budget["metric"] == "negative_max_error"
    assert _cosine(cm, model, x) > 0.99


def test_sensitivity_option_ranks_layers_worst_first():
    x = torch.randn(32, 8)
    cm = _compile(_model(), x, sensitivity=True)
    rows = cm.report.sensitivity
    assert len(rows) == 3 and rows[0]["sqnr_db"] <= rows[-1]["sqnr_db"]
    assert "layer sensitivity" in str(cm.report)


@pytest.mark.parametrize("budget", [{"metric": "sqnr"}, {"metric": "psnr", "min": 3},
                                    {"min": 1, "extra": 2}, "cosine>=0.99"])
def test_bad_budget_is_a_recipe_error(budget):
    with pytest.raises(qcompile.RecipeError, match="budget"):
        _compile(_model(), torch.randn(4, 8), budget=budget)


def test_binary_search_finds_the_shortest_prefix():
    scores = {0: 10.0, 1: 20.0, 2: 25.0, 3: 31.0, 4: 32.0, 5: 40.0}
    trail = _shortest_prefix(lambda kept: scores[len(kept)], list("abcde"), 30.0)
    assert _decision(trail, 30.0) == (list("abc"), 31.0)
    assert len(trail) <= 3
    never = _shortest_prefix(lambda kept: scores[len(kept)], list("abcde"), 99.0)
    assert _decision(never, 99.0)[0] == list("abcde")
