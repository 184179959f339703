"""The public API: qcompile.compile(...) and what the compiled model offers."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import qcompile
from qcompile.facts import facts_of

Q = torch.ops.qcompile


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 4)
        self.b = nn.Linear(8, 4)

    def forward(self, x, y):
        return self.a(x) + self.b(y)


def batches(*shape, count=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=g),) for _ in range(count)]


def compile_mlp(model, **kwargs):
    args = dict(target="reference", example_inputs=(torch.randn(4, 16),),
                calibration_data=batches(4, 16))
    args.update(kwargs)
    return qcompile.compile(model, **args)


def close(a, b, rel=0.05):
    """Max abs error within `rel` of the float output's range."""
    return (a - b).abs().max().item() <= rel * b.abs().max().item()


def test_compile_runs_close_to_float(mlp, tmp_path):
    x = torch.randn(4, 16)
    cm = qcompile.compile(mlp, target="reference", example_inputs=(x,),
                          calibration_data=batches(4, 16), recipe="w8a8",
                          dump_dir=str(tmp_path / "dumps"))
    y = cm(x)
    assert isinstance(y, torch.Tensor) and y.shape == (4, 8) and y.dtype == torch.float32
    assert close(y, mlp(x))
    assert (tmp_path / "dumps" / "final.txt").is_file()
    assert cm.target == "reference" and cm.recipe.name == "w8a8"
    assert "reference" in repr(cm)


def test_conv_bn_model_close_to_float():
    torch.manual_seed(0)
    model = ConvNet().eval()
    x = torch.randn(2, 3, 8, 8)
    cm = qcompile.compile(model, example_inputs=x, calibration_data=batches(2, 3, 8, 8))
    assert close(cm(x), model(x), rel=0.1)
    assert any(n.target is Q.qconv2d.default for n in cm.graph.graph.nodes)


def test_lone_tensor_for_example_and_batches(mlp):
    x = torch.randn(4, 16)
    lone = [b[0] for b in batches(4, 16)]
    cm_lone = qcompile.compile(mlp, example_inputs=x, calibration_data=lone)
    cm_tuple = qcompile.compile(mlp, example_inputs=(x,), calibration_data=batches(4, 16))
    assert torch.equal(cm_lone(x), cm_tuple(x))


def test_two_inputs_and_call_with_a_tuple():
    torch.manual_seed(0)
    model = TwoInputs().eval()
    x, y = torch.randn(3, 16), torch.randn(3, 8)
    cal = [(torch.randn(3, 16), torch.randn(3, 8)) for _ in range(3)]
    cm = qcompile.compile(model, example_inputs=(x, y), calibration_data=cal)
    assert close(cm(x, y), model(x, y))
    assert torch.equal(cm((x, y)), cm(x, y))
    assert [s.name for s in cm.input_specs] == ["x", "y"]


def test_generator_is_read_once(mlp):
    pulled = []

    def gen():
        for i, (b,) in enumerate(batches(4, 16, count=5)):
            pulled.append(i)
            yield b

    cm = compile_mlp(mlp, calibration_data=gen())
    assert pulled == [0, 1, 2, 3, 4]
    assert cm.report.calibration["batches"] == 5


def test_iterable_is_iterated_once(mlp):
    class Data:
        iterations = 0

        def __iter__(self):
            Data.iterations += 1
            return iter(batches(4, 16, count=3))

    cm = compile_mlp(mlp, calibration_data=Data())
    assert Data.iterations == 1
    assert cm.report.calibration["batches"] == 3


def test_no_calibration_data_warns_and_uses_example_inputs(mlp):
    x = torch.randn(4, 16)
    with pytest.warns(qcompile.QCompileWarning, match="calibration_data"):
        cm = qcompile.compile(mlp, example_inputs=(x,), calibration_data=None)
    assert cm.report.calibration["batches"] == 1
    assert any("calibration_data" in text for _, _, text in cm.report.diagnostics)
    # Calibrated on x alone: x itself is well inside the chosen ranges.
    assert close(cm(x), mlp(x))


def test_options_dict_and_dataclass_agree(mlp):
    x = torch.randn(4, 16)
    as_dict = compile_mlp(mlp, options={"calibration": "percentile",
                                        "calibration_options": {"p": 99.0}})
    as_class = compile_mlp(mlp, options=qcompile.QuantOptions(
        calibration="percentile", calibration_options=(("p", 99.0),)))
    assert as_dict.recipe.options == as_class.recipe.options
    assert torch.equal(as_dict(x), as_class(x))
    assert as_dict.report.calibration["method"] == "percentile"


def _qparams(gm):
    found = []
    for node in gm.graph.nodes:
        facts = facts_of(node)
        found += [q for q in (facts.qparams, *facts.input_qparams) if q is not None]
    return found


