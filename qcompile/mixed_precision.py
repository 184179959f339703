"""Accuracy-budget mixed precision: keep the fewest layers in float that meet a budget.

    cm = qcompile.compile(model, example_inputs=x, calibration_data=data,
                          options={"budget": {"metric": "cosine", "min": 0.995}})

`budget` is {"metric": "sqnr" | "cosine" | fn, "min": threshold, "data": [batches]}: the score
of the quantized model's outputs against the float model's, on `data` (default: the example
inputs), must reach `min`. A user metric `fn(float_outputs, quantized_outputs) -> float` is
"higher is better" (for a top-1 drop of at most 0.5 points return `-drop` with min -0.5).

1. Compile with every layer quantized; done if the budget is met.
2. Rank the quantized layers by sensitivity (model-output SQNR with only that layer quantized,
   worst first: one compile per layer).
3. Binary-search the shortest prefix of that ranking whose layers, kept float, meet the
   budget (log2(layers) compiles; the score is treated as monotone in the prefix).
The report lists the ranking, the kept layers and the scores that decided it.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .errors import RecipeError
from .graph_run import flatten_outputs
from .instruments import outputs_sqnr


def _cosine(want: list, got: list) -> float:
    a = torch.cat([t.detach().float().reshape(-1) for t in want])
    b = torch.cat([t.detach().float().reshape(-1) for t in got])
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def _sqnr(want: list, got: list) -> float:
    value = outputs_sqnr(want, got)
    return math.inf if value is None else value


METRICS: dict[str, Callable] = {"sqnr": _sqnr, "cosine": _cosine}


def check_budget(budget: Any) -> None:
    """RecipeError unless `budget` is None or a well-formed budget dict."""
    if budget is None:
        return
    if not isinstance(budget, dict) or "min" not in budget:
        raise RecipeError("budget expects {'metric': 'sqnr'|'cosine'|fn, 'min': threshold, "
                          f"'data': optional batches}}, got {budget!r}")
    metric = budget.get("metric", "sqnr")
    if not callable(metric) and metric not in METRICS:
        raise RecipeError(f"budget metric {metric!r} unknown; valid: {', '.join(METRICS)} "
                          "or a function(float_outputs, quantized_outputs) -> float")
    unknown = sorted(set(budget) - {"metric", "min", "data"})
    if unknown:
        raise RecipeError(f"budget: unknown key(s) {', '.join(unknown)}; valid: metric, min, data")


def _batches(budget: dict, example_inputs: tuple) -> list[tuple]:
    data = budget.get("data") or [example_inputs]
    return [b if isinstance(b, tuple) else (tuple(b) if isinstance(b, list) else (b,))
            for b in data]


def _score(model, compiled, batches, metric) -> float:
    fn = metric if callable(metric) else METRICS[metric]
    want, got = [], []
    with torch.no_grad():
        for batch in batches:
            want += flatten_outputs(model(*batch))
            got += flatten_outputs(compiled(*batch))
    return float(fn(want, got))


def _search_kwargs(kwargs: dict) -> dict:
    """Searching compiles run on the reference target (every backend computes its integers)
    and write no dumps; only the final compile uses the caller's target and dump_dir."""
    return {k: v for k, v in kwargs.items() if k not in ("dump_dir", "target", "options")}


def compile_within_budget(model, example_inputs, calibration, compile_fn, kwargs: dict):
    """compile_fn(model, **kwargs) with the fewest keep_float layers meeting the budget."""
    options = dict(kwargs.get("options") or {})
    budget = options.pop("budget")
    batches, metric = _batches(budget, example_inputs), budget.get("metric", "sqnr")
    search = {**_search_kwargs(kwargs), "example_inputs": example_inputs,
              "calibration_data": calibration, "target": "reference"}

    def score_with(keep: list[str]) -> float:
        opts = {**options, "keep_float": list(options.get("keep_float", ())) + keep}
        return _score(model, compile_fn(model, **{**search, "options": opts}), batches, metric)

    trail = [([], score_with([]))]
    ranking = []
    if trail[0][1] < budget["min"]:
        ranking = ranked_layers(model, example_inputs, calibration, compile_fn, search, options)
        trail += _shortest_prefix(score_with, [s["layer"] for s in ranking], budget["min"])
    kept, score = _decision(trail, budget["min"])
    final = {**options, "keep_float": list(options.get("keep_float", ())) + kept}
    compiled = compile_fn(model, **{**kwargs, "example_inputs": example_inputs,
                                    "calibration_data": calibration, "options": final})
    compiled.report.sensitivity = ranking
    compiled.report.budget = {
        "metric": str(getattr(metric, "__name__", metric)), "min": budget["min"],
        "met": score >= budget["min"], "score": score, "kept_float": kept,
        "tried": [{"kept_float": len(k), "score": s} for k, s in trail]}
    return compiled


def ranked_layers(model, example_inputs, calibration, compile_fn, search: dict,
                  options: dict) -> list[dict]:
    """Quantized layers, worst first, by model-output SQNR with only that layer quantized."""
    from .debug import quantized_layers
    layers = quantized_layers(compile_fn(model, **{**search, "options": options}))
    rows = []
    for layer in layers:
        others = [name for name in layers if name != layer]
        opts = {**options, "keep_float": list(options.get("keep_float", ())) + others}
        alone = compile_fn(model, **{**search, "options": opts})
        rows.append({"layer": layer, "sqnr_db": _score(model, alone, [example_inputs], "sqnr")})
    return sorted(rows, key=lambda r: r["sqnr_db"])


def _shortest_prefix(score_with, ranked: list[str], minimum: float) -> list:
    """Binary search over prefix lengths; every (kept layers, score) tried, in order."""
    trail = []
    low, high = 1, len(ranked)
    while low <= high:
        mid = (low + high) // 2
        trail.append((ranked[:mid], score_with(ranked[:mid])))
        if trail[-1][1] >= minimum:
            high = mid - 1
        else:
            low = mid + 1
    if ranked and not any(s >= minimum for _, s in trail) and len(ranked) not in \
            {len(k) for k, _ in trail}:
        trail.append((ranked, score_with(ranked)))
    return trail


def _decision(trail: list, minimum: float) -> tuple[list[str], float]:
    """The fewest kept layers that met the budget, else the most kept (best effort)."""
    met = [(k, s) for k, s in trail if s >= minimum]
    if met:
        return min(met, key=lambda t: len(t[0]))
    return max(trail, key=lambda t: (len(t[0]), t[1]))
