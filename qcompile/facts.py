"""Typed per-node facts kept in `node.meta["qc"]`: the only place passes record what they know.

Every fact is a frozen dataclass; a node carries one `NodeFacts` and passes update it with
`update_facts(node, field=value)`. Nothing else is stored in node.meta by qcompile.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

META_KEY = "qc"


@dataclass(frozen=True)
class TensorInfo:
    """dtype and concrete shape of a value, as seen with the example inputs."""
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ValueRange:
    """A calibrated clipping range and how it was chosen."""
    lo: float
    hi: float
    method: str


@dataclass(frozen=True)
class QParams:
    """Per-tensor affine quantization: q = clamp(round(x / scale) + zero_point, qmin, qmax)."""
    scale: float
    zero_point: int
    qmin: int = -128
    qmax: int = 127
    dtype: str = "int8"


@dataclass(frozen=True)
class ChannelQParams:
    """Per-channel symmetric quantization of a weight (zero point 0)."""
    scales: tuple[float, ...]
    axis: int = 0
    qmin: int = -127
    qmax: int = 127
    dtype: str = "int8"


@dataclass(frozen=True)
class FusionGroup:
    """Nodes the target runs as one kernel: an anchor (conv, linear, add, ...) and what follows."""
    group_id: int
    anchor: str
    members: tuple[str, ...]
    activation: str | None = None


@dataclass(frozen=True)
class KernelChoice:
    """Which kernel runs a node, and on which backend."""
    name: str
    backend: str
    tuned: bool = False


@dataclass(frozen=True)
class NodeFacts:
    """Everything qcompile knows about one node."""
    tensor: TensorInfo | None = None
    observed: ValueRange | None = None
    qparams: QParams | None = None
    weight_qparams: ChannelQParams | None = None
    input_qparams: tuple[QParams | None, ...] = ()
    fusion: FusionGroup | None = None
    activation: str | None = None
    kernel: KernelChoice | None = None
    float_reason: str | None = None
    origin: str | None = None
    extra: tuple[tuple[str, str], ...] = field(default=())


def facts_of(node) -> NodeFacts:
    """The facts of `node` (an empty NodeFacts if none were recorded)."""
    value = node.meta.get(META_KEY)
    return value if isinstance(value, NodeFacts) else NodeFacts()


def update_facts(node, **changes) -> NodeFacts:
    """Replace some fields of the node's facts; returns the new facts."""
    new = replace(facts_of(node), **changes)
    node.meta[META_KEY] = new
    return new


def copy_facts(src, dst, **changes) -> NodeFacts:
    """Give `dst` the facts of `src` (with changes), e.g. when a pass replaces a node."""
    new = replace(facts_of(src), **changes)
    dst.meta[META_KEY] = new
    return new
