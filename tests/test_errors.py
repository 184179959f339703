"""Every bad input gives a typed QCompileError that names what is wrong (and where)."""
from __future__ import annotations

import inspect
import os

import pytest
import torch
import torch.nn as nn

import qcompile
from qcompile.registry import unregister_pass

from tiny_models import MLP

aten = torch.ops.aten


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


def _line_of(fn, text: str) -> int:
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


def good_batches(count=3):
    return [torch.randn(4, 16) for _ in range(count)]


def compile_mlp(model, **kwargs):
    args = dict(example_inputs=(torch.randn(4, 16),), calibration_data=good_batches())
    args.update(kwargs)
    return qcompile.compile(model, **args)


def raises(cls, *fragments, **kwargs):
    """Compile MLP with `kwargs`; assert `cls` whose message holds every fragment."""
    torch.manual_seed(0)
    with pytest.raises(cls) as info:
        compile_mlp(MLP().eval(), **kwargs)
    err = info.value
    assert isinstance(err, qcompile.QCompileError)
    for fragment in fragments:
        assert fragment in str(err), (fragment, str(err))
    assert "Traceback" not in str(err)
    return err


@pytest.fixture
def user_pass():
    """Register passes for one test; unregister them afterwards."""
    names = []

    def register(name, fn):
        qcompile.register_pass(name)(fn)
        names.append(name)
        return fn
    yield register
    for name in names:
        unregister_pass(name)


# --- target, recipe, options -------------------------------------------------------------

def test_unknown_target():
    raises(qcompile.TargetError, "'tpu-int8'", "reference", target="tpu-int8")


def test_unavailable_target():
    unavailable = [t for t in qcompile.targets() if not t.available]
    if not unavailable:
        pytest.skip("every target is available on this machine")
    t = unavailable[0]
    raises(qcompile.TargetError, f"'{t.name}'", "not available", t.reason, target=t.name)


def test_unknown_recipe():
    raises(qcompile.RecipeError, "'w3a3'", "w8a8", recipe="w3a3")


def test_unknown_option_key():
    raises(qcompile.RecipeError, "calibraton", "calibration", options={"calibraton": "mse"})


def test_unknown_calibration_method():
    raises(qcompile.RecipeError, "'medianx'", "percentile", options={"calibration": "medianx"})


def test_bad_option_value_type():
    raises(qcompile.RecipeError, "symmetric_activations", "'yes'",
           options={"symmetric_activations": "yes"})
    raises(qcompile.RecipeError, "keep_float", options={"keep_float": 5})


def test_unknown_keep_float_ops_kind():
    raises(qcompile.RecipeError, "softmaxx", options={"keep_float_ops": ["softmaxx"]})


def test_options_of_the_wrong_kind():
    raises(qcompile.RecipeError, "options must be", options=["calibration"])


# --- pipeline text ---------------------------------------------------------------------

def test_unknown_pass_with_close_match_hint():
    err = raises(qcompile.PipelineError, "'fsue'", "did you mean fuse", pipeline="default,fsue")
    assert not isinstance(err, qcompile.VerificationError)


def test_unknown_pass_option():
    raises(qcompile.PipelineError, "'calibrate'", "'bogus'", "method",
           pipeline="default,calibrate{bogus=1}")


def test_bad_pass_option_value_type(user_pass):
    def thresholded(gm, ctx, *, threshold=0.5):
        return None
    user_pass("test-err-threshold", thresholded)
    raises(qcompile.PipelineError, "'threshold'", "'test-err-threshold'", "float", "'abc'",
           pipeline="default,test-err-threshold{threshold=abc}")


def test_bad_builtin_option_value():
    err = raises(qcompile.PipelineError, "abc", pipeline="canonicalize,fuse,observe,"
                 "calibrate{method=percentile,p=abc},insert-qdq,lower-int8,cleanup")
    assert err.pass_name == "calibrate"


@pytest.mark.parametrize("text, fragment", [
    ("default,calibrate{p=99", "unbalanced '{'"),
    ("default,fuse}", "unbalanced '}'"),
    ("default,,cleanup", "empty entry"),
    ("default,", "empty entry"),
    (",default", "empty entry"),
    ("default,calibrate{p}", "key=value"),
    ("default,calibrate{p=1}x", "must end with '}'"),
    ("", "non-empty"),
])
def test_malformed_pipeline_text(text, fragment):
    raises(qcompile.PipelineError, fragment, pipeline=text)


