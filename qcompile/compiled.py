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

    def __repr__(self) -> str:
        return (f"CompiledModel(target={self.target!r}, recipe={self.recipe.name!r}, "
                f"inputs=[{', '.join(s.describe() for s in self.input_specs)}])")
