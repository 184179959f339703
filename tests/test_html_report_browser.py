"""dump_dir/index.html as headless Chromium renders it: tables, sorting, pass diffs, the SVG graph.

Needs the `chromium` executable (and Graphviz `dot` for the graph checks); scripts/system-deps.sh
installs both on Debian. Without them these tests skip.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import warnings
import zlib
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

import qcompile
from qcompile.dot import DTYPE_COLOURS, FLOAT_ISLAND_COLOUR

from tiny_models import ConvMLP, image_batches

warnings.filterwarnings("ignore", category=qcompile.QCompileWarning)

CHROMIUM = next((path for path in map(shutil.which, ("chromium", "chromium-browser",
                                                     "google-chrome")) if path), None)
HAS_DOT = shutil.which("dot") is not None
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed "
                                "(scripts/system-deps.sh installs it on Debian)")
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="Graphviz `dot` not installed "
                               "(scripts/system-deps.sh installs it on Debian)")
DOT_FILL = re.compile(r'^  "(\w+)" \[label=.*fillcolor="(#[0-9a-f]{6})"\];$', re.M)
SQNR_COLUMN = 4
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
             "wbr"}


def run_chromium(profile, *args) -> subprocess.CompletedProcess:
    """Headless Chromium on a fresh profile directory; if it hangs past 60 s, its whole process
    group is killed and it runs once more."""
    for attempt in range(2):
        command = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
                   "--disable-dev-shm-usage", f"--user-data-dir={profile}-{attempt}",
                   "--virtual-time-budget=2000", *args]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            if attempt == 1:
                raise
            continue
        assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]
        return subprocess.CompletedProcess(command, 0, stdout, stderr)


def dump_dom(page, profile) -> str:
    return run_chromium(profile, "--dump-dom", page.as_uri()).stdout.decode("utf-8")


class RenderedPage(HTMLParser):
    """What the checks need from a dumped DOM: layer rows, sections, pass diffs, SVG nodes."""

    def __init__(self, dom: str):
        super().__init__()
        self.layer_rows, self.ids, self.headers_sorted = [], set(), {}
        self.pass_diffs, self.island_items, self.svg_count = 0, 0, 0
        self.svg_nodes = {}                      # SVG node title -> fill colour of its shape
        self._stack, self._cell, self._node, self._text, self._column = [], None, None, "", -1
        self.feed(dom)

    def _inside(self, tag_id: str) -> bool:
        return any(attrs.get("id") == tag_id for _, attrs in self._stack)

    def handle_starttag(self, tag, attr_list):
        attrs = dict(attr_list)
        if tag not in VOID_TAGS:
            self._stack.append((tag, attrs))
        self.ids |= {attrs["id"]} if "id" in attrs else set()
        self.pass_diffs += tag == "details" and "pass" in (attrs.get("class") or "")
        self.island_items += tag == "li" and self._inside("float-islands")
        self.svg_count += tag == "svg" and self._inside("graph")
        if self._inside("layers"):
            self._layer_table_tag(tag, attrs)
        self._svg_node_tag(tag, attrs)
        self._text = ""

    def _layer_table_tag(self, tag, attrs):
        if tag == "th":
            self._column += 1
            if "aria-sort" in attrs:
                self.headers_sorted[self._column] = attrs["aria-sort"]
        if tag == "tr" and any(t == "tbody" for t, _ in self._stack):
            self.layer_rows.append([])
        if tag == "td" and self.layer_rows:
            self._cell = ""

    def _svg_node_tag(self, tag, attrs):
        if tag == "g" and attrs.get("class") == "node":
            self._node = {"title": None, "fill": None}
        shape = tag in ("path", "polygon", "ellipse") and attrs.get("fill", "none") != "none"
        if shape and self._node is not None and self._node["fill"] is None:
            self._node["fill"] = attrs["fill"]

    def handle_endtag(self, tag):
        if any(t == tag for t, _ in self._stack):
            while self._stack.pop()[0] != tag:
                pass
        if tag == "td" and self._cell is not None:
            self.layer_rows[-1].append(self._cell.strip())
            self._cell = None
        if tag == "title" and self._node is not None:
            self._node["title"] = self._text
        if tag == "g" and self._node is not None and self._node["title"] is not None:
            self.svg_nodes[self._node["title"]] = self._node["fill"]
            self._node = None

    def handle_data(self, data):
        self._text += data
        if self._cell is not None:
            self._cell += data


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("report")
    cm = qcompile.compile(ConvMLP().eval(), example_inputs=(image_batches(1)[0],),
                          calibration_data=image_batches(), target="reference",
                          dump_dir=str(path), options={"keep_float": ["fc2"]})
    return cm, path


@pytest.fixture(scope="module")
def rendered(compiled, tmp_path_factory):
    _, path = compiled
    return RenderedPage(dump_dom(path / "index.html", tmp_path_factory.mktemp("profile")))


def changed_passes(path) -> int:
    """Consecutive NNN-*.txt dumps that differ: each gets one diff section."""
    files = sorted(p for p in path.iterdir() if p.name[:3].isdigit() and p.suffix == ".txt")
    return sum(a.read_text() != b.read_text() for a, b in zip(files, files[1:]))


def test_every_section_renders(compiled, rendered):
    cm, path = compiled
    assert {"layer-error", "float-islands", "final-graph", "pass-diffs"} <= rendered.ids
    assert ("graph" in rendered.ids) == HAS_DOT             # the SVG, or else the DOT text
    assert ("graph-note" in rendered.ids) == ("graph-dot" in rendered.ids) == (not HAS_DOT)
    assert rendered.pass_diffs == changed_passes(path) > 0
    assert rendered.island_items == len(cm.report.float_islands) > 0


def test_layer_table_has_one_row_per_reported_layer(compiled, rendered):
    cm, _ = compiled
    assert [row[0] for row in rendered.layer_rows] == [r.name for r in cm.report.nodes]
    assert all(len(row) == 6 for row in rendered.layer_rows)
    islands = {r.name: r.float_reason for r in cm.report.float_islands}
    assert {row[0]: row[5] for row in rendered.layer_rows if row[5]} == islands


def sqnr_key(text: str) -> float:
    return {"exact": float("inf"), "-": float("-inf")}.get(text) or float(text)


@pytest.mark.parametrize("clicks, order", [(1, "ascending"), (2, "descending")])
def test_clicking_the_sqnr_header_sorts_the_table(compiled, rendered, tmp_path, clicks, order):
    _, path = compiled
    before = [row[SQNR_COLUMN] for row in rendered.layer_rows]
    assert len(set(before)) > 1                          # something to sort
    click = (f"document.querySelectorAll('#layers thead th')[{SQNR_COLUMN}].click();" * clicks)
    page = path / f"sorted-{clicks}.html"
    page.write_text((path / "index.html").read_text().replace(
        "</body>", f"<script>{click}</script></body>"))
    after = RenderedPage(dump_dom(page, tmp_path / "profile"))
    column = [row[SQNR_COLUMN] for row in after.layer_rows]
    assert sorted(map(tuple, after.layer_rows)) == sorted(map(tuple, rendered.layer_rows))
    assert column == sorted(before, key=sqnr_key, reverse=order == "descending")
    assert after.headers_sorted == {SQNR_COLUMN: order}            # the one sorted header is marked


@needs_dot
def test_graph_is_an_svg_coloured_by_dtype(compiled, rendered):
    _, path = compiled
    fills = dict(DOT_FILL.findall((path / "final.dot").read_text()))
    assert rendered.svg_count == 1 and len(fills) > 5
    for name, colour in fills.items():
        assert rendered.svg_nodes.get(name) == colour, name
    assert FLOAT_ISLAND_COLOUR in fills.values() and DTYPE_COLOURS["i8"] in fills.values()


def png_pixels(data: bytes) -> np.ndarray:
    """Decode an 8-bit RGB/RGBA, non-interlaced PNG into a [height, width, channels] array."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        header = struct.unpack(">IIBBBBB", body) if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour_type, _, _, interlace = header
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, header
    channels = 3 if colour_type == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * channels)
    rows, previous = [], np.zeros(width * channels, np.uint8)
    for line in raw:
        previous = unfilter_row(int(line[0]), line[1:], previous, channels)
        rows.append(previous)
    return np.stack(rows).reshape(height, width, channels)