def test_default_without_a_target_pipeline():
    with pytest.raises(qcompile.PipelineError, match="'default'"):
        qcompile.Pipeline.parse("default,fuse")


# --- calibration data --------------------------------------------------------------------

def test_calibration_batch_wrong_shape():
    err = raises(qcompile.CalibrationError, "calibration batch 2", "input 0", "'x'",
                 "[4, 17]", calibration_data=good_batches(2) + [torch.randn(4, 17)])
    assert err.pass_name == "calibrate"


def test_calibration_batch_wrong_dtype():
    raises(qcompile.CalibrationError, "calibration batch 1", "input 0", "'x'", "float64",
           calibration_data=[torch.randn(4, 16), torch.randn(4, 16, dtype=torch.float64)])


def test_calibration_batch_wrong_count_of_inputs():
    raises(qcompile.CalibrationError, "calibration batch 0", "expected 1", "got 2",
           calibration_data=[(torch.randn(4, 16), torch.randn(4, 16))])


def test_calibration_batch_not_tensors():
    raises(qcompile.CalibrationError, "calibration batch 0", "str", calibration_data=["oops"])


@pytest.mark.parametrize("value, word", [(float("nan"), "NaN"), (float("inf"), "Inf")])
def test_calibration_batch_not_finite(value, word):
    bad = torch.randn(4, 16)
    bad[1, 3] = value
    raises(qcompile.CalibrationError, "calibration batch 1", "'x'", f"1 {word}",
           calibration_data=[torch.randn(4, 16), bad])


@pytest.mark.parametrize("data", [[], iter(())], ids=["list", "iterator"])
def test_empty_calibration_data(data):
    raises(qcompile.CalibrationError, "no batches", calibration_data=data)


def test_consumed_generator_is_empty(mlp):
    gen = (b for b in good_batches())
    compile_mlp(mlp, calibration_data=gen)
    with pytest.raises(qcompile.CalibrationError, match="no batches"):
        compile_mlp(mlp, calibration_data=gen)


# --- the model ---------------------------------------------------------------------------

def test_model_in_training_mode_warns_and_stays_in_training_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.5), nn.Linear(16, 8))
    model.train()
    x = torch.randn(4, 16)
    with pytest.warns(qcompile.QCompileWarning, match="training mode"):
        cm = qcompile.compile(model, example_inputs=(x,), calibration_data=good_batches())
    assert model.training and all(m.training for m in model.modules())
    expected = model.eval()(x)        # captured in eval mode: dropout is off
    assert (cm(x) - expected).abs().max() <= 0.05 * expected.abs().max()


def test_data_dependent_control_flow_is_a_capture_error_at_the_user_line():
    with pytest.raises(qcompile.CaptureError) as info:
        qcompile.compile(DataDependent().eval(), example_inputs=(torch.randn(4, 16),),
                         calibration_data=good_batches())
    err = info.value
    line = _line_of(DataDependent.forward, "if x.sum() > 0:")
    assert err.source is not None
    assert os.path.basename(__file__) in err.source and f":{line}" in err.source
    assert f"{os.path.basename(__file__)}:{line}" in str(err)
    assert "torch.export" in str(err)
    assert err.__cause__ is not None        # the torch error stays reachable


def test_model_not_a_module():
    with pytest.raises(qcompile.CaptureError, match="nn.Module"):
        qcompile.compile(lambda x: x, example_inputs=(torch.randn(2),))


def test_example_inputs_missing_or_wrong(mlp):
    with pytest.raises(qcompile.CaptureError, match="example_inputs"):
        qcompile.compile(mlp, example_inputs=None)
    with pytest.raises(qcompile.CaptureError, match="int"):
        qcompile.compile(mlp, example_inputs=5)


def test_example_inputs_that_do_not_fit_the_model(mlp):
    with pytest.raises(qcompile.CaptureError) as info:
        qcompile.compile(mlp, example_inputs=(torch.randn(4, 17),))
    assert "17" in str(info.value)


