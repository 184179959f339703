"""The target registry: each target's pipeline, backend, and whether it runs on this machine."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

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

    @property
    def pipeline(self) -> str:
        return default_pipeline(self.name)

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


def _not_built(what: str) -> Callable[[], tuple[bool, str]]:
    return lambda: (False, f"{what} backend is not part of this version of qcompile")


TARGETS: dict[str, Target] = {
    "reference": Target("reference", "integer reference kernels in torch, the specification",
                        "qcompile.backends.reference", _always),
    "cpu-int8": Target("cpu-int8", "TVM-generated int8 kernels for this CPU",
                       "qcompile.backends.tvm.backend", _tvm_available),
    "npu-int8": Target("npu-int8", "integer-only C for NPU-like targets", None,
                       _not_built("the NPU C")),
    "cuda-int8": Target("cuda-int8", "CUDA engine from hand-written int8 kernels", None,
                        _not_built("the CUDA engine")),
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
