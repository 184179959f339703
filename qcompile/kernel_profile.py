"""Where the run time goes: per kernel (a backend's compiled function) calls, time and share.

A backend runner that can time its kernels offers `profile(*inputs, runs=N)` returning
`{function: {"calls": c, "seconds": s}}` per run. `kernel_rows` turns that into report rows,
largest first, naming the graph node a function computes where its name says so
(`gemm_<node>`), and folding the VM's own bookkeeping calls into one row.
"""
from __future__ import annotations

BOOKKEEPING_PREFIX = "vm.builtin."
BOOKKEEPING_ROW = "(vm bookkeeping: allocation, shapes, reshapes)"


def _node_for(function: str, node_names: set[str]) -> str:
    for prefix in ("gemm_", "dw_"):
        if function.startswith(prefix) and function[len(prefix):] in node_names:
            return function[len(prefix):]
    return ""


def kernel_rows(timings: dict[str, dict], node_names: set[str]) -> list[dict]:
    """Report rows {function, node, calls, ms, share} sorted by time, shares summing to 1."""
    merged: dict[str, list] = {}
    for function, t in timings.items():
        name = BOOKKEEPING_ROW if function.startswith(BOOKKEEPING_PREFIX) else function
        entry = merged.setdefault(name, [0, 0.0])
        entry[0] += int(t["calls"])
        entry[1] += float(t["seconds"])
    total = sum(s for _, s in merged.values()) or 1.0
    rows = [{"function": name, "node": _node_for(name, node_names), "calls": calls,
             "ms": round(secs * 1e3, 4), "share": round(secs / total, 4)}
            for name, (calls, secs) in merged.items()]
    return sorted(rows, key=lambda r: -r["ms"])


def profile_model(runner, graph, args: tuple, runs: int = 5) -> list[dict]:
    """Time every kernel of `runner` over `runs` runs of `args`; rows for the report."""
    from .errors import BackendError
    if not hasattr(runner, "profile"):
        raise BackendError("this target's runner cannot time its kernels")
    names = {n.name for n in graph.graph.nodes}
    return kernel_rows(runner.profile(*args, runs=runs), names)