def test_partial_names_what_stayed_eager_and_where():
    model = DataDependent().eval()
    x = torch.randn(4, 16)
    partial = qcompile.compile(model, example_inputs=(x,), calibration_data=[x], partial=True)
    assert "fc" in partial.parts
    assert "data-dependent" in partial.report.whole_model_error.lower() or \
        "test_errors.py" in partial.report.whole_model_error
    with torch.no_grad():
        assert qcompile.instruments.sqnr_db(model(x), partial(x)) > 20


# --- user passes -------------------------------------------------------------------------

def test_pass_that_breaks_a_running_graph_is_a_verification_error(user_pass):
    def wrong_op(gm, ctx):
        for node in gm.graph.nodes:
            if node.target is aten.linear.default:
                node.target = aten.mm.default      # mm(x, w, b): wrong arity, cannot run
        return qcompile.PassResult(gm, True)
    user_pass("test-err-wrong-op", wrong_op)
    err = raises(qcompile.VerificationError, "'test-err-wrong-op'", "no longer runs",
                 pipeline="canonicalize,test-err-wrong-op,fuse")
    assert err.pass_name == "test-err-wrong-op"


def test_pass_that_reorders_nodes_is_a_verification_error(user_pass):
    def reorder(gm, ctx):
        relu = next(n for n in gm.graph.nodes if n.target is aten.relu.default)
        relu.args[0].prepend(relu)                 # now used before its input is defined
        return qcompile.PassResult(gm, True)
    user_pass("test-err-reorder", reorder)
    err = raises(qcompile.VerificationError, "'test-err-reorder'", "malformed",
                 pipeline="canonicalize,test-err-reorder")
    assert err.pass_name == "test-err-reorder"


def test_pass_that_erases_a_used_node_names_the_pass(user_pass):
    def erase(gm, ctx):
        relu = next(n for n in gm.graph.nodes if n.target is aten.relu.default)
        gm.graph.erase_node(relu)                   # fx refuses: relu still has users
        return gm
    user_pass("test-err-erase", erase)
    err = raises(qcompile.PipelineError, "'test-err-erase'", pipeline="test-err-erase")
    assert err.pass_name == "test-err-erase"


def test_pass_raising_an_exception_is_a_pipeline_error(user_pass):
    def boom(gm, ctx):
        raise KeyError("no such thing")
    user_pass("test-err-boom", boom)
    err = raises(qcompile.PipelineError, "'test-err-boom'", "KeyError", "no such thing",
                 pipeline="default,test-err-boom")
    assert err.pass_name == "test-err-boom"
    assert isinstance(err.__cause__, KeyError)


def test_pass_raising_a_qcompile_error_gets_the_pass_name(user_pass):
    def refuse(gm, ctx):
        raise qcompile.LoweringError("cannot lower this")
    user_pass("test-err-refuse", refuse)
    err = raises(qcompile.LoweringError, "'test-err-refuse'", "cannot lower this",
                 pipeline="default,test-err-refuse")
    assert err.pass_name == "test-err-refuse"


def test_pass_returning_garbage_is_a_pipeline_error(user_pass):
    user_pass("test-err-garbage", lambda gm, ctx: 42)
    raises(qcompile.PipelineError, "'test-err-garbage'", "PassResult", "int",
           pipeline="default,test-err-garbage")


def test_bad_pass_name_and_duplicate_registration(user_pass):
    with pytest.raises(qcompile.PipelineError, match="kebab-case"):
        qcompile.register_pass("My_Pass")
    user_pass("test-err-dup", lambda gm, ctx: None)
    with pytest.raises(qcompile.PipelineError, match="already registered"):
        qcompile.register_pass("test-err-dup")(lambda gm, ctx: None)
    with pytest.raises(qcompile.PipelineError, match="already registered"):
        qcompile.register_pass("fuse")(lambda gm, ctx: None)


# --- calling the compiled model ----------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    ((torch.randn(4, 12),), "shape [4, 12]"),
    ((torch.randn(4, 16, dtype=torch.float64),), "float64"),
    ((torch.randn(4, 16), torch.randn(4, 16)), "got 2"),
    ((), "got 0"),
    ((torch.randn(16),), "shape [16]"),
])
def test_wrong_input_to_the_compiled_model(mlp, args, fragment):
    cm = compile_mlp(mlp)
    with pytest.raises(qcompile.InputError) as info:
        cm(*args)
    assert fragment in str(info.value)
    assert "'x'" in str(info.value) or "expected 1" in str(info.value)
