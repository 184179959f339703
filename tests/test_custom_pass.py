"""User passes: the example script, registration, options, running by name and inserting."""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import qcompile
from qcompile.facts import facts_of
from qcompile.registry import get_pass, unregister_pass

from tiny_models import MLP

EXAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "custom_pass.py")
aten = torch.ops.aten


def load_example():
    """Import examples/custom_pass.py once (it registers its pass on import)."""
    name = "qcompile_example_custom_pass"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def example():
    return load_example()


@pytest.fixture(scope="module")
def result(example):
    return example.main()


def compile_mlp(**kwargs):
    torch.manual_seed(0)
    return qcompile.compile(MLP().eval(), example_inputs=(torch.randn(4, 16),),
                            calibration_data=[torch.randn(4, 16) for _ in range(3)], **kwargs)


def test_example_registers_its_pass_like_a_builtin(example):
    info = get_pass("count-int8-ops")
    assert info.fn is example.count_int8_ops
    assert info.options == {"include-qdq": False}
    assert info.doc.startswith("Count")
    assert "count-int8-ops" in {p.name for p in qcompile.list_passes()}


def test_example_counts_int8_ops_at_the_end(result):
    cm = result["compiled"]
    at_end = result["at_end"]
    ops = [n for n in cm.graph.graph.nodes if n.op == "call_function"
           and getattr(n.target, "namespace", "") == "qcompile"
           and "quantize" not in n.target.name()]
    assert at_end["int8_ops"] == len(ops) == 3
    assert at_end == {"int8_ops": 3, "qconv2d": 1, "qmean": 1, "qlinear_f32": 1}
    record = cm.report.passes[-1]
    assert record.name == "count-int8-ops" and record.changed is False
    assert any(pass_name == "count-int8-ops" and "3 integer op(s)" in text
               for _, pass_name, text in cm.report.diagnostics)


def test_example_inserted_after_lower_int8_with_an_option(result):
    names = result["pipeline"].split(",")
    at = names.index("lower-int8")
    assert names[at + 1] == "count-int8-ops{include-qdq=true}"
    assert names[at + 2:] == ["cleanup"]
    after = result["after_lower"]
    assert after["quantize"] >= 1
    assert after["int8_ops"] == result["at_end"]["int8_ops"] + after["quantize"]


def test_example_output_is_close_to_float(result):
    assert result["max_error"] < 0.05


def test_example_runs_as_a_script():
    done = subprocess.run([sys.executable, EXAMPLE], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "after lower-int8" in done.stdout and "int8_ops" in done.stdout


@pytest.fixture
def registered():
    names = []

    def register(name, **kwargs):
        def decorator(fn):
            qcompile.register_pass(name, **kwargs)(fn)
            names.append(name)
            return fn
        return decorator
    yield register
    for name in names:
        unregister_pass(name)


def test_user_pass_receives_typed_options(registered):
    seen = []

    @registered("test-custom-threshold")
    def threshold_pass(gm, ctx, *, threshold=0.5, label="x", verbose=False):
        seen.append((threshold, label, verbose))
        return qcompile.PassResult(gm, False, {"threshold": threshold})

    cm = compile_mlp(pipeline="default,test-custom-threshold{threshold=0.25}")
    assert seen == [(0.25, "x", False)]
    assert cm.report.passes[-1].stats == {"threshold": 0.25}
    seen.clear()
    compile_mlp(pipeline="default,test-custom-threshold{threshold=2,label=hi,verbose=true}")
    assert seen == [(2.0, "hi", True)] and isinstance(seen[0][0], float)
    seen.clear()
    compile_mlp(pipeline="default,test-custom-threshold")
    assert seen == [(0.5, "x", False)]


def test_user_pass_sees_the_context(registered):
    seen = {}

    @registered("test-custom-context")
    def look(gm, ctx):
        seen.update(target=ctx.target, recipe=ctx.recipe.name, inputs=len(ctx.example_inputs),
                    pass_name=ctx.current_pass)

    compile_mlp(pipeline="default,test-custom-context", recipe="w8a8-dynamic")
    assert seen == {"target": "reference", "recipe": "w8a8-dynamic", "inputs": 1,
                    "pass_name": "test-custom-context"}


def test_user_pass_keeping_a_layer_float(registered):
    @registered("test-custom-keep-float")
    def keep_float(gm, ctx, *, layer=""):
        """Add `layer` to the recipe's keep_float before quantization is planned."""
        options = dataclasses.replace(ctx.options, keep_float=ctx.options.keep_float + (layer,))
        ctx.recipe = dataclasses.replace(ctx.recipe, options=options)
        return qcompile.PassResult(gm, False, {"kept": layer})

    pipeline = qcompile.Pipeline.parse("default", default=qcompile.default_pipeline(
        "reference")).insert_after("fuse", "test-custom-keep-float{layer=fc2}")
    cm = compile_mlp(pipeline=str(pipeline))
    (row,) = [r for r in cm.report.nodes if r.op == "aten.linear"]
    assert "keep_float='fc2'" in row.float_reason
    stats = next(p.stats for p in cm.report.passes if p.name == "test-custom-keep-float")
    assert stats == {"kept": "fc2"}


def test_user_pass_returning_a_graph_module_or_none(registered):
    @registered("test-custom-returns-gm")
    def returns_gm(gm, ctx):
        return gm

    @registered("test-custom-returns-none")
    def returns_none(gm, ctx):
        return None

    cm = compile_mlp(pipeline="default,test-custom-returns-gm,test-custom-returns-none")
    assert [p.name for p in cm.report.passes][-2:] == ["test-custom-returns-gm",
                                                       "test-custom-returns-none"]
    assert not any(p.changed for p in cm.report.passes[-2:])


def test_user_pass_that_rewrites_the_graph(registered):
    @registered("test-custom-double-output")
    def double(gm, ctx):
        """Multiply the model output by 2 (a graph rewrite the verifier accepts)."""
        output = next(n for n in gm.graph.nodes if n.op == "output")
        (value,) = output.args[0]
        with gm.graph.inserting_before(output):
            doubled = gm.graph.call_function(aten.mul.Tensor, (value, 2.0))
        output.args = ((doubled,),)
        return qcompile.PassResult(gm, True)

    plain = compile_mlp()
    doubled = compile_mlp(pipeline="default,test-custom-double-output")
    x = torch.randn(4, 16)
    torch.testing.assert_close(doubled(x), 2 * plain(x))
    mul = next(n for n in doubled.graph.graph.nodes if n.target is aten.mul.Tensor)
    assert facts_of(mul).tensor is not None        # facts refreshed after the user pass


def test_replace_allows_re_registering(registered):
    @registered("test-custom-replace")
    def first(gm, ctx):
        return None

    @registered("test-custom-replace", replace=True)
    def second(gm, ctx):
        return None

    assert get_pass("test-custom-replace").fn is second
