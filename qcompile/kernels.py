"""Recording which kernel runs each compute node: shared by every backend's build."""
from __future__ import annotations

from typing import Callable

import torch.fx as fx

from .facts import KernelChoice, facts_of, update_facts
from .op_kinds import is_qcompile_op


def compute_nodes(gm: fx.GraphModule):
    """The nodes a backend picks a kernel for: qcompile ops and float islands."""
    return [n for n in gm.graph.nodes if n.op == "call_function"
            and (is_qcompile_op(n) or facts_of(n).float_reason)]


def record_kernels(gm: fx.GraphModule, backend: str, name_of: Callable[[fx.Node], str]) -> None:
    for node in compute_nodes(gm):
        update_facts(node, kernel=KernelChoice(name_of(node), backend))
