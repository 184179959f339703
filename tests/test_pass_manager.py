"""The pass manager: instruments, the changed flag, timings, per-pass numerics, printing."""
from __future__ import annotations

import io
import math

import pytest
import torch

import qcompile
from qcompile.capture import capture
from qcompile.context import PassContext
from qcompile.instruments import NumericsInstrument, PrintInstrument, outputs_sqnr, sqnr_db
from qcompile.pass_manager import Instrument, PassManager
from qcompile.recipes import resolve_recipe
from qcompile.registry import unregister_pass

from tiny_models import MLP

aten = torch.ops.aten


@pytest.fixture
def setup():
    torch.manual_seed(0)
    x = torch.randn(4, 16)
    captured = capture(MLP().eval(), (x,))
    ctx = PassContext(target="reference", recipe=resolve_recipe("w8a8"), example_inputs=(x,),
                      input_specs=captured.input_specs,
                      calibration_data=[torch.randn(4, 16) for _ in range(3)])
    return captured.graph_module, ctx


def run(gm, ctx, text, instruments=()):
    manager = PassManager(qcompile.Pipeline.parse(text, default=qcompile.default_pipeline(
        "reference")), list(instruments))
    result = manager(gm, ctx)
    return result, manager.records


@pytest.fixture(scope="module", autouse=True)
def registered_test_passes():
    @qcompile.register_pass("test-pm-noop")
    def noop(gm, ctx):
        """Claims a change but does nothing."""
        return qcompile.PassResult(gm, True, {"looked": 1})

    @qcompile.register_pass("test-pm-rename")
    def rename(gm, ctx):
        """Swaps relu for its in-place twin: same numbers, different graph."""
        for node in gm.graph.nodes:
            if node.target is aten.relu.default:
                node.target = aten.relu_.default
        return gm
    yield
    unregister_pass("test-pm-noop")
    unregister_pass("test-pm-rename")


class Recorder(Instrument):
    def __init__(self, tag, events):
        self.tag, self.events = tag, events

    def begin(self, gm, ctx):
        self.events.append((self.tag, "begin"))

    def before_pass(self, spec, gm, ctx):
        self.events.append((self.tag, "before", spec.name))

    def after_pass(self, record, gm, ctx, outputs):
        self.events.append((self.tag, "after", record.name))

    def end(self, gm, ctx):
        self.events.append((self.tag, "end"))


def test_instruments_run_in_order_around_each_pass(setup):
    gm, ctx = setup
    events = []
    run(gm, ctx, "dead-code,fuse", [Recorder("A", events), Recorder("B", events)])
    assert events == [
        ("A", "begin"), ("B", "begin"),
        ("A", "before", "dead-code"), ("B", "before", "dead-code"),
        ("A", "after", "dead-code"), ("B", "after", "dead-code"),
        ("A", "before", "fuse"), ("B", "before", "fuse"),
        ("A", "after", "fuse"), ("B", "after", "fuse"),
        ("A", "end"), ("B", "end"),
    ]


def test_changed_flag_follows_the_graph_not_the_claim(setup):
    gm, ctx = setup
    result, records = run(gm, ctx, "test-pm-noop,fuse,test-pm-rename,fuse")
    changed = {(r.index, r.name): r.changed for r in records}
    assert changed == {(1, "test-pm-noop"): False, (2, "fuse"): True,
                       (3, "test-pm-rename"): True, (4, "fuse"): False}
    assert result.modified is True
    assert records[0].stats == {"looked": 1}


def test_pipeline_of_no_ops_is_not_modified(setup):
    gm, ctx = setup
    result, records = run(gm, ctx, "test-pm-noop,dead-code")
    assert result.modified is False and not any(r.changed for r in records)
    assert result.stats == {"passes": 2}


def test_records_have_index_spec_and_timing(setup):
    gm, ctx = setup
    _, records = run(gm, ctx, "default")
    names = qcompile.Pipeline.parse("default", default=qcompile.default_pipeline(
        "reference")).names()
    assert [r.name for r in records] == names
    assert [r.index for r in records] == list(range(1, len(names) + 1))
    for r in records:
        assert isinstance(r.seconds, float) and 0 <= r.seconds < 30
    assert sum(r.seconds for r in records) > 0
    calibrate = next(r for r in records if r.name == "calibrate")
    assert calibrate.stats["batches"] == 3


