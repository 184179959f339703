"""dump_dir/index.html: layer table, float islands, graph picture, per-pass diffs."""
import re
import shutil
import subprocess
import warnings
from html.parser import HTMLParser

import pytest
import torch

import qcompile
from qcompile import html_report

warnings.filterwarnings("ignore", category=qcompile.QCompileWarning)


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.rows, self.in_layers = [], 0, False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "table" and ("id", "layers") in attrs:
            self.in_layers = True
        if tag == "tr" and self.in_layers:
            self.rows += 1

    def handle_endtag(self, tag):
        if tag == "table":
            self.in_layers = False


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16),
                                torch.nn.Linear(16, 4)).eval()
    x = torch.randn(4, 8)
    path = tmp_path_factory.mktemp("dumps")
    return qcompile.compile(model, example_inputs=(x,), calibration_data=[x],
                            dump_dir=str(path)), path


def test_index_has_every_section(compiled):
    cm, path = compiled
    text = (path / "index.html").read_text()
    parser = _Collect()
    parser.feed(text)
    assert parser.rows == len(cm.report.nodes) + 1          # header row + one per node
    assert "sortTable('layers'" in text
    assert "no integer kernel for aten.layer_norm" in text
    assert text.count("<details class='pass'>") >= 3         # passes that changed the graph
    assert "<svg" in text or "Graphviz <code>dot</code> was not found" in text
    for section in ("layer-error", "float-islands", "final-graph", "pass-diffs"):
        assert f"<section id='{section}'>" in text


def test_graph_falls_back_to_dot_text_without_graphviz(compiled, monkeypatch):
    _, path = compiled
    monkeypatch.setattr(shutil, "which", lambda name: None)
    picture = html_report.graph_picture(str(path / "final.dot"))
    assert "was not found" in picture and "digraph" in picture and "<svg" not in picture


def test_graph_falls_back_to_dot_text_when_graphviz_fails(compiled, monkeypatch):
    _, path = compiled
    failed = subprocess.CompletedProcess([], 1, stdout=b"", stderr=b"Error: syntax error")
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/dot")
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: failed)
    picture = html_report.graph_picture(str(path / "final.dot"))
    assert "failed (Error: syntax error)" in picture and "digraph" in picture


@pytest.mark.skipif(shutil.which("dot") is None,
                    reason="Graphviz `dot` not installed (scripts/system-deps.sh installs it)")
def test_graph_is_inline_svg_with_graphviz(compiled):
    _, path = compiled
    picture = html_report.graph_picture(str(path / "final.dot"))
    assert picture.startswith("<div id='graph'><svg") and "<?xml" not in picture
    names = re.findall(r'^  "(\w+)" \[label=', (path / "final.dot").read_text(), re.M)
    assert len(names) > 3
    for name in names:                                   # one SVG node per graph node
        assert f"<title>{name}</title>" in picture, name
