"""compile(..., partial=True): compile every submodule that captures, leave the rest eager.

The model is run on the example inputs to learn what each submodule receives; submodules are
tried top-down (a part that captures is compiled whole, one that does not is split into its
children); each compiled part is calibrated on the inputs it sees while the float model runs
the calibration data. Inputs of the compiled parts are kept in memory during calibration.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from .capture import capture
from .errors import CaptureError, InputError


@dataclass
class EagerPart:
    path: str
    reason: str
    source: str | None


@dataclass
class PartialPlan:
    compiled: list[str] = field(default_factory=list)
    eager: list[EagerPart] = field(default_factory=list)


def record_inputs(model: torch.nn.Module, paths: list[str], batches) -> dict[str, list[tuple]]:
    """Positional inputs each submodule in `paths` receives, one tuple per call."""
    seen: dict[str, list[tuple]] = {p: [] for p in paths}
    handles = []
    for path in paths:
        def hook(module, args, kwargs, path=path):
            seen[path].append((tuple(a.detach() if torch.is_tensor(a) else a for a in args),
                               dict(kwargs)))
        handles.append(model.get_submodule(path).register_forward_pre_hook(hook,
                                                                           with_kwargs=True))
    try:
        with torch.no_grad():
            for batch in batches:
                model(*(batch if isinstance(batch, (tuple, list)) else (batch,)))
    finally:
        for h in handles:
            h.remove()
    return seen


def _try_capture(module, calls) -> CaptureError | None:
    if not calls:
        return CaptureError("never called with the example inputs")
    args, kwargs = calls[0]
    if kwargs or not all(torch.is_tensor(a) for a in args):
        return CaptureError("called with keyword or non-tensor arguments")
    try:
        capture(module, args)
    except CaptureError as err:
        return err
    return None


def plan_parts(model: torch.nn.Module, example_inputs: tuple) -> PartialPlan:
    """Top-down: the largest submodules that capture; the rest, with their capture errors."""
    plan = PartialPlan()
    names = [n for n, _ in model.named_modules() if n]
    calls = record_inputs(model, names, [example_inputs])
    pending = [n for n, _ in model.named_children()]
    while pending:
        path = pending.pop(0)
        module = model.get_submodule(path)
        error = _try_capture(module, calls.get(path, []))
        if error is None:
            plan.compiled.append(path)
            continue
        children = [f"{path}.{n}" for n, _ in module.named_children()]
        if children:
            pending[:0] = children
        else:
            plan.eager.append(EagerPart(path, error.message, error.source))
    return plan


class CompiledPart(torch.nn.Module):
    """Stands in for a submodule: runs its compiled form, or the original when the inputs
    don't fit what it was compiled for (a shared module called with other shapes)."""

    def __init__(self, compiled, original: torch.nn.Module):
        super().__init__()
        self.compiled = compiled
        self.original = original
        self.fallbacks = 0

    def forward(self, *args):
        try:
            return self.compiled(*args)
        except InputError:
            self.fallbacks += 1
            return self.original(*args)


def assemble(model: torch.nn.Module, parts: dict) -> torch.nn.Module:
    """A copy of `model` whose compiled submodules are replaced by CompiledPart."""
    result = copy.deepcopy(model)
    for path, compiled in parts.items():
        parent_path, _, name = path.rpartition(".")
        parent = result.get_submodule(parent_path) if parent_path else result
        setattr(parent, name, CompiledPart(compiled, getattr(parent, name)))
    return result
