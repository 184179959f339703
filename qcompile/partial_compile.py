"""Assemble a partially compiled model and its coverage report."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .errors import ArtifactError, CaptureError, QCompileError
from .partial import EagerPart, assemble, plan_parts, record_inputs


@dataclass
class PartialReport:
    """Coverage of a partial compile, each compiled part's report, each eager part's reason."""
    whole_model_error: str
    compiled: dict
    eager: list[EagerPart]
    parameter_share: float
    flop_share: float

    def to_dict(self) -> dict:
        return {"whole_model_error": self.whole_model_error,
                "compiled": {p: r.to_dict() for p, r in self.compiled.items()},
                "eager": [asdict(e) for e in self.eager],
                "parameter_share": self.parameter_share, "flop_share": self.flop_share}

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True, default=str)

    def __str__(self) -> str:
        lines = [f"qcompile partial compile: {len(self.compiled)} part(s) compiled, "
                 f"{len(self.eager)} left eager; {self.parameter_share:.1%} of parameters and "
                 f"{self.flop_share:.1%} of FLOPs compiled",
                 f"  whole model did not capture: {self.whole_model_error}"]
        for path, report in self.compiled.items():
            t = report.totals
            lines.append(f"  compiled {path}: {t['ops_quantized']} int8 ops, "
                         f"{t['ops_float']} float, output SQNR {report.output_sqnr_db}")
        for part in self.eager:
            where = f" at {part.source}" if part.source else ""
            lines.append(f"  eager    {part.path}: {part.reason}{where}")
        return "\n".join(lines) + "\n"


class PartialModel:
    """A model whose capturable submodules run compiled and the rest eager."""

    def __init__(self, module: torch.nn.Module, parts: dict, report: PartialReport):
        self.module, self.parts, self.report = module, parts, report

    @property
    def graph(self) -> dict:
        return {path: cm.graph for path, cm in self.parts.items()}

    def __call__(self, *args):
        with torch.no_grad():
            return self.module(*args)

    def save(self, path: str) -> None:
        raise ArtifactError("a partially compiled model cannot be saved as one artifact; save "
                            "each compiled part: model.parts[name].save(...)")


def _shares(model, args, paths: list[str]) -> tuple[float, float]:
    total = sum(p.numel() for p in model.parameters()) or 1
    params = sum(p.numel() for path in paths for p in model.get_submodule(path).parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*args)
    counts = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    root = type(model).__name__
    flops = sum(counts.get(f"{root}.{path}", 0) for path in paths)
    return params / total, flops / max(counter.get_total_flops(), 1)


def compile_partial(model, args: tuple, calibration_data, error: QCompileError, compile_fn,
                    dump_dir=None, **kwargs) -> PartialModel:
    plan = plan_parts(model, args)
    batches = list(calibration_data) if calibration_data is not None else [args]
    seen = record_inputs(model, plan.compiled, batches)
    examples = record_inputs(model, plan.compiled, [args])
    parts = {}
    for path in plan.compiled:
        part_dump = os.path.join(dump_dir, path) if dump_dir else None
        try:
            parts[path] = compile_fn(model.get_submodule(path), example_inputs=examples[path][0][0],
                                     calibration_data=[call[0] for call in seen[path]],
                                     dump_dir=part_dump, **kwargs)
        except QCompileError as err:
            plan.eager.append(EagerPart(path, f"compile failed: {err.message}", err.source))
    if not parts:
        eager = "; ".join(f"{e.path}: {e.reason}" for e in plan.eager[:5])
        eager = eager or "the model has no submodules"
        raise CaptureError(f"partial=True: no submodule could be compiled either ({eager}); "
                           f"the whole model failed with: {error.message}", source=error.source)
    param_share, flop_share = _shares(model, args, list(parts))
    report = PartialReport(error.message + (f" (at {error.source})" if error.source else ""),
                           {p: cm.report for p, cm in parts.items()}, plan.eager,
                           param_share, flop_share)
    return PartialModel(assemble(model, parts), parts, report)
