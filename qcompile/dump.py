"""Graph dumps: one line per node, deterministic, with dtype, shape and qparams.

    %fc1 : i8[8,128,1536] = qcompile.qlinear(%x_q, -3, %w_fc1, ...) {in=(0.0213,-3) w=per_ch(1536) out=(0.0451,-128) act=relu}
"""
from __future__ import annotations

import torch
import torch.fx as fx

from .facts import NodeFacts, QParams, facts_of

_ATTR_ORDER = ("in", "w", "out", "act", "range", "fused", "kernel", "float")


def op_name(target) -> str:
    """Short, stable spelling of a call target: aten.linear, qcompile.qlinear, operator.getitem."""
    if isinstance(target, torch._ops.OpOverload):
        ns, name = target.name().split("::", 1)
        return f"{ns}.{name}"
    if isinstance(target, torch._ops.OpOverloadPacket):
        return str(target).replace("::", ".")
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", None) or str(target)
    module = {"_operator": "operator", "builtins": "", "torch": "torch"}.get(module, module)
    return f"{module}.{name}" if module else name


def _fmt_float(x: float) -> str:
    return f"{x:.4g}"


def _fmt_arg(a) -> str:
    if isinstance(a, fx.Node):
        return f"%{a.name}"
    if isinstance(a, (list, tuple)):
        inner = ",".join(_fmt_arg(x) for x in a)
        return f"[{inner}]" if isinstance(a, list) else f"({inner})"
    if isinstance(a, float):
        return _fmt_float(a)
    if isinstance(a, torch.dtype):
        return str(a).replace("torch.", "")
    if isinstance(a, dict):
        return "{" + ",".join(f"{k}={_fmt_arg(v)}" for k, v in sorted(a.items())) + "}"
    return str(a)


def _fmt_qparams(q: QParams) -> str:
    return f"({_fmt_float(q.scale)},{q.zero_point})"


def attributes(facts: NodeFacts) -> dict[str, str]:
    attrs: dict[str, str] = {}
    ins = [q for q in facts.input_qparams if q is not None]
    if ins:
        attrs["in"] = ",".join(_fmt_qparams(q) for q in ins)
    if facts.weight_qparams is not None:
        attrs["w"] = f"per_ch({len(facts.weight_qparams.scales)})"
    if facts.qparams is not None:
        attrs["out"] = _fmt_qparams(facts.qparams)
    if facts.activation:
        attrs["act"] = facts.activation
    if facts.observed is not None:
        r = facts.observed
        attrs["range"] = f"[{_fmt_float(r.lo)},{_fmt_float(r.hi)}]:{r.method}"
    if facts.fusion is not None:
        attrs["fused"] = f"g{facts.fusion.group_id}"
    if facts.kernel is not None:
        attrs["kernel"] = facts.kernel.name
    if facts.float_reason:
        attrs["float"] = f'"{facts.float_reason}"'
    return attrs


def _type_text(facts: NodeFacts) -> str:
    t = facts.tensor
    if t is None:
        return ""
    return f" : {t.dtype}[{','.join(str(d) for d in t.shape)}]"


def format_node(node: fx.Node) -> str:
    facts = facts_of(node)
    head = f"%{node.name}{_type_text(facts)}"
    if node.op == "placeholder":
        body = f"input[{node.target}]"
    elif node.op == "get_attr":
        body = f"get_attr[{node.target}]"
    elif node.op == "output":
        return f"return {_fmt_arg(node.args[0])}"
    else:
        target = node.target if node.op == "call_function" else f"{node.op}[{node.target}]"
        name = op_name(target) if node.op == "call_function" else target
        args = [_fmt_arg(a) for a in node.args]
        args += [f"{k}={_fmt_arg(v)}" for k, v in sorted(node.kwargs.items())]
        body = f"{name}({', '.join(args)})"
    attrs = attributes(facts)
    ordered = [k for k in _ATTR_ORDER if k in attrs]
    tail = " {" + " ".join(f"{k}={attrs[k]}" for k in ordered) + "}" if ordered else ""
    return f"{head} = {body}{tail}"


def format_graph(gm: fx.GraphModule) -> str:
    """The whole graph as text, one line per node, ending with a newline."""
    return "".join(format_node(n) + "\n" for n in gm.graph.nodes)
