"""The pass manager: runs a pipeline with instruments around each pass. It is itself a pass."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx

from . import registry
from .dump import format_graph
from .errors import PipelineError, QCompileError, VerificationError
from .graph_run import flatten_outputs, record_tensor_facts
from .pipeline import Pipeline, PassSpec, coerce_options
from .registry import PassResult


@dataclass
class PassRecord:
    """What happened in one pass: for the report, the dumps and bisecting."""
    index: int
    name: str
    spec: str
    changed: bool
    seconds: float
    stats: dict = field(default_factory=dict)
    sqnr_db: float | None = None


class Instrument:
    """Hooks around passes. Subclasses override what they need."""

    def begin(self, gm: fx.GraphModule, ctx) -> None: ...

    def before_pass(self, spec: PassSpec, gm: fx.GraphModule, ctx) -> None: ...

    def after_pass(self, record: PassRecord, gm: fx.GraphModule, ctx, outputs: list) -> None: ...

    def end(self, gm: fx.GraphModule, ctx) -> None: ...


def _normalize(raw: Any, gm: fx.GraphModule) -> tuple[fx.GraphModule, dict]:
    if isinstance(raw, PassResult):
        return raw.graph_module, dict(raw.stats)
    if isinstance(raw, fx.GraphModule):
        return raw, {}
    if raw is None:
        return gm, {}
    raise PipelineError(f"a pass must return PassResult, a GraphModule or None, got "
                        f"{type(raw).__name__}")


class PassManager:
    """Runs `pipeline` over a graph module; `records` tells what each pass did."""

    def __init__(self, pipeline: Pipeline, instruments: list[Instrument] | None = None):
        self.pipeline = pipeline
        self.instruments = list(instruments or [])
        self.records: list[PassRecord] = []

    def __call__(self, gm: fx.GraphModule, ctx) -> PassResult:
        self.records = []
        self._refresh(gm, ctx, "capture")
        for inst in self.instruments:
            inst.begin(gm, ctx)
        for index, spec in enumerate(self.pipeline.specs, start=1):
            gm = self._run_one(index, spec, gm, ctx)
        for inst in self.instruments:
            inst.end(gm, ctx)
        changed = any(r.changed for r in self.records)
        return PassResult(gm, changed, {"passes": len(self.records)})

    def _run_one(self, index: int, spec: PassSpec, gm: fx.GraphModule, ctx) -> fx.GraphModule:
        info = registry.get_pass(spec.name)
        options = coerce_options(spec)
        before = format_graph(gm)
        ctx.current_pass = spec.name
        for inst in self.instruments:
            inst.before_pass(spec, gm, ctx)
        start = time.perf_counter()
        try:
            new_gm, stats = _normalize(info.run(gm, ctx, options), gm)
        except QCompileError as err:
            raise err.with_pass(spec.name)
        except Exception as err:
            raise PipelineError(f"pass failed with {type(err).__name__}: {err}",
                                pass_name=spec.name) from err
        seconds = time.perf_counter() - start
        new_gm.recompile()
        outputs = self._refresh(new_gm, ctx, spec.name)
        record = PassRecord(index, spec.name, str(spec), format_graph(new_gm) != before,
                            seconds, stats)
        self.records.append(record)
        for inst in self.instruments:
            inst.after_pass(record, new_gm, ctx, outputs)
        ctx.current_pass = ""
        return new_gm

    @staticmethod
    def _refresh(gm: fx.GraphModule, ctx, pass_name: str) -> list:
        """Lint and run the graph on the example inputs, refreshing dtype/shape facts."""
        try:
            gm.graph.lint()
        except Exception as err:
            raise VerificationError(f"graph is malformed after this pass: {err}",
                                    pass_name=pass_name) from err
        try:
            return flatten_outputs(record_tensor_facts(gm, ctx.example_inputs))
        except QCompileError as err:
            raise err.with_pass(pass_name)
        except Exception as err:
            raise VerificationError(f"graph no longer runs after this pass: "
                                    f"{type(err).__name__}: {err}", pass_name=pass_name) from err
