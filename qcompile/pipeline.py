"""Text pipelines: "canonicalize,fuse,calibrate{method=percentile,p=99.99},insert-qdq".

`default` stands for the target's default pipeline; group names (like `canonicalize`)
expand to their passes. `Pipeline.insert_after("fuse", "my-pass")` edits a pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import registry
from .errors import PipelineError


@dataclass(frozen=True)
class PassSpec:
    name: str
    options: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        if not self.options:
            return self.name
        return self.name + "{" + ",".join(f"{k}={v}" for k, v in self.options) + "}"


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise PipelineError(f"unbalanced '}}' in pipeline '{text}'")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise PipelineError(f"unbalanced '{{' in pipeline '{text}'")
    parts.append("".join(current))
    return [p.strip() for p in parts]


def _parse_entry(entry: str) -> PassSpec:
    if not entry:
        raise PipelineError("empty entry in pipeline (two commas in a row?)")
    if "{" not in entry:
        return PassSpec(entry)
    if not entry.endswith("}"):
        raise PipelineError(f"pipeline entry '{entry}' must end with '}}'")
    name, body = entry[:-1].split("{", 1)
    options = []
    for item in _split_top_level(body) if body.strip() else []:
        if "=" not in item:
            raise PipelineError(f"option '{item}' of pass '{name}' needs the form key=value")
        key, value = item.split("=", 1)
        options.append((key.strip(), value.strip()))
    return PassSpec(name.strip(), tuple(options))


@dataclass(frozen=True)
class Pipeline:
    specs: tuple[PassSpec, ...]

    @staticmethod
    def parse(text: "str | Pipeline", default: str | None = None) -> "Pipeline":
        """Parse and expand `default` and groups into a flat list of passes."""
        if isinstance(text, Pipeline):
            return text
        if not isinstance(text, str) or not text.strip():
            raise PipelineError(f"a pipeline is a non-empty text, got {text!r}")
        return Pipeline(tuple(_expand(_split_top_level(text), default, depth=0)))

    def insert_after(self, anchor: str, text: str) -> "Pipeline":
        """A new pipeline with the passes of `text` right after the last pass named `anchor`."""
        names = [s.name for s in self.specs]
        if anchor not in names:
            raise PipelineError(f"cannot insert after '{anchor}': not in pipeline {self}")
        at = len(names) - names[::-1].index(anchor)
        added = Pipeline.parse(text).specs
        return Pipeline(self.specs[:at] + added + self.specs[at:])

    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def __str__(self) -> str:
        return ",".join(str(s) for s in self.specs)


def _expand(entries: list[str], default: str | None, depth: int) -> list[PassSpec]:
    if depth > 8:
        raise PipelineError("pipeline groups nest too deeply (a group that includes itself?)")
    out: list[PassSpec] = []
    for spec in map(_parse_entry, entries):
        if spec.name == "default":
            if default is None:
                raise PipelineError("'default' used where no target pipeline is known")
            out += _expand(_split_top_level(default), None, depth + 1)
            continue
        members = registry.group_members(spec.name)
        if members is not None:
            if spec.options:
                raise PipelineError(f"group '{spec.name}' takes no options; set them on its passes")
            out += _expand(list(members), default, depth + 1)
            continue
        registry.get_pass(spec.name)
        out.append(spec)
    return out


def coerce_options(spec: PassSpec) -> dict[str, Any]:
    """Turn a spec's text options into typed keyword arguments for its pass."""
    info = registry.get_pass(spec.name)
    kwargs = {}
    for key, text in spec.options:
        if key not in info.options:
            valid = ", ".join(sorted(info.options)) or "none"
            raise PipelineError(f"pass '{spec.name}' has no option '{key}' (options: {valid})")
        kwargs[key.replace("-", "_")] = _coerce(text, info.options[key], spec.name, key)
    return kwargs


def _coerce(text: str, default: Any, pass_name: str, key: str) -> Any:
    kind = type(default)
    if default is None:
        return text
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if kind in (int, float):
            return kind(text)
        return text
    except ValueError:
        raise PipelineError(f"option '{key}' of pass '{pass_name}' expects {kind.__name__}, "
                            f"got '{text}'") from None
