"""Assemble a Report from the final graph, the float snapshot and the pass records."""
from __future__ import annotations

from .layer_error import layer_sqnr
from .report import PassRow, Report, is_reported, node_row, totals_for


def build_report(graph, float_graph, records, ctx) -> Report:
    rows = [node_row(n) for n in graph.graph.nodes if is_reported(n)]
    if float_graph is not None and ctx.options.numerics:
        errors = layer_sqnr(graph, float_graph, ctx.example_inputs)
        for row in rows:
            row.sqnr_db = errors.get(row.name)
    passes = [PassRow(r.index, r.name, r.changed, r.seconds, r.sqnr_db, r.stats)
              for r in records]
    final_sqnr = records[-1].sqnr_db if records else None
    return Report(target=ctx.target, recipe=ctx.recipe.name, nodes=rows, passes=passes,
                  totals=totals_for(graph, float_graph), calibration=dict(ctx.calibration_summary),
                  diagnostics=list(ctx.diagnostics.messages), output_sqnr_db=final_sqnr)


def build_summary(runner) -> dict:
    """What the backend's build did, for the report: ISA path, cache hit, tuned shapes."""
    info = getattr(runner, "build_info", None) or {}
    summary = {k: info[k] for k in ("path", "cached") if k in info}
    if "tiles" in info:
        summary["tuned_gemm_shapes"] = len(info["tiles"])
    if "key" in info:
        summary["library_key"] = info["key"][:16]
    summary.update({k: info[k] for k in ("arch", "executor", "memory") if k in info})
    if "arena_bytes" in info:
        summary["arena"] = {k: info[k] for k in ("arena_bytes", "naive_activation_bytes",
                                                 "weight_bytes", "op_count", "c_build_seconds")
                            if k in info}
    if "fallbacks" in info:
        summary["fallbacks"] = [f"{node} ({op}): {reason}" for node, op, reason in info["fallbacks"]]
    return summary
