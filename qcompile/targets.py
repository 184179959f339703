"""The target registry: each target's pipeline, backend, and whether it runs on this machine."""
from __future__ import annotations

import importlib
import dataclasses
import shutil
from dataclasses import dataclass
from typing import Any, Callable

from .errors import TargetError
from .pipelines import default_pipeline


@dataclass(frozen=True)
class TargetInfo:
    name: str
    description: str
    available: bool
    reason: str

    def __str__(self) -> str:
        state = "available" if self.available else f"unavailable: {self.reason}"
        return f"{self.name:10s} {state} ({self.description})"


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    backend_module: str | None
    availability: Callable[[], tuple[bool, str]]
    recipes: tuple[str, ...] | None = None            # None: every recipe
    forced_options: tuple[tuple[str, Any], ...] = ()  # options the target always runs with

    @property
    def pipeline(self) -> str:
        return default_pipeline(self.name)

    def fit(self, recipe):
        """`recipe` with this target's forced options; TargetError for a recipe it cannot run."""
        if self.recipes is not None and recipe.name not in self.recipes:
            raise TargetError(f"target '{self.name}' runs integer-only int8 recipes "
                              f"({', '.join(self.recipes)}); recipe '{recipe.name}' needs "
                              f"{recipe.weights} weights / {recipe.activations} activations")
        if not self.forced_options:
            return recipe
        options = dataclasses.replace(recipe.options, **dict(self.forced_options))
        return dataclasses.replace(recipe, options=options)

    def info(self) -> TargetInfo:
        ok, reason = self.availability()
        return TargetInfo(self.name, self.description, ok, reason)

    def backend(self):
        if self.backend_module is None:
            raise TargetError(f"target '{self.name}' has no backend in this version")
        return importlib.import_module(self.backend_module)


def _always() -> tuple[bool, str]:
    return True, ""


def _tvm_available() -> tuple[bool, str]:
    import importlib.util
    if importlib.util.find_spec("tvm") is None:
        return False, "apache-tvm is not installed (pip install 'qcompile[cpu]')"
    return True, ""


def _npu_available() -> tuple[bool, str]:
    ok, reason = _tvm_available()
    if not ok:
        return ok, reason
    if shutil.which("gcc") is None:
        return False, "gcc is not on PATH (the generated C is built and checked with gcc)"
    return True, ""


def _cuda_available() -> tuple[bool, str]:
    import importlib.util
    if importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.core") is None:
        return False, "the CUDA packages are not installed (pip install 'qcompile[cuda]')"
    return True, ""


TARGETS: dict[str, Target] = {
    "reference": Target("reference", "integer reference kernels in torch, the specification",
                        "qcompile.backends.reference", _always),
    "cpu-int8": Target("cpu-int8", "TVM-generated int8 kernels for this CPU",
                       "qcompile.backends.tvm.backend", _tvm_available),
    "npu-int8": Target("npu-int8", "integer-only C for NPU-like targets",
                       "qcompile.backends.npu.backend", _npu_available,
                       recipes=("w8a8", "w8a8-smoothquant"),
                       forced_options=(("integer_only", True),)),
    "cuda-int8": Target("cuda-int8", "CUDA engine from hand-written int8 kernels",
                        "qcompile.backends.cuda.backend", _cuda_available,
                        recipes=("w8a8", "w8a8-smoothquant")),
}


def get_target(name: str) -> Target:
    if not isinstance(name, str) or name not in TARGETS:
        raise TargetError(f"unknown target {name!r}; valid: {', '.join(TARGETS)}")
    target = TARGETS[name]
    ok, reason = target.availability()
    if not ok:
        raise TargetError(f"target '{name}' is not available here: {reason}")
    return target


def targets() -> list[TargetInfo]:
    """Each target, whether it is available on this machine, and why not."""
    return [t.info() for t in TARGETS.values()]
