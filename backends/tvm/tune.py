"""Tuning of the cpu-int8 GEMM kernels: which register tile each layer shape runs fastest with.

    table = tune_graph(gm, path, db, trials=16, seconds=0, rpc=None, progress=None)

Workloads come from the lowered graph (qlinear / qconv2d with groups 1 and their float-output
forms; M from the example inputs' shapes recorded in the node facts), heaviest first, so a
small budget goes where the time is. For each shape the path's default tile is measured first,
then the other candidates, until the budget (candidates measured, or seconds) runs out. Every
measurement lands in the on-disk database, so the next compile measures nothing it has seen.
Tiles never change results: every candidate is the same exact kernel template.
"""
from __future__ import annotations

import hashlib
import math
import tempfile
import time

import torch.fx as fx

from qcompile.facts import facts_of
from qcompile.graph_edit import constant_value
from qcompile.op_kinds import arg, is_qcompile_op
from qcompile.progress import Progress

from .gemm_layout import TILE_CANDIDATES
from .tiles import tile_key
from .tune_measure import Workload, make_runner, measure
from .tuning_db import TuningDatabase

_GEMM_OPS = {"qlinear": ("int8", None), "qlinear_f32": ("f32", None),
             "qconv2d": ("int8", 12), "qconv2d_f32": ("f32", 8)}


def gemm_shape(gm: fx.GraphModule, node: fx.Node) -> tuple | None:
    """(mode, N, K, M) of a GEMM-lowered node, or None."""
    if not is_qcompile_op(node) or node.target._opname not in _GEMM_OPS:
        return None
    mode, groups_at = _GEMM_OPS[node.target._opname]
    if groups_at is not None and int(arg(node, groups_at, "groups", 1)) != 1:
        return None
    weight = constant_value(gm, node.args[2]) if isinstance(node.args[2], fx.Node) else None
    out = facts_of(node).tensor
    if weight is None or out is None or not out.shape:
        return None
    n, k = int(weight.shape[0]), math.prod(int(d) for d in weight.shape[1:])
    rows = math.prod(out.shape) // max(n, 1)
    return mode, n, k, rows


def gemm_workloads(gm: fx.GraphModule, path: str) -> list[Workload]:
    """The graph's distinct GEMM shapes (largest M per shape), heaviest first."""
    largest: dict[str, Workload] = {}
    for node in gm.graph.nodes:
        shape = gemm_shape(gm, node)
        if shape is None:
            continue
        mode, n, k, m = shape
        key = tile_key(path, n, k, mode)
        if key not in largest or m > largest[key].m:
            largest[key] = Workload(path, n, k, mode, max(m, 1))
    return sorted(largest.values(), key=lambda w: -w.ops)


def _candidates(path: str) -> list:
    """The path's tiles, its default first (gemm_layout keeps them in that order)."""
    return [tuple(t) for t in TILE_CANDIDATES[path]]


class _Budget:
    """What is left of the user's budget after what earlier compiles spent on this graph."""

    def __init__(self, trials: int, seconds: float, spent: dict):
        self.trials = max(trials - spent["trials"], 0) if trials else 0
        self.seconds = max(seconds - spent["seconds"], 0.0) if seconds else 0.0
        self.unlimited_trials = not trials and self.seconds > 0
        self.start, self.used = time.perf_counter(), 0

    def left(self) -> int:
        if self.seconds and self.elapsed() >= self.seconds:
            return 0
        return (1 << 30) if self.unlimited_trials else self.trials

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def spend(self, n: int) -> None:
        self.used += n
        if self.trials:
            self.trials = max(self.trials - n, 0)


def graph_key(workloads: list[Workload]) -> str:
    keys = sorted(f"{tile_key(w.path, w.n, w.k, w.mode)}/m{w.m}" for w in workloads)
    return hashlib.sha256("|".join(keys).encode()).hexdigest()[:24]


def tune_graph(gm: fx.GraphModule, path: str, db: TuningDatabase, trials: int = 0,
               seconds: float = 0.0, rpc: str | None = None, progress: bool | None = None) -> dict:
    """Measure missing tile candidates within the budget; returns the key -> tile table."""
    workloads = gemm_workloads(gm, path)
    graph = graph_key(workloads)
    budget = _Budget(trials, seconds, db.spent(graph))
    todo = [(w, [t for t in _candidates(path) if f"{t[0]}x{t[1]}" not in
                 db.measured(tile_key(w.path, w.n, w.k, w.mode))]) for w in workloads]
    todo = [(w, tiles) for w, tiles in todo if tiles]
    if todo and budget.left():
        _measure_all(todo, db, budget, rpc, progress)
        db.add_spent(graph, budget.used, budget.elapsed())
        db.save()
    keys = {tile_key(w.path, w.n, w.k, w.mode) for w in workloads}
    return {key: tile for key, tile in db.table().items() if key in keys}


def _measure_all(todo, db, budget, rpc, progress) -> None:
    runner = make_runner(rpc)
    total = min(sum(len(t) for _, t in todo), budget.left())
    with tempfile.TemporaryDirectory(prefix="qcompile-tune-") as directory, \
            Progress("tuning GEMM tiles", total=total, enabled=progress) as bar:
        for workload, tiles in todo:
            tiles = tiles[:budget.left()]
            if not tiles:
                break
            times = measure(runner, workload, tiles, directory)
            key = tile_key(workload.path, workload.n, workload.k, workload.mode)
            for tile in tiles:
                db.add(key, workload.m, tile, times[tile] * 1e6 if tile in times else None)
            budget.spend(len(tiles))
            bar.update(len(tiles))
            db.save()
