"""fx graph <-> JSON: nodes, arguments, targets (aten and qcompile ops only), facts."""
from __future__ import annotations

import dataclasses
import math
import operator

import torch
import torch.fx as fx

from ..errors import ArtifactError
from ..facts import (ChannelQParams, FusionGroup, KernelChoice, NodeFacts, QParams, TensorInfo,
                     ValueRange, facts_of)

OP_NAMESPACES = ("aten", "qcompile")
PYTHON_TARGETS = {f"operator.{n}": getattr(operator, n)
                  for n in ("getitem", "add", "sub", "mul", "floordiv", "truediv", "neg", "mod")}
_FACT_FIELDS = {"tensor": TensorInfo, "observed": ValueRange, "qparams": QParams,
                "weight_qparams": ChannelQParams, "fusion": FusionGroup, "kernel": KernelChoice}
_SIMPLE = {torch.dtype: "$dtype", torch.device: "$device", torch.memory_format: "$memory_format",
           torch.layout: "$layout"}


def encode_target(node: fx.Node):
    target = node.target
    if isinstance(target, torch._ops.OpOverload) and target.namespace in OP_NAMESPACES:
        return {"$op": target._schema.name, "overload": target._overloadname}
    for name, fn in PYTHON_TARGETS.items():
        if target is fn:
            return {"$py": name}
    raise ArtifactError(f"cannot save a call to {target!r}: only aten, qcompile and operator "
                        "targets are saved", node=node)


def decode_target(value):
    if "$py" in value:
        return PYTHON_TARGETS[value["$py"]]
    namespace, name = value["$op"].split("::", 1)
    if namespace not in OP_NAMESPACES:
        raise ArtifactError(f"artifact calls op {value['$op']} outside {OP_NAMESPACES}")
    return getattr(getattr(getattr(torch.ops, namespace), name), value["overload"])


def encode_arg(a, node: fx.Node):
    if isinstance(a, fx.Node):
        return {"$node": a.name}
    if isinstance(a, list):
        return [encode_arg(x, node) for x in a]
    if isinstance(a, tuple):
        return {"$tuple": [encode_arg(x, node) for x in a]}
    if isinstance(a, float) and not math.isfinite(a):
        return {"$float": repr(a)}
    if a is None or isinstance(a, (bool, int, float, str)):
        return a
    for kind, tag in _SIMPLE.items():
        if isinstance(a, kind):
            return {tag: str(a).replace("torch.", "")}
    raise ArtifactError(f"cannot save argument {a!r} of type {type(a).__name__}", node=node)


def decode_arg(a, env: dict):
    if isinstance(a, list):
        return [decode_arg(x, env) for x in a]
    if not isinstance(a, dict):
        return a
    if "$node" in a:
        return env[a["$node"]]
    if "$tuple" in a:
        return tuple(decode_arg(x, env) for x in a["$tuple"])
    if "$float" in a:
        return float(a["$float"])
    if "$device" in a:
        return torch.device(a["$device"])
    tag, value = next(iter(a.items()))
    return getattr(torch, value)


def encode_facts(node: fx.Node) -> dict:
    return dataclasses.asdict(facts_of(node))


def decode_facts(data: dict) -> NodeFacts:
    values = dict(data)
    for name, cls in _FACT_FIELDS.items():
        if values.get(name) is not None:
            fields = {k: tuple(v) if isinstance(v, list) else v for k, v in values[name].items()}
            values[name] = cls(**fields)
    values["input_qparams"] = tuple(QParams(**q) if q else None for q in values["input_qparams"])
    values["extra"] = tuple(tuple(x) for x in values.get("extra", ()))
    return NodeFacts(**values)


def encode_graph(gm: fx.GraphModule) -> list[dict]:
    nodes = []
    for node in gm.graph.nodes:
        if node.op == "call_module":
            raise ArtifactError("cannot save a graph that calls submodules", node=node)
        kwargs = [[k, encode_arg(v, node)] for k, v in sorted(node.kwargs.items())]
        entry = {"name": node.name, "op": node.op, "facts": encode_facts(node),
                 "args": encode_arg(node.args, node), "kwargs": kwargs}
        if node.op == "call_function":
            entry["target"] = encode_target(node)
        elif node.op in ("placeholder", "get_attr"):
            entry["target"] = node.target
        nodes.append(entry)
    return nodes


def decode_graph(nodes: list[dict]) -> fx.Graph:
    graph, env = fx.Graph(), {}
    for entry in nodes:
        op, name = entry["op"], entry["name"]
        if op in ("placeholder", "get_attr"):
            new = graph.create_node(op, entry["target"], name=name)
        elif op == "output":
            new = graph.output(decode_arg(entry["args"], env)[0])
        else:
            kwargs = {k: decode_arg(v, env) for k, v in entry["kwargs"]}
            new = graph.create_node("call_function", decode_target(entry["target"]),
                                    decode_arg(entry["args"], env), kwargs, name=name)
        new.meta["qc"] = decode_facts(entry["facts"])
        env[name] = new
    return graph
