"""The numeric debugger: which pass broke it, which layers hurt most, which to keep float.

    result = qcompile.debug.bisect(model, (x,), calibration)        # first pass whose error jumps
    ranking = qcompile.debug.sensitivity(model, (x,), calibration)  # per layer, quantized alone
    keep = qcompile.debug.keep_float_for(model, (x,), calibration, min_sqnr_db=30)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .op_kinds import is_qcompile_op


@dataclass
class BisectResult:
    stages: list[tuple[str, float | None]]
    culprit: str | None
    drop_db: float

    def __str__(self) -> str:
        lines = [f"{name:24s} {'-' if db is None else f'{db:.1f}'} dB" for name, db in self.stages]
        verdict = (f"first pass whose output error jumps: {self.culprit} ({self.drop_db:.1f} dB)"
                   if self.culprit else "no pass lost more than the threshold")
        return "\n".join(lines + [verdict]) + "\n"


def _compile(model, example_inputs, calibration, **kwargs):
    from .api import compile as qcompile_compile
    options = dict(kwargs.pop("options", None) or {})
    options["numerics"] = True
    return qcompile_compile(model, example_inputs=example_inputs, calibration_data=calibration,
                            options=options, **kwargs)


def bisect(model, example_inputs, calibration_data=None, threshold_db: float = 3.0,
           **kwargs) -> BisectResult:
    """Compile pass by pass, comparing each stage's output with the float model; name the
    first pass after which the output SQNR falls by more than `threshold_db`."""
    report = _compile(model, example_inputs, calibration_data, **kwargs).report
    stages = [(p.name, p.sqnr_db) for p in report.passes]
    previous = math.inf
    for name, db in stages:
        current = math.inf if db is None else db
        drop = previous - current if math.isfinite(current) else 0.0
        if (not math.isfinite(previous) and math.isfinite(current)) or drop > threshold_db:
            return BisectResult(stages, name, previous - current)
        previous = current
    return BisectResult(stages, None, 0.0)


@dataclass
class LayerSensitivity:
    layer: str
    sqnr_db: float


@dataclass
class SensitivityReport:
    layers: list[LayerSensitivity] = field(default_factory=list)

    def __str__(self) -> str:
        rows = [f"{s.layer:40s} {s.sqnr_db:7.1f} dB" for s in self.layers]
        return "layers ranked by output SQNR when quantized alone (worst first)\n" + \
            "\n".join(rows) + "\n"


def quantized_layers(compiled) -> list[str]:
    """The int8 compute layers of a compiled model, as keep_float accepts them: the module
    path of the op (e.g. "encoder.layer.0.attention.self.query"), else its float node name."""
    from .facts import facts_of
    from .op_kinds import module_path
    names = []
    for node in compiled.graph.graph.nodes:
        if is_qcompile_op(node) and "quantize" not in str(node.target):
            name = module_path(node) or facts_of(node).origin
            if name:
                names.append(name)
    return list(dict.fromkeys(names))


def sensitivity(model, example_inputs, calibration_data=None, **kwargs) -> SensitivityReport:
    """For each quantized layer, the model-output SQNR when only that layer is quantized."""
    from .api import compile as qcompile_compile
    from .mixed_precision import ranked_layers
    calibration = list(calibration_data) if calibration_data is not None else None
    options = dict(kwargs.pop("options", None) or {})
    search = {**kwargs, "example_inputs": example_inputs, "calibration_data": calibration}
    rows = ranked_layers(model, example_inputs, calibration, qcompile_compile, search, options)
    return SensitivityReport([LayerSensitivity(r["layer"], r["sqnr_db"]) for r in rows])


def keep_float_for(model, example_inputs, calibration_data=None, min_sqnr_db: float = 30.0,
                   **kwargs) -> tuple[list[str], float]:
    """The fewest layers to keep float (most sensitive first) so that the model-output SQNR
    reaches `min_sqnr_db` (the `budget` option). Returns (layers, achieved SQNR)."""
    from .api import compile as qcompile_compile
    options = {**(kwargs.pop("options", None) or {}),
               "budget": {"metric": "sqnr", "min": min_sqnr_db}}
    compiled = qcompile_compile(model, example_inputs=example_inputs,
                                calibration_data=calibration_data, options=options, **kwargs)
    return compiled.report.budget["kept_float"], compiled.report.budget["score"]
