"""The tuning database: measured GEMM tiles per CPU, kept on disk between compiles.

One JSON file per CPU model and toolchain (`<cache root>/tvm/tuning/<cpu>-<versions>.json`):

    {"format": 1, "cpu": "...", "versions": {...},
     "records": {"avx512-vnni/int8/n384/k384": {"m": 256, "best": [6, 4],
                 "us": {"6x4": 101.2, "8x3": 97.5}}},
     "graphs": {"<hash of a graph's GEMM shapes>": {"trials": 24, "seconds": 51.3}}}

A record keeps every candidate measured for that shape (median microseconds at M rows), so a
larger budget later only measures what is missing. `graphs` counts the budget already spent
per graph: compiling the same model again with the same budget measures nothing. A file that is not valid JSON or not this
format is moved aside with a warning and the database starts empty: never used half-read.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

from qcompile.errors import QCompileWarning

FORMAT = 1


def tile_name(tile) -> str:
    return f"{tile[0]}x{tile[1]}"


def parse_tile(name: str) -> tuple[int, int]:
    mr, nv = name.split("x")
    return int(mr), int(nv)


def _valid(data) -> bool:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return False
    records = data.get("records")
    return isinstance(records, dict) and all(
        isinstance(r, dict) and isinstance(r.get("us"), dict) for r in records.values())


class TuningDatabase:
    """Measured tile times per GEMM shape for one CPU model and toolchain."""

    def __init__(self, root: Path | None, cpu: str, versions: dict):
        """root None: kept in memory only (caching disabled)."""
        label = hashlib.sha256(json.dumps([cpu, versions], sort_keys=True).encode()).hexdigest()
        self.path = None if root is None else Path(root) / "tvm" / "tuning" / f"{label[:24]}.json"
        self.cpu, self.versions = cpu, versions
        self.records: dict[str, dict] = {}
        self.graphs: dict[str, dict] = {}  # graph key -> tuning spent on it so far
        data = self._read()
        if data:
            self.records, self.graphs = data["records"], data.get("graphs", {})

    def _read(self) -> dict | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = None
        if _valid(data):
            return data
        aside = self.path.with_suffix(".corrupt")
        os.replace(self.path, aside)
        warnings.warn(f"qcompile: tuning database {self.path} is unreadable or of another "
                      f"format; moved to {aside.name}, tuning starts afresh", QCompileWarning,
                      stacklevel=3)
        return None

    def measured(self, key: str) -> dict[str, float]:
        """tile name -> median microseconds measured for `key` (empty if never tuned)."""
        return dict(self.records.get(key, {}).get("us", {}))

    def best(self, key: str) -> tuple[int, int] | None:
        times = {t: us for t, us in self.measured(key).items() if us is not None}
        return parse_tile(min(times, key=times.get)) if times else None

    def add(self, key: str, m: int, tile, microseconds: float | None) -> None:
        """Record one measurement; None marks a candidate that failed (never retried)."""
        record = self.records.setdefault(key, {"m": m, "us": {}})
        record["us"][tile_name(tile)] = None if microseconds is None else \
            round(float(microseconds), 3)
        best = self.best(key)
        record["best"] = list(best) if best else None

    def spent(self, graph: str) -> dict:
        """{"trials": n, "seconds": s} already spent tuning the graph with key `graph`."""
        return dict(self.graphs.get(graph, {"trials": 0, "seconds": 0.0}))

    def add_spent(self, graph: str, trials: int, seconds: float) -> None:
        spent = self.spent(graph)
        self.graphs[graph] = {"trials": spent["trials"] + trials,
                              "seconds": round(spent["seconds"] + seconds, 3)}

    def table(self) -> dict[str, list[int]]:
        """key -> best tile, for every shape measured so far."""
        return {key: list(self.best(key)) for key in sorted(self.records) if self.best(key)}

    def save(self) -> None:
        """Write atomically (a crash mid-write leaves the previous file intact)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "cpu": self.cpu, "versions": self.versions,
                "records": self.records, "graphs": self.graphs}
        fd, tmp = tempfile.mkstemp(suffix=".json", dir=self.path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)
