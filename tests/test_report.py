"""The compile report: text table, JSON, totals, per-node SQNR, per-pass records."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

import qcompile

from tiny_models import ConvMLP, image_batches


@pytest.fixture(scope="module")
def cm():
    torch.manual_seed(0)
    return qcompile.compile(ConvMLP(head=torch.sigmoid).eval(),
                            example_inputs=(image_batches(1)[0],),
                            calibration_data=image_batches(), options={"keep_float": ["fc2"]})


@pytest.fixture(scope="module")
def report(cm):
    return cm.report


def test_table_names_every_reported_op_and_float_island(report):
    text = str(report)
    assert text.startswith("qcompile report: target=reference recipe=w8a8")
    for row in report.nodes:
        assert row.name in text and row.op in text
    islands = report.float_islands
    assert {r.op for r in islands} >= {"aten.linear", "aten.sigmoid"}
    for row in islands:
        assert row.float_reason and row.float_reason in text
    linear = next(r for r in islands if r.op == "aten.linear")
    assert "keep_float='fc2'" in linear.float_reason
    sigmoid = next(r for r in islands if r.op == "aten.sigmoid")
    assert "sigmoid" in sigmoid.float_reason


def test_table_lists_every_quantized_op(report, cm):
    quantized = [n.name for n in cm.graph.graph.nodes if n.op == "call_function"
                 and getattr(n.target, "namespace", "") == "qcompile"]
    text = str(report)
    assert quantized and all(name in text for name in quantized)
    ops = {r.op for r in report.nodes}
    assert {"qcompile.qconv2d", "qcompile.qmean"} <= ops
    assert ops & {"qcompile.qlinear", "qcompile.qlinear_f32"}


def test_table_has_columns_and_pass_section(report):
    lines = str(report).splitlines()
    header = next(line for line in lines if line.startswith("node "))
    for column in ("op", "in", "out", "kernel", "SQNR dB", "float island reason"):
        assert column in header
    pass_header = next(line for line in lines if line.startswith("#  "))
    assert "pass" in pass_header and "changed" in pass_header and "ms" in pass_header
    for p in report.passes:
        assert any(line.split()[:2] == [str(p.index), p.name] for line in lines), p.name


def test_kernels_are_named(report):
    for row in report.nodes:
        assert row.kernel.startswith(("reference:", "torch:")), row


def test_json_parses_with_totals(report):
    data_ = json.loads(report.to_json())
    totals = data_["totals"]
    assert totals["ops_quantized"] == len([r for r in report.nodes if r.op in (
        "qcompile.qconv2d", "qcompile.qlinear", "qcompile.qlinear_f32", "qcompile.qmean")])
    assert totals["ops_quantized"] >= 3
    assert totals["ops_float"] == len(report.float_islands) >= 2
    assert 0 < totals["weight_bytes_after"] < totals["weight_bytes_before"]
    assert data_["target"] == "reference" and data_["recipe"] == "w8a8"


def test_weight_bytes_shrink_about_four_times():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    cm = qcompile.compile(model.eval(), example_inputs=(torch.randn(2, 64),),
                          calibration_data=[torch.randn(2, 64) for _ in range(2)])
    totals = cm.report.totals
    assert totals["weight_bytes_before"] == (2 * 64 * 64 + 2 * 64) * 4
    assert totals["weight_bytes_after"] < totals["weight_bytes_before"] / 3


def test_json_has_per_node_sqnr(report):
    nodes = json.loads(report.to_json())["nodes"]
    by_op = {}
    for node in nodes:
        by_op.setdefault(node["op"], []).append(node)
    checked = 0
    for op in ("qcompile.qconv2d", "qcompile.qlinear", "qcompile.qlinear_f32"):
        for node in by_op.get(op, []):
            checked += 1
            assert isinstance(node["sqnr_db"], float) and 15 < node["sqnr_db"] < 100, node
    assert checked >= 2
    assert all({"name", "op", "inputs", "output", "kernel", "float_reason", "sqnr_db"}
               <= set(n) for n in nodes)


def test_json_has_per_pass_records(report):
    passes = json.loads(report.to_json())["passes"]
    names = qcompile.Pipeline.parse("default", default=qcompile.default_pipeline(
        "reference")).names()
    assert [p["name"] for p in passes] == names
    for p in passes:
        assert {"index", "name", "changed", "seconds", "sqnr_db", "stats"} <= set(p)
        assert isinstance(p["changed"], bool) and p["seconds"] >= 0
    by_name = {p["name"]: p for p in passes}
    assert by_name["fuse"]["changed"] and by_name["fuse"]["stats"]["groups"] == 2
    assert by_name["calibrate"]["stats"]["batches"] == 4
    assert by_name["fuse"]["sqnr_db"] == "inf"          # JSON has no infinity: a string
    assert isinstance(by_name["lower-int8"]["sqnr_db"], float)


def test_json_is_strict_and_deterministic(report):
    text = report.to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert text == report.to_json()


def test_output_sqnr_and_calibration_summary(report):
    assert report.output_sqnr_db is not None and math.isfinite(report.output_sqnr_db)
    assert report.output_sqnr_db > 15
    assert report.calibration["batches"] == 4
    assert report.calibration["method"] == qcompile.QuantOptions().calibration
    text = str(report)
    assert "calibration:" in text and "4 batch(es)" in text


def test_diagnostics_appear_in_the_report():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8)).eval()
    with pytest.warns(qcompile.QCompileWarning):
        cm = qcompile.compile(model, example_inputs=(torch.randn(2, 8),))
    assert any(level == "warning" and "calibration_data" in text
               for level, _, text in cm.report.diagnostics)
    assert "warning: [compile]" in str(cm.report)


def test_numerics_off_leaves_sqnr_empty():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8)).eval()
    cm = qcompile.compile(model, example_inputs=(torch.randn(2, 8),),
                          calibration_data=[torch.randn(2, 8)], options={"numerics": False})
    assert cm.report.output_sqnr_db is None
    assert all(r.sqnr_db is None for r in cm.report.nodes)
    assert all(p.sqnr_db is None for p in cm.report.passes)
    json.loads(cm.report.to_json())
