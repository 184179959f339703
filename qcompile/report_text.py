"""The report as a plain-text table."""
from __future__ import annotations


def _db(value) -> str:
    if value is None:
        return "-"
    if value == float("inf"):
        return "exact"
    return f"{value:.1f}"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return out


def _build_lines(build: dict) -> list[str]:
    if not build:
        return []
    parts = [f"{k}: {v}" for k, v in sorted(build.items())]
    return ["", "backend build: " + "; ".join(parts)]


def _kernel_lines(rows: list[dict], top: int = 20) -> list[str]:
    if not rows:
        return []
    shown = [[r["function"][:60], r["node"] or "-", str(r["calls"]), f"{r['ms']:.3f}",
              f"{100 * r['share']:.1f}"] for r in rows[:top]]
    out = ["", f"run time by kernel (total {sum(r['ms'] for r in rows):.3f} ms per run)"]
    out += _table(["kernel", "node", "calls", "ms", "share %"], shown)
    if len(rows) > top:
        rest = rows[top:]
        out.append(f"... {len(rest)} more kernels, {sum(r['ms'] for r in rest):.3f} ms")
    return out


def _sensitivity_lines(rows: list[dict], top: int = 15) -> list[str]:
    if not rows:
        return []
    shown = [[str(i + 1), r["layer"], _db(r["sqnr_db"])] for i, r in enumerate(rows[:top])]
    out = ["", "layer sensitivity: model-output SQNR with only that layer quantized (worst first)"]
    return out + _table(["rank", "layer", "SQNR dB"], shown)


def _budget_lines(budget: dict) -> list[str]:
    if not budget:
        return []
    verdict = "met" if budget["met"] else "NOT met (best effort: most layers float tried)"
    kept = ", ".join(budget["kept_float"]) or "none"
    tried = "; ".join(f"{t['kept_float']} float: {t['score']:.4g}" for t in budget["tried"])
    return ["", f"accuracy budget {budget['metric']} >= {budget['min']}: {verdict}, score "
                f"{budget['score']:.4g}", f"  kept float (most sensitive first): {kept}",
            f"  tried: {tried}"]


def render(report) -> str:
    t = report.totals
    lines = [f"qcompile report: target={report.target} recipe={report.recipe}",
             f"  ops quantized: {t['ops_quantized']}   ops left float: {t['ops_float']}   "
             f"weights: {t['weight_bytes_before']} -> {t['weight_bytes_after']} bytes   "
             f"output SQNR: {_db(report.output_sqnr_db)} dB"]
    if report.calibration:
        c = report.calibration
        lines.append(f"  calibration: {c.get('method')} over {c.get('batches')} batch(es), "
                     f"{c.get('observed_values')} observed values")
    lines.append("")
    rows = [[r.name, r.op, r.inputs, r.output, r.kernel or "-", _db(r.sqnr_db),
             r.float_reason or ""] for r in report.nodes]
    lines += _table(["node", "op", "in", "out", "kernel", "SQNR dB", "float island reason"], rows)
    lines.append("")
    prow = [[str(p.index), p.name, "yes" if p.changed else "no", f"{p.seconds * 1000:.1f}",
             _db(p.sqnr_db)] for p in report.passes]
    lines += _table(["#", "pass", "changed", "ms", "output SQNR dB"], prow)
    lines += _build_lines(report.build) + _kernel_lines(report.kernel_times)
    lines += _sensitivity_lines(report.sensitivity) + _budget_lines(report.budget)
    for level, pass_name, text in report.diagnostics:
        lines.append(f"{level}: [{pass_name or 'compile'}] {text}")
    return "\n".join(lines) + "\n"
