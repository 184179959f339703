"""Reference backend: the lowered graph module itself, every qcompile op on its reference kernel.

It is the specification the other backends are compared with, so it adds nothing: it checks
the graph holds only ops it can run, names the kernel of each node, and returns a runner.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompile.dump import op_name
from qcompile.errors import BackendError
from qcompile.kernels import record_kernels
from qcompile.op_kinds import is_qcompile_op

BACKEND = "reference"


def _kernel_name(node: fx.Node) -> str:
    name = op_name(node.target)
    if is_qcompile_op(node):
        return f"reference:{name.split('.', 1)[1]}"
    return f"torch:{name}"


def _check_runnable(gm: fx.GraphModule) -> None:
    for node in gm.graph.nodes:
        if node.op == "call_module":
            raise BackendError("the lowered graph still contains a module call (an observer "
                               "left behind? run insert-qdq after calibrate)", node=node)
        if node.op == "call_function" and not callable(node.target):
            raise BackendError("node target is not callable", node=node)


class ReferenceRunner:
    """Runs the lowered graph module (eager torch plus qcompile reference kernels)."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm

    def __call__(self, *args):
        with torch.no_grad():
            return self.gm(*args)


def build(gm: fx.GraphModule, options=None, example_inputs=None) -> ReferenceRunner:
    """Check the lowered graph and record which kernel runs each compute node."""
    _check_runnable(gm)
    record_kernels(gm, BACKEND, _kernel_name)
    return ReferenceRunner(gm)
