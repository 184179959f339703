"""Graphviz DOT of a graph, nodes coloured by output dtype."""
from __future__ import annotations

import torch.fx as fx

from .dump import op_name
from .facts import facts_of

DTYPE_COLOURS = {"i8": "#8fd19e", "u8": "#8fd19e", "i16": "#c7e9c0", "i32": "#f6d55c",
                 "i64": "#d9d9d9", "f32": "#9ecae1", "f64": "#6baed6", "f16": "#c6dbef",
                 "bf16": "#c6dbef", "f8e4m3": "#bcbddc", "f8e5m2": "#bcbddc", "bool": "#eeeeee"}
FLOAT_ISLAND_COLOUR = "#fdae6b"


def _label(node: fx.Node) -> str:
    facts = facts_of(node)
    op = op_name(node.target) if node.op == "call_function" else node.op
    shape = ""
    if facts.tensor is not None:
        shape = f"\\n{facts.tensor.dtype}[{','.join(map(str, facts.tensor.shape))}]"
    return f"{node.name}\\n{op}{shape}".replace('"', "'")


def graph_to_dot(gm: fx.GraphModule, title: str = "qcompile") -> str:
    lines = [f'digraph "{title}" {{', "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];']
    for node in gm.graph.nodes:
        facts = facts_of(node)
        dtype = facts.tensor.dtype if facts.tensor is not None else ""
        colour = DTYPE_COLOURS.get(dtype, "#ffffff")
        if facts.float_reason:
            colour = FLOAT_ISLAND_COLOUR
        lines.append(f'  "{node.name}" [label="{_label(node)}", fillcolor="{colour}"];')
    for node in gm.graph.nodes:
        for user in node.users:
            lines.append(f'  "{node.name}" -> "{user.name}";')
    lines.append('  subgraph cluster_legend { label="dtype"; ' + " ".join(
        f'"legend_{k}" [label="{k}", fillcolor="{v}"];' for k, v in DTYPE_COLOURS.items())
        + f' "legend_float_island" [label="float island", fillcolor="{FLOAT_ISLAND_COLOUR}"]; }}')
    lines.append("}")
    return "\n".join(lines) + "\n"
