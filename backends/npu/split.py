"""Split a lowered graph into the host part (Python, reference kernels) and the integer
part (the C model).

Host head: the float prefix (ops computed from the graph inputs and constants only, before
any integer op: embedding lookups, mask preparation, shape arithmetic) and the
`qcompile.quantize` nodes that read it. Host tail: every op that turns integers into floats
(dequantize, qlinear_f32, qconv2d_f32, qmatmul_f32) and everything after it. The rest runs
in C; a float value in it is a BackendError naming the node. Integer scalars the C part
reads (sizes) become constants: the C model has static shapes.
"""
from __future__ import annotations

import copy
import operator

import torch
from torch import fx

from qcompile.errors import BackendError
from qcompile.op_kinds import is_qcompile_op

Q = torch.ops.qcompile
_FLOAT_OUT = ("dequantize", "qlinear_f32", "qconv2d_f32", "qmatmul_f32", "scale_bias")


def _opname(node: fx.Node) -> str:
    if node.op != "call_function":
        return ""
    return getattr(node.target, "_opname", getattr(node.target, "__name__", ""))


def _outside(node: fx.Node, prefix: set) -> bool:
    return node.op in ("placeholder", "get_attr") or node in prefix


def _host_prefix(gm: fx.GraphModule, tail: set) -> set:
    """Non-integer ops whose inputs are all graph inputs, constants or such ops."""
    prefix: set = set()
    for node in gm.graph.nodes:
        if node.op != "call_function" or node in tail or is_qcompile_op(node) \
                or node.target is Q.quantize.default:
            continue
        if all(_outside(a, prefix) for a in node.all_input_nodes):
            prefix.add(node)
    return prefix


def _is_head(node: fx.Node, prefix: set) -> bool:
    return node.target is Q.quantize.default and isinstance(node.args[0], fx.Node) \
        and _outside(node.args[0], prefix)


def is_scalar(node: fx.Node) -> bool:
    """A segment input that is a Python number (a size), baked into the C model."""
    val = node.meta.get("val")
    return node.op != "placeholder" and not isinstance(val, torch.Tensor) and val is not None


def _tail(gm: fx.GraphModule) -> set:
    """Float-out ops and all that follows them; BackendError where integers follow (a float
    island between integer ops, which the C model cannot run)."""
    tail: dict = {}
    for node in gm.graph.nodes:
        if node.op == "output":
            continue
        sources = [tail[a] for a in node.all_input_nodes if a in tail]
        if _opname(node) in _FLOAT_OUT or sources:
            tail[node] = sources[0] if sources else node
            if sources and (is_qcompile_op(node) or node.target is Q.quantize.default) \
                    and _opname(node) not in _FLOAT_OUT:
                raise BackendError(
                    "npu-int8 runs integer ops only, and this graph leaves integers at "
                    f"%{sources[0].name} and quantizes again at %{node.name} (a float "
                    "island; use an integer-only recipe or keep the layer out)", node=sources[0])
    return set(tail)


def _check_integer(node: fx.Node) -> None:
    val = node.meta.get("val")
    tensors = val if isinstance(val, (tuple, list)) else [val]
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.dtype.is_floating_point:
            raise BackendError("npu-int8 runs integer ops only; this op computes in "
                               f"{t.dtype} between integer ops (keep it float before the "
                               "first quantize or use an integer-only recipe)", node=node)


def partition(gm: fx.GraphModule):
    """(segment nodes, segment inputs, segment outputs) in graph order; inputs are head
    quantizes, prefix values and graph inputs the segment reads (scalars among them:
    `is_scalar`)."""
    tail = _tail(gm)
    prefix = _host_prefix(gm, tail)
    seg, inputs = [], []
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr") or node in tail or node in prefix:
            continue
        if _is_head(node, prefix):
            inputs.append(node)
            continue
        _check_integer(node)
        for arg in node.all_input_nodes:
            if arg.op != "get_attr" and _outside(arg, prefix) and arg not in inputs:
                inputs.append(arg)
        seg.append(node)
    members = set(seg)
    outputs = [n for n in seg if any(u not in members for u in n.users)]
    if not seg:
        raise BackendError("the lowered graph has no integer ops to run in C")
    return seg, inputs, outputs


def segment_module(gm: fx.GraphModule, seg: list, inputs: list, outputs: list,
                   scalars: dict | None = None):
    """A GraphModule computing `outputs` from the tensor `inputs` with the segment's nodes;
    `scalars` (input node name -> value) are baked in as constants."""
    graph = fx.Graph()
    scalars = scalars or {}
    env = {node: (scalars[node.name] if node.name in scalars else graph.placeholder(node.name))
           for node in inputs}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            env[node] = graph.node_copy(node, lambda n: env[n])
    for node in seg:
        env[node] = graph.node_copy(node, lambda n: env[n])
    graph.output(tuple(env[n] for n in outputs))
    return fx.GraphModule(gm, graph)


def host_module(gm: fx.GraphModule, seg: list, inputs: list, outputs: list,
                npu: torch.nn.Module) -> fx.GraphModule:
    """`gm` with the segment replaced by one call of the submodule `npu` (inputs -> tuple)."""
    host = copy.deepcopy(gm)
    by_name = {n.name: n for n in host.graph.nodes}
    host.add_submodule("npu", npu)
    order = {n: i for i, n in enumerate(host.graph.nodes)}
    tensors = [n for n in inputs if not is_scalar(n)]
    anchor = max((by_name[n.name] for n in inputs), key=order.__getitem__)
    with host.graph.inserting_after(anchor):
        call = host.graph.call_module("npu", tuple(by_name[n.name] for n in tensors))
    for index, node in enumerate(outputs):
        with host.graph.inserting_after(call):
            item = host.graph.call_function(operator.getitem, (call, index))
        by_name[node.name].replace_all_uses_with(item)
    for node in reversed(seg):
        host.graph.erase_node(by_name[node.name])
    host.graph.eliminate_dead_code()
    host.graph.lint()
    host.recompile()
    return host
