"""Static activation arena: buffer lifetimes from the call order, then offsets.

Every buffer lives over an inclusive interval of call steps [first, last]: an activation
from the call that writes it to the last call that reads it, a workspace during its one
call. Two buffers interfere when their intervals intersect (an edge of a networkx graph);
offsets are assigned greedily, largest buffer first, each at the lowest aligned offset
where it overlaps no interfering buffer already placed. A kernel's output never shares
bytes with its inputs (both are live at that step), so kernels need not be in-place safe.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from qcompile.errors import BackendError

ALIGN = 16


@dataclass(frozen=True)
class Buffer:
    """A buffer to place: name, bytes, first and last step it is live (inclusive)."""

    name: str
    size: int
    first: int
    last: int


@dataclass(frozen=True)
class Plan:
    """Offsets per buffer name and the arena size (bytes, a multiple of ALIGN)."""

    offsets: dict
    size: int
    naive: int


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def interference(buffers: list[Buffer]) -> nx.Graph:
    """Graph of buffers (by name) with an edge between any two live at a common step."""
    graph = nx.Graph()
    graph.add_nodes_from(b.name for b in buffers)
    ordered = sorted(buffers, key=lambda b: b.first)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1:]:
            if b.first > a.last:
                break
            graph.add_edge(a.name, b.name)
    return graph


def _lowest_offset(size: int, taken: list) -> int:
    """Lowest aligned offset where [offset, offset + size) misses every (start, end)."""
    offset = 0
    for start, end in sorted(taken):
        if offset + size <= start:
            break
        offset = max(offset, _aligned(end))
    return offset


def plan(buffers: list[Buffer], limit: int | None = None) -> Plan:
    """Place `buffers`; BackendError when the arena would exceed `limit` bytes."""
    names = [b.name for b in buffers]
    if len(set(names)) != len(names):
        raise BackendError("arena buffers must have distinct names")
    graph = interference(buffers)
    by_name = {b.name: b for b in buffers}
    offsets: dict = {}
    for buf in sorted(buffers, key=lambda b: (-b.size, b.first, b.name)):
        taken = [(offsets[n], offsets[n] + by_name[n].size)
                 for n in graph.neighbors(buf.name) if n in offsets]
        offsets[buf.name] = _lowest_offset(buf.size, taken)
    size = _aligned(max((offsets[b.name] + b.size for b in buffers), default=0))
    naive = sum(_aligned(b.size) for b in buffers)
    if limit is not None and size > limit:
        raise BackendError(f"the activation arena needs {size} bytes, more than "
                           f"arena_limit={limit} bytes (a naive layout would need {naive})")
    return Plan(offsets, size, naive)


def check(buffers: list[Buffer], result: Plan) -> None:
    """Raise if two buffers live at a common step share a byte (a planner bug)."""
    by_name = {b.name: b for b in buffers}
    for a, b in interference(buffers).edges:
        oa, ob = result.offsets[a], result.offsets[b]
        if oa < ob + by_name[b].size and ob < oa + by_name[a].size:
            raise BackendError(f"arena plan overlaps live buffers {a} and {b}")
