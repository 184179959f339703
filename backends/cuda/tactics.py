"""Tactic selection: which GEMM tile runs each shape, and the timing cache that remembers it.

On a GPU the builder times every candidate tile for each (M, N, K) and keeps the fastest;
the timing cache file (one JSON per architecture under the cache dir) makes the next build of
any model with those shapes reuse the choice. Without a GPU (a cross-build with
`options={"arch": ...}`, or emulation) a heuristic picks the tile and the entry is marked
"heuristic", so the first build on a real GPU times it and replaces it.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

TILES = ("64x64", "128x128")            # (block M x block N) of the gemm_int8 instantiations


@dataclass(frozen=True)
class Tactic:
    tile: str
    source: str                           # "timed" | "heuristic" | "cache"
    microseconds: float | None = None


def heuristic_tile(m: int, n: int, k: int) -> str:
    """The large tile only when both M and N fill several of its blocks (else too few blocks
    keep the SMs busy, and the small tile wastes less on ragged edges)."""
    return "128x128" if m >= 512 and n >= 512 else "64x64"


def _shape_key(shape: tuple[int, int, int]) -> str:
    return "x".join(str(d) for d in shape)


class TimingCache:
    """shape -> chosen tile (and its time) for one architecture, kept in a JSON file."""

    def __init__(self, directory: str | os.PathLike | None, arch: str):
        self.path = None if directory is None else Path(directory) / f"timing-{arch}.json"
        self.entries: dict[str, dict] = self._read()

    def _read(self) -> dict:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}                      # a damaged cache is a cold cache

    def lookup(self, shape) -> Tactic | None:
        entry = self.entries.get(_shape_key(shape))
        if entry is None:
            return None
        return Tactic(entry["tile"], "cache" if entry["timed"] else "heuristic",
                      entry.get("us"))

    def record(self, shape, tactic: Tactic) -> None:
        self.entries[_shape_key(shape)] = {"tile": tactic.tile, "us": tactic.microseconds,
                                           "timed": tactic.source == "timed"}

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.entries, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


def choose(shape: tuple[int, int, int], cache: TimingCache,
           timer: Callable[[str, tuple], float] | None = None) -> Tactic:
    """The tile for `shape`: a timed cache entry, else timed now (`timer(tile, shape)` gives
    microseconds; only on a GPU), else the heuristic."""
    cached = cache.lookup(shape)
    if cached is not None and (cached.source == "cache" or timer is None):
        return cached
    if timer is None:
        tactic = Tactic(heuristic_tile(*shape), "heuristic")
    else:
        times = {tile: timer(tile, shape) for tile in TILES}
        best = min(times, key=times.get)
        tactic = Tactic(best, "timed", times[best])
    cache.record(shape, tactic)
    return tactic
