"""Dumps: numbered files per pass, deterministic bytes, the DESIGN.md line format, DOT colours."""
from __future__ import annotations

import copy
import os
import re

import pytest
import torch

import qcompile
from qcompile.dot import DTYPE_COLOURS
from qcompile.dump import format_graph

from tiny_models import ConvMLP, image_batches

NUM = r"-?[0-9.]+(?:e-?[0-9]+)?"
QLINEAR_LINE = re.compile(
    rf"^%\w+ : i8\[\d+(?:,\d+)*\] = qcompile\.qlinear\(%\w+(?:, [^)]*)?\) "
    rf"\{{in=\({NUM},-?\d+\) w=per_ch\((\d+)\) out=\({NUM},-?\d+\)(?: act=(relu|relu6))?"
    rf"(?: [a-z]+=\S+)*\}}$")
NODE_LINE = re.compile(r"^%\w+( : [a-z0-9]+\[[0-9,]*\])? = \S+.*$")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ConvMLP().eval()


def compile_to(model, path, **kwargs):
    return qcompile.compile(model, example_inputs=(image_batches(1)[0],),
                            calibration_data=image_batches(), dump_dir=str(path), **kwargs)


@pytest.fixture(scope="module")
def dumped(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("dump")
    cm = compile_to(model, path)
    return cm, path


def pass_names():
    return qcompile.Pipeline.parse("default", default=qcompile.default_pipeline(
        "reference")).names()


def test_one_numbered_file_per_pass(dumped):
    _, path = dumped
    expected = {"000-capture.txt", "final.txt", "final.dot", "index.html"}
    expected |= {f"{i:03d}-{name}.txt" for i, name in enumerate(pass_names(), start=1)}
    assert set(os.listdir(path)) == expected


def test_files_are_graph_text_ending_with_return(dumped):
    _, path = dumped
    for name in os.listdir(path):
        if not name.endswith(".txt"):
            continue
        lines = (path / name).read_text().splitlines()
        assert lines and lines[-1].startswith("return "), name
        for line in lines[:-1]:
            assert NODE_LINE.match(line), (name, line)


def test_capture_dump_is_the_float_graph_and_final_is_the_last_pass(dumped):
    cm, path = dumped
    capture = (path / "000-capture.txt").read_text()
    assert "aten.linear(" in capture and "aten.conv2d(" in capture and "qcompile." not in capture
    names = pass_names()
    last = (path / f"{len(names):03d}-{names[-1]}.txt").read_text()
    final = (path / "final.txt").read_text()
    assert final != last and final.replace(" kernel=reference:qlinear", "") != final
    assert [line.split(" = ")[0] for line in final.splitlines()] == \
        [line.split(" = ")[0] for line in last.splitlines()]
    assert "qcompile.qlinear(" in last


def test_dumps_show_each_stage(dumped):
    _, path = dumped
    names = pass_names()
    text = {n: (path / f"{i:03d}-{n}.txt").read_text() for i, n in enumerate(names, 1)}
    assert "fused=g1" in text["fuse"] and "act=relu" in text["fuse"]
    assert "call_module[obs_" in text["observe"]
    method = qcompile.QuantOptions().calibration
    assert re.search(rf"range=\[{NUM},{NUM}\]:{method}", text["calibrate"])
    assert "qcompile.quantize(" in text["insert-qdq"]
    assert "qcompile.dequantize(" in text["insert-qdq"]
    assert "qcompile.qconv2d(" in text["lower-int8"]


def test_two_compiles_give_byte_identical_dumps(model, tmp_path):
    compile_to(model, tmp_path / "a")
    compile_to(copy.deepcopy(model), tmp_path / "b")
    files = sorted(os.listdir(tmp_path / "a"))
    assert files == sorted(os.listdir(tmp_path / "b"))
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_qlinear_line_matches_the_design_format(dumped):
    cm, path = dumped
    final = (path / "final.txt").read_text().splitlines()
    lines = [line for line in final if "= qcompile.qlinear(" in line]
    assert lines, final
    for line in lines:
        match = QLINEAR_LINE.match(line)
        assert match, line
        assert match.group(2) == "relu"
    out_channels = {int(QLINEAR_LINE.match(line).group(1)) for line in lines}
    assert out_channels == {24}


def test_line_format_of_single_nodes(dumped):
    cm, _ = dumped
    text = format_graph(cm.graph).splitlines()
    assert any(re.match(r"^%x : f32\[2,3,8,8\] = input\[x\]$", line) for line in text)
    assert any(re.match(rf"^%\w+ : i8\[2,3,8,8\] = qcompile\.quantize\(%x, {NUM}, -?\d+, "
                        rf"-128, 127\) \{{out=\({NUM},-?\d+\) range=", line) for line in text)
    assert any(re.match(r"^%\w+ : i8\[\d+,\d+\] = get_attr\[\w+\]$", line) for line in text)


def test_attributes_are_sorted_in_a_fixed_order(dumped):
    _, path = dumped
    order = ["in", "w", "out", "act", "range", "fused", "kernel", "float"]
    for line in (path / "final.txt").read_text().splitlines():
        if " {" not in line:
            continue
        keys = re.findall(r"(?:\{| )([a-z]+)=", line.rsplit(" {", 1)[1])
        assert keys == sorted(keys, key=order.index), line


DOT_NODE = re.compile(r'^  "(\w+)" \[label="[^"]*\\n([a-z0-9]+)\[[0-9,]*\]", '
                      r'fillcolor="(#[0-9a-f]{6})"\];$', re.M)


def _dot_nodes(text):
    """node name -> (dtype, colour) for every node with a tensor type."""
    return {name: (dtype, colour) for name, dtype, colour in DOT_NODE.findall(text)}


def test_dot_file_colours_nodes_by_dtype(dumped):
    _, path = dumped
    text = (path / "final.dot").read_text()
    assert text.startswith('digraph "qcompile" {') and text.rstrip().endswith("}")
    nodes = _dot_nodes(text)
    assert nodes
    dtypes = set()
    for name, (dtype, colour) in nodes.items():
        assert colour == DTYPE_COLOURS[dtype], (name, dtype, colour)
        dtypes.add(dtype)
    assert {"i8", "f32", "i32"} <= dtypes
    assert len({DTYPE_COLOURS[d] for d in dtypes}) >= 3
    assert '"x" -> ' in text and "cluster_legend" in text


def test_dot_marks_float_islands(model, tmp_path):
    compile_to(model, tmp_path, options={"keep_float": ["fc2"]})
    text = (tmp_path / "final.dot").read_text()
    assert re.search(r'^  "linear_1" \[.*fillcolor="#fdae6b"\];$', text, re.M)


def test_dumps_only_when_asked(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    qcompile.compile(model, example_inputs=(image_batches(1)[0],),
                     calibration_data=image_batches())
    assert os.listdir(tmp_path) == []


def test_dump_only_changed_skips_passes_that_changed_nothing(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8)).eval()
    x = torch.randn(4, 8)
    qcompile.compile(model, example_inputs=(x,), calibration_data=[x], dump_dir=str(tmp_path),
                     options={"dump_only_changed": True})
    files = {p.name for p in tmp_path.iterdir()}
    assert not any(name.endswith("-decompose-attention.txt") for name in files)
    assert any(name.endswith("-lower-int8.txt") for name in files)
