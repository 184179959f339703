"""A small progress line for long work (calibration, tuning), shown only on a terminal."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, description: str, total: int | None = None, enabled: bool | None = None,
                 stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled if enabled is not None else self.stream.isatty()
        self.description = description
        self.total = total
        self.count = 0
        self.start = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.count += n
        if self.enabled:
            total = f"/{self.total}" if self.total else ""
            rate = self.count / max(time.perf_counter() - self.start, 1e-9)
            self.stream.write(f"\r{self.description}: {self.count}{total} ({rate:.1f}/s)")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write(f"\r{self.description}: {self.count} done in "
                              f"{time.perf_counter() - self.start:.1f}s\n")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
