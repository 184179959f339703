"""Export a compiled model's lowered graph as an ONNX QDQ model (`cm.export_onnx(path)`).

The fx graph is walked node by node and written with the `onnx` helper API:

- `qcompile::` integer ops with an int8 output become the standard QDQ pattern: int8
  weights as initializers behind DequantizeLinear (per channel via `axis`), activations
  through QuantizeLinear/DequantizeLinear with the graph's scales and zero points, and the
  float ONNX op between them (onnx_export_qops.py);
- integer ops with a float32 output (and the dynamic linear) use MatMulInteger /
  ConvInteger, which match the reference exactly (onnx_export_exact.py);
- weight-only int4 and fp16/bf16 ops: onnx_export_weight_only.py;
- float ATen ops map to their ONNX ops (onnx_export_aten.py, onnx_export_layout.py).

An op with no mapping raises BackendError naming the node and the op. `onnx` is imported
only here, when an export is asked for.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from .errors import BackendError, QCompileError

OPSET = 21
INSTALL_HINT = "pip install onnx onnxruntime"


def require_onnx():
    """The onnx module, or a BackendError that says how to install it."""
    try:
        import onnx
    except ImportError as err:
        raise BackendError(f"ONNX export needs the onnx package ({err}); install it with "
                           f"`{INSTALL_HINT}`") from None
    return onnx


def converters() -> dict:
    """Every exportable call target -> its converter `fn(graph, node) -> onnx name`."""
    from . import (onnx_export_aten, onnx_export_exact, onnx_export_layout, onnx_export_qops,
                   onnx_export_weight_only)
    table = {}
    for module in (onnx_export_aten, onnx_export_layout, onnx_export_qops, onnx_export_exact,
                   onnx_export_weight_only):
        table.update(module.CONVERTERS)
    return table


def convert_node(g, node: fx.Node, table: dict) -> None:
    """Export one call node; its ONNX output is recorded under the node's name."""
    from .dump import op_name
    convert = table.get(node.target)
    if convert is None:
        raise BackendError(f"no ONNX mapping for op {op_name(node.target)}", node=node)
    try:
        g.env[node.name] = convert(g, node)
    except QCompileError:
        raise
    except Exception as err:  # unexpected arguments: name the node, not a stack trace
        raise BackendError(f"cannot export {op_name(node.target)} to ONNX: "
                           f"{type(err).__name__}: {err}", node=node) from err


def graph_inputs(g, gm: fx.GraphModule, input_specs) -> list:
    """Graph inputs from the placeholders: dtype from the compiled input specs, a named
    dimension where the size may vary."""
    from onnx import helper

    from .onnx_export_graph import onnx_dtype, value_info
    placeholders = list(gm.graph.find_nodes(op="placeholder"))
    specs = list(input_specs)
    if len(specs) != len(placeholders):
        specs = [None] * len(placeholders)
    inputs = []
    for node, spec in zip(placeholders, specs):
        dtype, shape = (spec.dtype, spec.shape) if spec is not None else value_info(node)
        if dtype is None:
            raise BackendError("graph input with unknown dtype", node=node)
        dims = None if shape is None else [f"{node.name}_dim{i}" if d is None else d
                                           for i, d in enumerate(shape)]
        g.env[node.name] = g.fresh(node.name)
        inputs.append(helper.make_tensor_value_info(g.env[node.name], onnx_dtype(dtype), dims))
    return inputs


def graph_outputs(g, gm: fx.GraphModule) -> list:
    """One ONNX output per flat fx output, named output_0, output_1, ... (rank known,
    sizes left to the runtime)."""
    from onnx import helper

    from .onnx_export_graph import onnx_dtype, value_info
    out_node = next(iter(gm.graph.find_nodes(op="output")))
    values = out_node.args[0]
    values = list(values) if isinstance(values, (tuple, list)) else [values]
    outputs = []
    for i, value in enumerate(values):
        if not isinstance(value, fx.Node):
            raise BackendError(f"output {i} is not a tensor ({value!r})", node=out_node)
        dtype, shape = value_info(value)
        dims = None if shape is None else [None] * len(shape)
        name = g.add("Identity", [g.tensor(value)], f"output_{i}")
        outputs.append(helper.make_tensor_value_info(name, onnx_dtype(dtype or torch.float32),
                                                     dims))
    return outputs


def build_model(gm: fx.GraphModule, input_specs=(), opset: int = OPSET):
    """The ONNX ModelProto of a lowered graph (checked with onnx.checker)."""
    onnx = require_onnx()
    from .onnx_export_graph import OnnxGraph
    g, table = OnnxGraph(gm), converters()
    inputs = graph_inputs(g, gm, input_specs)
    for node in gm.graph.nodes:
        if node.op == "call_function":
            convert_node(g, node, table)
        elif node.op == "call_module":
            raise BackendError("cannot export a graph that calls submodules", node=node)
    model = g.model(inputs, graph_outputs(g, gm), opset)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise BackendError(f"the exported ONNX model does not validate: {err}") from None
    return model


def export_onnx(cm, path: str, opset: int = OPSET) -> None:
    """Write `cm` (a CompiledModel) to `path` as an ONNX QDQ model."""
    onnx = require_onnx()
    model = build_model(cm.graph, cm.input_specs, opset)
    onnx.save(model, str(path))