def unfilter_row(kind: int, row, up, bpp: int) -> np.ndarray:
    if kind == 0:
        return row.copy()
    if kind == 1:                                        # Sub: running sum per channel
        return np.cumsum(row.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)
    if kind == 2:                                        # Up
        return row + up
    out, row, up = [0] * len(row), row.tolist(), up.tolist()
    for i, value in enumerate(row):                      # Average and Paeth: byte by byte
        left = out[i - bpp] if i >= bpp else 0
        corner = up[i - bpp] if i >= bpp else 0
        if kind == 3:
            out[i] = (value + (left + up[i]) // 2) & 255
            continue
        p = left + up[i] - corner
        pa, pb, pc = abs(p - left), abs(p - up[i]), abs(p - corner)
        predictor = left if pa <= pb and pa <= pc else (up[i] if pb <= pc else corner)
        out[i] = (value + predictor) & 255
    return np.array(out, np.uint8)


def test_screenshot_is_not_blank(compiled, tmp_path):
    _, path = compiled
    shot = tmp_path / "report.png"
    run_chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2000",
                 (path / "index.html").as_uri())
    pixels = png_pixels(shot.read_bytes())[..., :3]
    assert pixels.shape[:2] == (2000, 1200)
    background = np.all(pixels == pixels[0, 0], axis=-1)
    assert pixels.astype(float).std() > 10 and background.mean() < 0.99
    if HAS_DOT:                                          # the graph's i8 nodes were painted
        i8 = np.array([int(DTYPE_COLOURS["i8"][k:k + 2], 16) for k in (1, 3, 5)])
        assert np.all(pixels == i8, axis=-1).sum() > 100
