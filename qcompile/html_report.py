"""dump_dir/index.html: per-pass diffs, the per-layer error table, float islands, the graph."""
from __future__ import annotations

import difflib
import html
import os
import shutil
import subprocess

_STYLE = """body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}th{cursor:pointer;background:#eee}
.diff td{font-family:monospace;white-space:pre}.diff_add{background:#cfc}.diff_chg{background:#ffc}
.diff_sub{background:#fcc}details{margin:4px 0}"""

_SORT = """function sortTable(id,col){const t=document.getElementById(id);const rows=[...t.tBodies[0].rows];
const num=v=>{const f=parseFloat(v);return isNaN(f)?(v==='exact'?1e9:-1e9):f};
const dir=t.dataset.col==col&&t.dataset.dir==='asc'?'desc':'asc';t.dataset.col=col;t.dataset.dir=dir;
rows.sort((a,b)=>{const x=num(a.cells[col].textContent),y=num(b.cells[col].textContent);
return dir==='asc'?x-y:y-x});rows.forEach(r=>t.tBodies[0].appendChild(r));}"""


def _esc(value) -> str:
    return html.escape("" if value is None else str(value))


def _db(value) -> str:
    if value is None:
        return "-"
    return "exact" if value == float("inf") else f"{value:.1f}"


def _pass_diffs(dump_dir: str) -> str:
    files = sorted(f for f in os.listdir(dump_dir) if f[:3].isdigit() and f.endswith(".txt"))
    difflib.HtmlDiff._default_prefix = 0        # element ids restart: same dumps, same bytes
    parts, differ = [], difflib.HtmlDiff(wrapcolumn=100)
    for before, after in zip(files, files[1:]):
        a = open(os.path.join(dump_dir, before), encoding="utf-8").read().splitlines()
        b = open(os.path.join(dump_dir, after), encoding="utf-8").read().splitlines()
        if a == b:
            parts.append(f"<p>{_esc(after)}: no change</p>")
            continue
        table = differ.make_table(a, b, _esc(before), _esc(after), context=True, numlines=2)
        parts.append(f"<details><summary>{_esc(after)}</summary>"
                     f"<div class='diff'>{table}</div></details>")
    return "\n".join(parts)


def _layer_table(report) -> str:
    head = "".join(f"<th onclick=\"sortTable('layers',{i})\">{h}</th>" for i, h in
                   enumerate(["node", "op", "out", "kernel", "SQNR dB", "float island reason"]))
    rows = "".join(f"<tr><td>{_esc(r.name)}</td><td>{_esc(r.op)}</td><td>{_esc(r.output)}</td>"
                   f"<td>{_esc(r.kernel)}</td><td>{_db(r.sqnr_db)}</td>"
                   f"<td>{_esc(r.float_reason)}</td></tr>" for r in report.nodes)
    return f"<table id='layers'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _islands(report) -> str:
    items = "".join(f"<li><b>{_esc(r.name)}</b> ({_esc(r.op)}): {_esc(r.float_reason)}</li>"
                    for r in report.float_islands)
    return f"<ul>{items}</ul>" if items else "<p>none</p>"


def graph_picture(dot_path: str) -> str:
    """SVG of the DOT file when Graphviz `dot` is installed, else the DOT text with a note."""
    dot = shutil.which("dot")
    if dot:
        try:
            svg = subprocess.run([dot, "-Tsvg", dot_path], capture_output=True, check=True,
                                 timeout=120).stdout.decode("utf-8")
            return svg[svg.find("<svg"):]
        except (subprocess.SubprocessError, OSError):
            pass
    text = open(dot_path, encoding="utf-8").read()
    return ("<p class='note'>Graphviz <code>dot</code> is not installed; the graph is shown as "
            f"DOT text (apt-get install graphviz renders it).</p><pre>{_esc(text)}</pre>")


def write_html_report(dump_dir: str, report) -> str:
    """Write dump_dir/index.html and return its path."""
    t = report.totals
    body = [f"<h1>qcompile report: {_esc(report.target)}, {_esc(report.recipe)}</h1>",
            f"<p>{t['ops_quantized']} ops quantized, {t['ops_float']} left float; weights "
            f"{t['weight_bytes_before']} &rarr; {t['weight_bytes_after']} bytes; output SQNR "
            f"{_db(report.output_sqnr_db)} dB</p>",
            "<h2>Per-layer error</h2>", _layer_table(report),
            "<h2>Float islands</h2>", _islands(report),
            "<h2>Final graph</h2>", graph_picture(os.path.join(dump_dir, "final.dot")),
            "<h2>Per-pass changes</h2>", _pass_diffs(dump_dir)]
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>qcompile report</title>"
            f"<style>{_STYLE}</style><script>{_SORT}</script></head><body>"
            + "\n".join(body) + "</body></html>\n")
    path = os.path.join(dump_dir, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path
