"""The result of a compile: call it like the model; read its report and graph."""
from __future__ import annotations

import torch.fx as fx

from .errors import InputError
from .inputs import as_tuple, check_inputs


class CompiledModel:
    """A compiled model. `cm(*inputs)` runs it on its target and returns torch tensors."""

    def __init__(self, graph: fx.GraphModule, runner, report, target: str, recipe,
                 input_specs: tuple):
        self._graph = graph
        self._runner = runner
        self.report = report
        self.target = target
        self.recipe = recipe
        self.input_specs = input_specs

    @property
    def graph(self) -> fx.GraphModule:
        """The final (lowered) fx.GraphModule."""
        return self._graph

    def __call__(self, *args):
        if len(args) == 1 and isinstance(args[0], (tuple, list)):
            args = as_tuple(args[0])
        check_inputs(args, self.input_specs, "compiled model input", error=InputError)
        return self._runner(*args)

    def profile(self, *args, runs: int = 5) -> list[dict]:
        """Time every kernel over `runs` runs of `args`: rows {function, node, calls, ms,
        share}, largest first; also kept in `report.kernel_times` (shown in the report)."""
        from .kernel_profile import profile_model
        if len(args) == 1 and isinstance(args[0], (tuple, list)):
            args = as_tuple(args[0])
        check_inputs(args, self.input_specs, "profile input", error=InputError)
        self.report.kernel_times = profile_model(self._runner, self._graph, args, runs=runs)
        return self.report.kernel_times

    def save(self, path: str) -> None:
        """Write one versioned, checksummed file: graph, weights, qparams, target, versions."""
        from .artifact import save_compiled
        save_compiled(self, path)

    def export_onnx(self, path: str) -> None:
        """Write the lowered graph to `path` as an ONNX QDQ model (opset 21, docs/onnx.md).

        Integer ops with an int8 output become DequantizeLinear -> float op ->
        QuantizeLinear with the graph's scales and zero points (int8 weights stay int8
        initializers, per-channel scales via `axis`); their int8 values may differ from this
        model's by one step where the integer requantize and ONNX's float rounding disagree.
        Integer ops with a float32 output use MatMulInteger/ConvInteger and match exactly.
        Float ops map to their ONNX ops. Needs `pip install onnx` (onnxruntime to run the
        file); an op with no ONNX mapping raises BackendError naming the node.
        """
        from .onnx_export import export_onnx
        export_onnx(self, path)

    def __repr__(self) -> str:
        return (f"CompiledModel(target={self.target!r}, recipe={self.recipe.name!r}, "
                f"inputs=[{', '.join(s.describe() for s in self.input_specs)}])")
