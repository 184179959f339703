"""dump_dir/index.html: per-pass diffs, the per-layer error table, float islands, the graph."""
from __future__ import annotations

import difflib
import html
import os
import shutil
import subprocess

_STYLE = """body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}th{cursor:pointer;background:#eee}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
.diff td{font-family:monospace;white-space:pre}.diff_add{background:#cfc}.diff_chg{background:#ffc}
.diff_sub{background:#fcc}details{margin:4px 0}.note{color:#a33}
#graph{overflow:auto;max-height:90vh;border:1px solid #ccc}"""

# Click a header to sort by that column, click again to reverse. Numbers compare as numbers
# ("exact" = infinite SQNR, "-" = none, lowest), other text alphabetically.
_SORT = """function sortKey(v){v=v.trim();if(v==='exact')return Infinity;
if(v==='-'||v==='')return -Infinity;const f=Number(v);return isNaN(f)?v:f}
function compareKeys(x,y){const nx=typeof x==='number',ny=typeof y==='number';
if(nx&&ny)return x===y?0:(x<y?-1:1);if(nx!==ny)return nx?-1:1;return x.localeCompare(y)}
function sortTable(id,col){const t=document.getElementById(id),body=t.tBodies[0];
const dir=t.dataset.col==col&&t.dataset.dir==='ascending'?'descending':'ascending';
t.dataset.col=col;t.dataset.dir=dir;const sign=dir==='ascending'?1:-1;
const key=r=>sortKey(r.cells[col].textContent);
[...body.rows].sort((a,b)=>sign*compareKeys(key(a),key(b))).forEach(r=>body.appendChild(r));
[...t.tHead.rows[0].cells].forEach((th,i)=>i==col?th.setAttribute('aria-sort',dir)
:th.removeAttribute('aria-sort'))}"""


def _esc(value) -> str:
    return html.escape("" if value is None else str(value))


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _db(value) -> str:
    if value is None:
        return "-"
    return "exact" if value == float("inf") else f"{value:.1f}"


def _pass_diffs(dump_dir: str) -> str:
    files = sorted(f for f in os.listdir(dump_dir) if f[:3].isdigit() and f.endswith(".txt"))
    difflib.HtmlDiff._default_prefix = 0        # element ids restart: same dumps, same bytes
    parts, differ = [], difflib.HtmlDiff(wrapcolumn=100)
    for before, after in zip(files, files[1:]):
        a = _read(os.path.join(dump_dir, before)).splitlines()
        b = _read(os.path.join(dump_dir, after)).splitlines()
        if a == b:
            parts.append(f"<p>{_esc(after)}: no change</p>")
            continue
        table = differ.make_table(a, b, _esc(before), _esc(after), context=True, numlines=2)
        parts.append(f"<details class='pass'><summary>{_esc(after)}</summary>"
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


def _render_svg(dot_path: str) -> tuple[str | None, str]:
    """(SVG text, "") from Graphviz `dot -Tsvg`, or (None, why there is none)."""
    dot = shutil.which("dot")
    if dot is None:
        return None, "Graphviz <code>dot</code> was not found"
    try:
        done = subprocess.run([dot, "-Tsvg", dot_path], capture_output=True, check=False,
                              timeout=120)
    except (subprocess.SubprocessError, OSError) as error:
        return None, f"Graphviz <code>dot</code> failed ({_esc(error)})"
    svg = done.stdout.decode("utf-8", "replace")
    if done.returncode != 0 or "<svg" not in svg:
        stderr = done.stderr.decode("utf-8", "replace").strip()[-500:]
        return None, f"Graphviz <code>dot</code> failed ({_esc(stderr)})"
    return svg[svg.index("<svg"):], ""     # drop the XML prolog and DOCTYPE: inline in HTML


def graph_picture(dot_path: str) -> str:
    """The graph as inline SVG when Graphviz `dot` is installed, else the DOT text with a note."""
    svg, why_not = _render_svg(dot_path)
    if svg is not None:
        return f"<div id='graph'>{svg}</div>"
    text = _read(dot_path)
    return (f"<p class='note' id='graph-note'>{why_not}; the graph is shown as DOT text. "
            "Install Graphviz (<code>scripts/system-deps.sh</code> or <code>apt-get install "
            f"graphviz</code>) to draw it.</p><pre id='graph-dot'>{_esc(text)}</pre>")


def _section(section_id: str, title: str, content: str) -> str:
    return f"<section id='{section_id}'><h2>{title}</h2>\n{content}</section>"


def _summary(report) -> str:
    t = report.totals
    return (f"<h1>qcompile report: {_esc(report.target)}, {_esc(report.recipe)}</h1>"
            f"<p>{t['ops_quantized']} ops quantized, {t['ops_float']} left float; weights "
            f"{t['weight_bytes_before']} &rarr; {t['weight_bytes_after']} bytes; output SQNR "
            f"{_db(report.output_sqnr_db)} dB</p>")


def write_html_report(dump_dir: str, report) -> str:
    """Write dump_dir/index.html and return its path."""
    files = "<p>Files: <a href='final.txt'>final.txt</a>, <a href='final.dot'>final.dot</a></p>"
    body = [_summary(report),
            _section("layer-error", "Per-layer error", _layer_table(report)),
            _section("float-islands", "Float islands", _islands(report)),
            _section("final-graph", "Final graph",
                     files + graph_picture(os.path.join(dump_dir, "final.dot"))),
            _section("pass-diffs", "Per-pass changes", _pass_diffs(dump_dir))]
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>qcompile report</title>"
            f"<style>{_STYLE}</style><script>{_SORT}</script></head><body>"
            + "\n".join(body) + "</body></html>\n")
    path = os.path.join(dump_dir, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path
