"""The compile report: what ran where, what stayed float and why, and the error per layer."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from .dump import op_name
from .facts import facts_of
from .op_kinds import BOOKKEEPING, LAYOUT_OPS, is_qcompile_op

QDQ_OPS = {"quantize", "dequantize", "requantize", "dequantize_per_channel", "dequantize_int4"}


@dataclass
class NodeRow:
    name: str
    op: str
    inputs: str
    output: str
    kernel: str
    float_reason: str | None
    sqnr_db: float | None = None
    origin: str | None = None


@dataclass
class PassRow:
    index: int
    name: str
    changed: bool
    seconds: float
    sqnr_db: float | None
    stats: dict = field(default_factory=dict)


@dataclass
class Report:
    target: str
    recipe: str
    nodes: list[NodeRow]
    passes: list[PassRow]
    totals: dict
    calibration: dict
    diagnostics: list[tuple[str, str, str]]
    output_sqnr_db: float | None = None
    kernel_times: list[dict] = field(default_factory=list)  # kernel_profile.kernel_rows
    build: dict = field(default_factory=dict)  # the backend's build facts (path, cache, tuning)
    sensitivity: list[dict] = field(default_factory=list)  # {layer, sqnr_db}, worst first
    budget: dict = field(default_factory=dict)  # mixed_precision's decision

    @property
    def float_islands(self) -> list[NodeRow]:
        return [r for r in self.nodes if r.float_reason]

    def to_dict(self, deterministic: bool = False) -> dict:
        """As plain data; `deterministic` drops timings (for byte-identical artifacts)."""
        data = _finite(asdict(self))
        if deterministic:
            for row in data["passes"]:
                row["seconds"] = 0.0
            data["kernel_times"] = []
            data["build"].pop("cached", None)
        return data

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    def __str__(self) -> str:
        from .report_text import render
        return render(self)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def is_reported(node) -> bool:
    return (node.op == "call_function" and node.target not in BOOKKEEPING
            and node.target not in LAYOUT_OPS)


def _dtypes(nodes) -> str:
    parts = []
    for n in nodes:
        info = facts_of(n).tensor
        if info is not None:
            parts.append(info.dtype)
    return ",".join(parts)


def node_row(node) -> NodeRow:
    facts = facts_of(node)
    out = facts.tensor
    output = f"{out.dtype}[{','.join(map(str, out.shape))}]" if out is not None else ""
    kernel = facts.kernel.name if facts.kernel is not None else ""
    return NodeRow(node.name, op_name(node.target), _dtypes(node.all_input_nodes), output,
                   kernel, facts.float_reason, None, facts.origin)


def weight_bytes(gm) -> int:
    """Bytes of the constants the graph reads."""
    from .graph_edit import constant_value
    seen, total = set(), 0
    for node in gm.graph.find_nodes(op="get_attr"):
        value = constant_value(gm, node)
        if value is not None and node.target not in seen:
            seen.add(node.target)
            total += value.numel() * value.element_size()
    return total


def totals_for(final_gm, float_gm) -> dict:
    compute = [n for n in final_gm.graph.nodes if is_reported(n)]
    int_ops = [n for n in compute if is_qcompile_op(n)
               and op_name(n.target).split(".", 1)[1] not in QDQ_OPS]
    float_ops = [n for n in compute if facts_of(n).float_reason]
    return {"ops_quantized": len(int_ops), "ops_float": len(float_ops),
            "weight_bytes_before": weight_bytes(float_gm) if float_gm is not None else None,
            "weight_bytes_after": weight_bytes(final_gm)}


def _number(value):
    return float(value) if isinstance(value, str) and value in ("inf", "-inf", "nan") else value


def report_from_dict(data: dict) -> Report:
    """Rebuild a Report saved with `to_dict`."""
    nodes = [NodeRow(**{**row, "sqnr_db": _number(row["sqnr_db"])}) for row in data["nodes"]]
    passes = [PassRow(**{**row, "sqnr_db": _number(row["sqnr_db"])}) for row in data["passes"]]
    diagnostics = [tuple(d) for d in data["diagnostics"]]
    return Report(data["target"], data["recipe"], nodes, passes, data["totals"],
                  data["calibration"], diagnostics, _number(data["output_sqnr_db"]),
                  data.get("kernel_times", []), data.get("build", {}),
                  data.get("sensitivity", []), data.get("budget", {}))
