"""Calibration batches: read once from the user's iterable, replayable inside one compile.

Passes that need the data twice (SmoothQuant statistics, then ranges) iterate again and get
the same batches; only the model inputs are kept, never activations.
"""
from __future__ import annotations

from typing import Iterable, Iterator


class ReplayableBatches:
    def __init__(self, source: Iterable):
        self._source = source
        self._cache: list = []
        self._iterator: Iterator | None = None
        self._exhausted = isinstance(source, (list, tuple))
        if self._exhausted:
            self._cache = list(source)

    def __iter__(self):
        yield from self._cache
        if self._exhausted:
            return
        if self._iterator is None:
            self._iterator = iter(self._source)
        for batch in self._iterator:
            self._cache.append(batch)
            yield batch
        self._exhausted = True

    def __len__(self) -> int:
        return len(self._cache)