def test_symmetric_activations_have_zero_point_zero(mlp):
    asym = compile_mlp(mlp)
    sym = compile_mlp(mlp, options={"symmetric_activations": True})
    assert any(q.zero_point != 0 for q in _qparams(asym.graph))
    qparams = _qparams(sym.graph)
    assert qparams and all(q.zero_point == 0 for q in qparams)
    x = torch.randn(4, 16)
    assert close(sym(x), mlp(x))


def _row(cm, op_suffix=None, name=None):
    rows = [r for r in cm.report.nodes if (name is None or r.name == name)
            and (op_suffix is None or r.op.endswith(op_suffix))]
    assert rows, [(r.name, r.op) for r in cm.report.nodes]
    return rows


def test_keep_float_by_module_path(mlp):
    cm = compile_mlp(mlp, options={"keep_float": ["fc2"]})
    (row,) = _row(cm, "aten.linear")
    assert row.float_reason and "keep_float='fc2'" in row.float_reason
    assert len([n for n in cm.graph.graph.nodes if n.target is Q.qlinear_f32.default
                or n.target is Q.qlinear.default]) == 1
    assert "keep_float='fc2'" in str(cm.report)


def test_keep_float_by_node_name(mlp):
    cm = compile_mlp(mlp, options={"keep_float": "linear"})   # a lone string is accepted
    (row,) = _row(cm, "aten.linear")
    assert row.name == "linear" and "keep_float='linear'" in row.float_reason


def test_keep_float_ops(mlp):
    x = torch.randn(4, 16)
    cm = compile_mlp(mlp, options={"keep_float_ops": ["linear"]})
    rows = _row(cm, "aten.linear")
    assert len(rows) == 2
    assert all("keep_float_ops='linear'" in r.float_reason for r in rows)
    assert cm.report.totals["ops_quantized"] == 0
    assert torch.allclose(cm(x), mlp(x), atol=1e-6)


def test_dynamic_recipe_lowers_to_qlinear_dynamic(mlp):
    x = torch.randn(4, 16)
    cm = compile_mlp(mlp, recipe="w8a8-dynamic")
    dynamic = [n for n in cm.graph.graph.nodes if n.target is Q.qlinear_dynamic.default]
    assert len(dynamic) == 2
    assert not any(n.target is Q.quantize.default for n in cm.graph.graph.nodes)
    assert close(cm(x), mlp(x))
    assert cm.report.recipe == "w8a8-dynamic"


def test_dynamic_batch_but_fixed_features(mlp):
    cm = compile_mlp(mlp)
    for batch in (1, 4, 9):
        x = torch.randn(batch, 16)
        assert cm(x).shape == (batch, 8)
        assert close(cm(x), mlp(x))
    with pytest.raises(qcompile.InputError, match=r"shape \[4, 12\]"):
        cm(torch.randn(4, 12))


def test_calibration_batches_may_have_another_batch_size(mlp):
    cm = compile_mlp(mlp, calibration_data=batches(7, 16) + batches(2, 16))
    assert cm.report.calibration["batches"] == 8


def test_targets_lists_reference_and_why_others_are_not_available():
    infos = {t.name: t for t in qcompile.targets()}
    assert set(infos) >= {"reference", "cpu-int8", "npu-int8", "cuda-int8"}
    assert infos["reference"].available
    for name, info in infos.items():
        if not info.available:
            assert info.reason, name
            assert "unavailable" in str(info)


def test_graph_is_a_graph_module(mlp):
    cm = compile_mlp(mlp)
    assert isinstance(cm.graph, fx.GraphModule)
    x = torch.randn(4, 16)
    assert torch.equal(cm.graph(x)[0] if isinstance(cm.graph(x), tuple) else cm.graph(x), cm(x))


def test_model_and_inputs_are_left_alone(mlp):
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    x = torch.randn(4, 16)
    x_copy = x.clone()
    compile_mlp(mlp, example_inputs=(x,))
    assert torch.equal(x, x_copy)
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())
    assert not mlp.training


def test_no_warning_on_a_clean_compile(mlp):
    with warnings.catch_warnings():
        warnings.simplefilter("error", qcompile.QCompileWarning)
        compile_mlp(mlp)


def test_public_names_are_exported():
    for name in ("compile", "targets", "register_pass", "PassResult", "Pipeline",
                 "default_pipeline", "QuantOptions", "QCompileError", "CaptureError",
                 "PipelineError", "CalibrationError", "LoweringError", "BackendError",
                 "ArtifactError", "InputError", "QCompileWarning"):
        assert hasattr(qcompile, name), name
    for cls in (qcompile.CaptureError, qcompile.PipelineError, qcompile.CalibrationError,
                qcompile.LoweringError, qcompile.BackendError, qcompile.ArtifactError,
                qcompile.InputError, qcompile.TargetError, qcompile.RecipeError,
                qcompile.VerificationError):
        assert issubclass(cls, qcompile.QCompileError)
