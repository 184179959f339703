"""Which register tile each GEMM kernel uses: the path's default, or what tuning found best.

The tuner (`tune.py`) measures tile candidates per GEMM shape and keeps the winners in its
on-disk database; `backend.build` activates that table with `using(table)` while it lowers the
graph, and `qlinear._spec` asks `chosen_tile` for every layer it builds.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

_ACTIVE: ContextVar[dict | None] = ContextVar("qcompile_tvm_tiles", default=None)


def tile_key(path: str, n: int, k: int, mode: str) -> str:
    """The table key of one GEMM shape (M is symbolic, so it is not part of it)."""
    return f"{path}/{mode}/n{n}/k{k}"


def chosen_tile(path: str, n: int, k: int, mode: str) -> tuple | None:
    """(mr, nv) from the active table, or None for the path's default tile."""
    table = _ACTIVE.get()
    if not table:
        return None
    tile = table.get(tile_key(path, n, k, mode))
    return None if tile is None else (int(tile[0]), int(tile[1]))


@contextmanager
def using(table: dict | None):
    """Within this block, GEMM kernels take their tiles from `table` (key -> (mr, nv))."""
    token = _ACTIVE.set(dict(table or {}))
    try:
        yield
    finally:
        _ACTIVE.reset(token)