def test_spec_text_keeps_options(setup):
    gm, ctx = setup
    _, records = run(gm, ctx, "fuse,observe,calibrate{method=percentile,p=99.0}")
    assert records[-1].spec == "calibrate{method=percentile,p=99.0}"
    assert ctx.calibration_summary["method"] == "percentile"


def test_numerics_exact_before_quantization_and_finite_after(setup):
    gm, ctx = setup
    _, records = run(gm, ctx, "default", [NumericsInstrument()])
    names = [r.name for r in records]
    qdq = names.index("insert-qdq")
    for r in records[:qdq]:
        assert r.sqnr_db == math.inf, (r.name, r.sqnr_db)
    for r in records[qdq:]:
        assert r.sqnr_db is not None and math.isfinite(r.sqnr_db) and r.sqnr_db > 25, r
    # Lowering to integer ops keeps the fake-quantized numbers (within a rounding step).
    assert abs(records[names.index("lower-int8")].sqnr_db - records[qdq].sqnr_db) < 3


def test_without_numerics_no_sqnr_is_recorded(setup):
    gm, ctx = setup
    _, records = run(gm, ctx, "default")
    assert all(r.sqnr_db is None for r in records)


def test_print_instrument_prints_only_after_changes(setup):
    gm, ctx = setup
    stream = io.StringIO()
    run(gm, ctx, "test-pm-noop,fuse,dead-code,test-pm-rename", [PrintInstrument(stream)])
    text = stream.getvalue()
    assert "// after fuse" in text and "// after test-pm-rename" in text
    assert "// after test-pm-noop" not in text and "// after dead-code" not in text
    assert text.count("// after") == 2
    assert "aten.relu_(" in text.split("// after test-pm-rename")[1]


def test_print_instrument_can_print_every_pass(setup):
    gm, ctx = setup
    stream = io.StringIO()
    run(gm, ctx, "test-pm-noop,dead-code", [PrintInstrument(stream, only_changed=False)])
    assert stream.getvalue().count("// after") == 2


def test_pass_manager_is_a_pass(setup):
    gm, ctx = setup
    inner = PassManager(qcompile.Pipeline.parse("fuse"))
    result = inner(gm, ctx)
    assert isinstance(result, qcompile.PassResult)
    assert result.graph_module is gm


def test_tensor_facts_refreshed_after_each_pass(setup):
    gm, ctx = setup
    result, _ = run(gm, ctx, "default")
    from qcompile.facts import facts_of
    typed = {n.name: facts_of(n).tensor for n in result.graph_module.graph.nodes
             if n.op in ("call_function", "placeholder")}
    assert all(info is not None for info in typed.values()), typed
    assert {info.dtype for info in typed.values()} >= {"f32", "i8"}


def test_current_pass_is_set_while_a_pass_runs(setup):
    gm, ctx = setup
    seen = []

    @qcompile.register_pass("test-pm-where")
    def where(gm, ctx):
        seen.append(ctx.current_pass)
        ctx.note("hello")
    try:
        run(gm, ctx, "test-pm-where")
    finally:
        unregister_pass("test-pm-where")
    assert seen == ["test-pm-where"] and ctx.current_pass == ""
    assert ctx.diagnostics.messages == [("note", "test-pm-where", "hello")]


def test_sqnr_helpers():
    a = torch.randn(100)
    assert sqnr_db(a, a) == math.inf
    assert sqnr_db(torch.zeros(3), torch.ones(3)) == -math.inf
    assert sqnr_db(a, a + 0.01 * a) == pytest.approx(40.0, abs=1e-4)
    assert outputs_sqnr([a, torch.arange(3)], [a + 0.1 * a, torch.arange(3)]) == \
        pytest.approx(20.0, abs=1e-4)
    assert outputs_sqnr([torch.arange(3)], [torch.arange(3)]) is None
