"""Small graph-editing helpers shared by passes."""
from __future__ import annotations

import torch
import torch.fx as fx

from .facts import copy_facts


def unique_attr_name(gm: fx.GraphModule, base: str) -> str:
    base = "".join(c if c.isalnum() or c == "_" else "_" for c in base)
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


def add_constant(gm: fx.GraphModule, base: str, value: torch.Tensor, before: fx.Node) -> fx.Node:
    """Register `value` as a buffer of `gm` and return a get_attr node placed before `before`."""
    name = unique_attr_name(gm, base)
    gm.register_buffer(name, value.detach().clone().contiguous())
    with gm.graph.inserting_before(before):
        return gm.graph.get_attr(name)


def constant_value(gm: fx.GraphModule, node) -> torch.Tensor | None:
    """The tensor behind a get_attr node, or None."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    value = gm
    for part in node.target.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value if isinstance(value, torch.Tensor) else None


def replace_with(node: fx.Node, new: fx.Node, keep_facts: bool = False) -> None:
    """Send every user of `node` to `new`, then erase `node`."""
    if keep_facts:
        copy_facts(node, new)
    node.replace_all_uses_with(new)
    node.graph.erase_node(node)


def call_before(graph: fx.Graph, before: fx.Node, target, args, kwargs=None,
                origin: fx.Node | None = None, name: str | None = None) -> fx.Node:
    """Insert `target(*args)` before `before`, carrying the source location of `origin`."""
    with graph.inserting_before(before):
        new = graph.create_node("call_function", target, tuple(args), kwargs or {}, name=name)
    src = origin if origin is not None else before
    for key in ("stack_trace", "nn_module_stack", "source_fn_stack"):
        if key in src.meta:
            new.meta[key] = src.meta[key]
    return new


def single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def remove_unused_attributes(gm: fx.GraphModule) -> int:
    """Delete parameters and buffers no get_attr node reads. Returns how many."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    removed = 0
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name in used or any(u.startswith(name + ".") for u in used):
            continue
        owner_path, _, attr = name.rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        if attr in owner._parameters:
            del owner._parameters[attr]
        elif attr in owner._buffers:
            del owner._buffers[attr]
        removed += 1
    return removed
