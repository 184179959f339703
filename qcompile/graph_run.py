"""Run a graph module node by node, recording each value's dtype and shape (and values)."""
from __future__ import annotations

import torch
import torch.fx as fx

from .facts import TensorInfo, update_facts

DTYPE_NAMES = {
    torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64",
    torch.int8: "i8", torch.uint8: "u8", torch.int16: "i16", torch.int32: "i32",
    torch.int64: "i64", torch.bool: "bool", torch.float8_e4m3fn: "f8e4m3",
    torch.float8_e5m2: "f8e5m2",
}


def tensor_info(value) -> TensorInfo | None:
    if isinstance(value, torch.Tensor):
        return TensorInfo(DTYPE_NAMES.get(value.dtype, str(value.dtype)), tuple(value.shape))
    return None


class RecordingInterpreter(fx.Interpreter):
    """Interprets the graph; keeps each node's TensorInfo and, optionally, its value."""

    def __init__(self, gm: fx.GraphModule, keep_values: bool = False):
        super().__init__(gm, garbage_collect_values=not keep_values)
        self.infos: dict[str, TensorInfo] = {}
        self.values: dict[str, torch.Tensor] = {}
        self.keep_values = keep_values

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        info = tensor_info(result)
        if info is not None:
            self.infos[n.name] = info
            if self.keep_values:
                self.values[n.name] = result.detach()
        return result


def flat_inputs(gm: fx.GraphModule, args: tuple) -> list:
    """The graph's placeholder values for user-level `args` (pytree-flattened like export)."""
    codegen = gm.graph._codegen
    if hasattr(codegen, "process_inputs"):
        return list(codegen.process_inputs(*args))
    return list(args)


def run_recording(gm: fx.GraphModule, args: tuple, keep_values: bool = False):
    """Run `gm` on user-level `args`; returns (flat outputs, interpreter)."""
    interp = RecordingInterpreter(gm, keep_values=keep_values)
    with torch.no_grad():
        out = interp.run(*flat_inputs(gm, args))
    return out, interp


def record_tensor_facts(gm: fx.GraphModule, args: tuple) -> list:
    """Run once and store every node's TensorInfo in its facts. Returns the flat outputs."""
    out, interp = run_recording(gm, args)
    for node in gm.graph.nodes:
        info = interp.infos.get(node.name)
        if info is not None:
            update_facts(node, tensor=info)
    return out


def flatten_outputs(out) -> list[torch.Tensor]:
    leaves, _ = torch.utils._pytree.tree_flatten(out)
    return [x for x in leaves if isinstance(x, torch.Tensor)]
