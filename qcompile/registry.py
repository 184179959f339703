"""The pass registry: built-in and user passes register the same way, by kebab-case name."""
from __future__ import annotations

import difflib
import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import PipelineError

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@dataclass(frozen=True)
class PassResult:
    """What a pass returns: the graph module, whether it changed, and counters for the report."""
    graph_module: Any
    modified: bool = True
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PassInfo:
    name: str
    fn: Callable
    options: dict[str, Any]      # option name -> default (keyword-only parameters of fn)
    doc: str

    def run(self, gm, ctx, options: dict[str, Any]):
        return self.fn(gm, ctx, **options)


_PASSES: dict[str, PassInfo] = {}
_GROUPS: dict[str, tuple[str, ...]] = {}


def _keyword_options(fn: Callable) -> dict[str, Any]:
    params = inspect.signature(fn).parameters.values()
    return {p.name.replace("_", "-"): p.default for p in params
            if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}


def register_pass(name: str, *, replace: bool = False):
    """Decorator: register `fn(gm, ctx, *, option=default, ...)` as the pass `name`.

    Options are the function's keyword-only parameters; pipelines set them as
    `name{option=value}` (underscores in Python names are dashes in pipelines).
    """
    if not _NAME.match(name):
        raise PipelineError(f"pass name '{name}' is not kebab-case (like 'fold-batchnorm')")

    def decorator(fn: Callable) -> Callable:
        if not replace and (name in _PASSES or name in _GROUPS):
            raise PipelineError(f"a pass or group named '{name}' is already registered")
        doc = " ".join((inspect.getdoc(fn) or "").split("\n\n")[0].split())
        _PASSES[name] = PassInfo(name, fn, _keyword_options(fn), doc)
        return fn
    return decorator


def register_group(name: str, members: tuple[str, ...]) -> None:
    """A named sequence of passes usable in pipeline text like a single pass."""
    _GROUPS[name] = tuple(members)


def unregister_pass(name: str) -> None:
    _PASSES.pop(name, None)


def _unknown(name: str) -> PipelineError:
    known = sorted(_PASSES) + sorted(_GROUPS)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return PipelineError(f"unknown pass '{name}'{hint} (known: {', '.join(known)})")


def get_pass(name: str) -> PassInfo:
    if name not in _PASSES:
        raise _unknown(name)
    return _PASSES[name]


def group_members(name: str) -> tuple[str, ...] | None:
    return _GROUPS.get(name)


def is_known(name: str) -> bool:
    return name in _PASSES or name in _GROUPS


def list_passes() -> list[PassInfo]:
    """Every registered pass, sorted by name."""
    return [_PASSES[n] for n in sorted(_PASSES)]


def list_groups() -> dict[str, tuple[str, ...]]:
    return dict(sorted(_GROUPS.items()))


def unknown_pass_error(name: str) -> PipelineError:
    return _unknown(name)
