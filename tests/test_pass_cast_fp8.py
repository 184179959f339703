"""cast-fp8: the fp8 recipe runs linear/conv2d/matmul on float8 operands with exact accumulation."""
import warnings

import pytest
import torch

import qcompile
from qcompile.graph_run import DTYPE_NAMES
from qcompile.instruments import sqnr_db
from qcompile.ops import fp8
from qcompile.passes.quantize import cast_fp8

from tiny_models import ConvFcOuter

warnings.filterwarnings("ignore", category=qcompile.QCompileWarning)
Q = torch.ops.qcompile
FP8_OPS = {Q.linear_fp8.default, Q.conv2d_fp8.default, Q.matmul_fp8.default}


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 10)).eval()


def _compile(model, x, options=None, **kwargs):
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(x.shape, generator=gen) for _ in range(4)]
    return qcompile.compile(model, example_inputs=(x,), calibration_data=batches, recipe="fp8",
                            options=options, **kwargs)


def _targets(cm):
    return [n.target for n in cm.graph.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_linear_conv_matmul_rewritten_with_fp8_dtypes(fmt):
    x = torch.randn(2, 3, 8, 8)
    cm = _compile(ConvFcOuter().eval(), x, {"fp8_format": fmt})
    targets = _targets(cm)
    assert FP8_OPS <= set(targets)
    assert not {torch.ops.aten.linear.default, torch.ops.aten.conv2d.default,
                torch.ops.aten.matmul.default} & set(targets)
    dtype = fp8.FORMATS[fmt].dtype
    weights = [n.args[2] for n in cm.graph.graph.nodes if n.target in FP8_OPS - {Q.matmul_fp8.default}]
    assert [cm.graph.get_buffer(w.target).dtype for w in weights] == [dtype, dtype]
    assert {n.args[2] for n in cm.graph.graph.nodes if n.target is Q.quantize_fp8.default} == {fmt}
    outputs = {row.output.split("[")[0] for row in cm.report.nodes if row.op.endswith("fp8")}
    assert DTYPE_NAMES[dtype] in outputs
    assert torch.isfinite(cm(x)).all()


def test_matmul_operands_quantized_once_each():
    x = torch.randn(2, 3, 8, 8)
    cm = _compile(ConvFcOuter().eval(), x)
    matmul = next(n for n in cm.graph.graph.nodes if n.target is Q.matmul_fp8.default)
    a, b = matmul.args[0], matmul.args[2]
    assert a.target is Q.quantize_fp8.default and b.target is Q.quantize_fp8.default
    assert _targets(cm).count(Q.quantize_fp8.default) == 4      # conv, fc, matmul a and b


def test_mlp_close_to_fp32_and_e4m3_beats_e5m2():
    model, x = mlp(), torch.randn(16, 32)
    with torch.no_grad():
        want = model(x)
    e4m3 = sqnr_db(want, _compile(model, x)(x))
    e5m2 = sqnr_db(want, _compile(model, x, {"fp8_format": "e5m2"})(x))
    assert e4m3 > 20.0
    assert 12.0 < e5m2 < e4m3


def test_output_is_the_reference_kernels_on_calibrated_amax():
    model = torch.nn.Linear(24, 8).eval()
    x = torch.randn(5, 24)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(x.shape, generator=gen) for _ in range(4)]
    amax = max(float(b.abs().max()) for b in batches)
    scale = float(torch.tensor(amax / 448.0, dtype=torch.float32))
    w8, w_scale = fp8.quantize_fp8_weight(model.weight, "e4m3", per_channel=False)
    want = fp8.linear_fp8(fp8.quantize_fp8(x, scale, "e4m3"), scale, w8, w_scale,
                          model.bias.detach())
    assert torch.equal(_compile(model, x)(x), want)


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_inputs_beyond_calibrated_range_saturate(fmt):
    model, x = mlp(), torch.randn(16, 32)
    cm = _compile(model, x, {"fp8_format": fmt})
    huge = torch.randn(16, 32) * 1e4
    huge[0, 0] = float("inf")
    y = cm(huge)
    assert torch.isfinite(y).all()


def test_bad_format_option_is_a_recipe_error():
    model, x = mlp(), torch.randn(4, 32)
    with pytest.raises(qcompile.RecipeError, match="e4m3, e5m2"):
        _compile(model, x, {"fp8_format": "e3m4"})
    with pytest.raises(qcompile.RecipeError, match="fp8_format"):
        _compile(model, x, {"fp8_format": 8})


def test_calibration_method_and_per_channel_option_honoured():
    model, x = mlp(), torch.randn(16, 32)
    pipeline = ("canonicalize,fuse,cast-fp8{per-channel=true},observe,calibrate,insert-qdq,"
                "lower-int8,cleanup")
    cm = _compile(model, x, {"calibration": "percentile", "calibration_options": {"p": 99.0}},
                  pipeline=pipeline)
    linear = next(n for n in cm.graph.graph.nodes if n.target is Q.linear_fp8.default)
    assert cm.graph.get_buffer(linear.args[3].target).shape == (64,)
    quantize = linear.args[0]
    observed = quantize.meta["qc"].observed
    assert observed.method == "percentile"
    assert quantize.args[1] == pytest.approx(max(abs(observed.lo), abs(observed.hi)) / 448.0)


def test_layers_left_float_say_why(monkeypatch):
    model, x = mlp(), torch.randn(16, 32)
    cm = _compile(model, x, {"keep_float": ("0",)})
    reasons = {r.name: r.float_reason for r in cm.report.float_islands}
    assert "keep_float" in reasons["linear"]
    assert _targets(cm).count(Q.linear_fp8.default) == 2
    monkeypatch.setattr(cast_fp8, "MAX_REDUCTION", 48)          # in_features 64 > 48
    cm = _compile(model, x)
    reasons = {r.name: r.float_reason for r in cm.report.float_islands}
    assert "exact fp8 accumulator" in reasons["linear_1"]
    assert "exact fp8 accumulator" in reasons["linear_2"]
    assert _targets(cm).count(torch.ops.aten.linear.default) == 2
    assert not [n for n in _targets(cm) if "quantize_per_channel" in str(n)]


def test_other_recipes_untouched():
    model, x = mlp(), torch.randn(4, 32)
    cm = qcompile.compile(model, example_inputs=(x,), recipe="fp16")
    assert not FP8_OPS & set(_targets(cm))
