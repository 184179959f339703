"""What a pass sees besides the graph: target, recipe, inputs, calibration data, diagnostics."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable

from .errors import QCompileWarning
from .recipes import Recipe, resolve_recipe


@dataclass
class Diagnostics:
    """Warnings and notes collected during a compile; they end up in the report."""
    messages: list[tuple[str, str, str]] = field(default_factory=list)   # (level, pass, text)

    def warn(self, text: str, pass_name: str = "") -> None:
        self.messages.append(("warning", pass_name, text))
        warnings.warn(f"qcompile: {text}", QCompileWarning, stacklevel=3)

    def note(self, text: str, pass_name: str = "") -> None:
        self.messages.append(("note", pass_name, text))


@dataclass
class PassContext:
    """Shared state of one compile. Passes read it and record diagnostics; they keep no state."""
    target: str = "reference"
    recipe: Recipe = field(default_factory=lambda: resolve_recipe("w8a8"))
    example_inputs: tuple = ()
    calibration_data: Iterable | None = None
    input_specs: tuple = ()
    diagnostics: Diagnostics = field(default_factory=Diagnostics)
    current_pass: str = ""
    calibration_summary: dict[str, Any] = field(default_factory=dict)

    @property
    def options(self):
        return self.recipe.options

    def warn(self, text: str) -> None:
        self.diagnostics.warn(text, self.current_pass)

    def note(self, text: str) -> None:
        self.diagnostics.note(text, self.current_pass)
