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

    def save(self, path: str) -> None:
        """Write one versioned, checksummed file: graph, weights, qparams, target, versions."""
        from .artifact import save_compiled
        save_compiled(self, path)

    def __repr__(self) -> str:
        return (f"CompiledModel(target={self.target!r}, recipe={self.recipe.name!r}, "
                f"inputs=[{', '.join(s.describe() for s in self.input_specs)}])")
