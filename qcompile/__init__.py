"""qcompile: a quantizing compiler for PyTorch models."""
from __future__ import annotations

import os as _os

# In a source checkout, `passes/` and `backends/` sit beside this package; installed, they
# are its subpackages (see pyproject.toml). Let the checkout import them the same way.
_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "passes")) and \
        _os.path.isfile(_os.path.join(_ROOT, "passes", "__init__.py")):
    __path__.append(_ROOT)

from . import ops  # noqa: F401  (registers the qcompile:: torch ops)
from . import debug  # noqa: F401
from .api import compile
from .artifact import load_compiled as load
from .compiled import CompiledModel
from .context import PassContext
from .errors import (ArtifactError, BackendError, CalibrationError, CaptureError, InputError,
                     LoweringError, PipelineError, QCompileError, QCompileWarning, RecipeError,
                     TargetError, VerificationError)
from .facts import NodeFacts, QParams, facts_of, update_facts
from .pipeline import Pipeline
from .pipelines import default_pipeline
from .qat import QATModel, prepare_qat
from .recipes import RECIPES, QuantOptions, Recipe
from .registry import PassResult, list_passes, register_pass
from .targets import targets

__version__ = "0.1.0"

__all__ = [
    "compile", "load", "targets", "prepare_qat", "QATModel", "register_pass", "PassResult", "PassContext", "Pipeline",
    "default_pipeline", "list_passes", "CompiledModel", "QuantOptions", "Recipe", "RECIPES",
    "NodeFacts", "QParams", "facts_of", "update_facts", "QCompileError", "CaptureError",
    "PipelineError", "TargetError", "RecipeError", "CalibrationError", "VerificationError",
    "LoweringError", "BackendError", "ArtifactError", "InputError", "QCompileWarning",
]
