"""ONNX forms of layout, indexing, dtype and size ops (on int8 and float values alike).

A symbolic size (`aten.sym_size.int`, the dynamic batch) is exported as a 1-element int64
tensor (`Shape` with start/end), so that size lists mixing ints and symbols concatenate
into a shape tensor and arithmetic on sizes is ordinary ONNX arithmetic.
"""
from __future__ import annotations

import operator

import torch

from .errors import BackendError
from .onnx_export_graph import onnx_dtype, rank_of, value_info
from .op_kinds import arg

aten = torch.ops.aten
INT64_MAX = 2 ** 63 - 1


def _dim(node, d: int) -> int:
    return d if d >= 0 else d + rank_of(node.args[0])


def identity(g, node):
    return g.add("Identity", [g.tensor(node.args[0])], node.name)


def reshape(g, node):
    return g.add("Reshape", [g.tensor(node.args[0]), g.sizes(node.args[1])], node.name)


def permute(g, node):
    rank = len(node.args[1])
    return g.add("Transpose", [g.tensor(node.args[0])], node.name,
                 perm=[d % rank for d in node.args[1]])


def transpose(g, node):
    rank = rank_of(node.args[0])
    perm = list(range(rank))
    a, b = node.args[1] % rank, node.args[2] % rank
    perm[a], perm[b] = perm[b], perm[a]
    return g.add("Transpose", [g.tensor(node.args[0])], node.name, perm=perm)


def t(g, node):
    if rank_of(node.args[0]) < 2:
        return identity(g, node)
    return g.add("Transpose", [g.tensor(node.args[0])], node.name, perm=[1, 0])


def _shape_slice(g, node, start: int, end: int | None) -> str:
    return g.add("Shape", [g.tensor(node.args[0])], f"{node.name}/shape", start=start, end=end)


def flatten(g, node):
    rank = max(rank_of(node.args[0]), 1)
    start, end = arg(node, 1, "start_dim", 0) % rank, arg(node, 2, "end_dim", -1) % rank
    parts = [_shape_slice(g, node, 0, start), g.ints([-1]), _shape_slice(g, node, end + 1, None)]
    shape = g.add("Concat", parts, f"{node.name}/target_shape", axis=0)
    return g.add("Reshape", [g.tensor(node.args[0]), shape], node.name)


def unflatten(g, node):
    dim = _dim(node, node.args[1])
    parts = [_shape_slice(g, node, 0, dim), g.sizes(node.args[2]),
             _shape_slice(g, node, dim + 1, None)]
    shape = g.add("Concat", parts, f"{node.name}/target_shape", axis=0)
    return g.add("Reshape", [g.tensor(node.args[0]), shape], node.name)


def squeeze(g, node):
    dims = arg(node, 1, "dim", None)
    _, shape = value_info(node.args[0])
    if dims is None:
        dims = [d for d, size in enumerate(shape)] if shape is not None else []
    dims = [dims] if isinstance(dims, int) else list(dims)
    if shape is not None:
        dims = [d for d in dims if shape[d] == 1]
        if not dims:
            return identity(g, node)
    axes = g.ints(dims, "c/axes") if dims else None
    return g.add("Squeeze", [g.tensor(node.args[0]), axes], node.name)


def unsqueeze(g, node):
    return g.add("Unsqueeze", [g.tensor(node.args[0]), g.ints([node.args[1]], "c/axes")],
                 node.name)


def expand(g, node):
    sizes = [1 if isinstance(s, int) and s == -1 else s for s in node.args[1]]
    return g.add("Expand", [g.tensor(node.args[0]), g.sizes(sizes)], node.name)


def slice_(g, node):
    dim, start = arg(node, 1, "dim", 0), arg(node, 2, "start", None)
    end, step = arg(node, 3, "end", None), arg(node, 4, "step", 1)
    start, end = 0 if start is None else start, INT64_MAX if end is None else min(end, INT64_MAX)
    return g.add("Slice", [g.tensor(node.args[0]), g.sizes([start]), g.sizes([end]),
                           g.ints([dim], "c/axes"), g.ints([step], "c/steps")], node.name)


def select(g, node):
    index = g.scalar(node.args[2])
    return g.add("Gather", [g.tensor(node.args[0]), index], node.name, axis=node.args[1])


def _target_dtype(node):
    for value in list(node.args[1:]) + list(node.kwargs.values()):
        if isinstance(value, torch.dtype):
            return value
    return None


def cast(g, node):
    dtype = _target_dtype(node)
    if dtype is None or dtype == value_info(node.args[0])[0]:
        return identity(g, node)
    return g.add("Cast", [g.tensor(node.args[0])], node.name, to=onnx_dtype(dtype, node))


def sym_size(g, node):
    d = _dim(node, node.args[1])
    return g.add("Shape", [g.tensor(node.args[0])], node.name, start=d, end=d + 1)


def arange(g, node):
    numbers = list(node.args) + [1] * (3 - len(node.args))
    start, end, step = ([0] + numbers[:2]) if len(node.args) == 1 else numbers[:3]
    dtype = node.kwargs.get("dtype") or (torch.int64 if all(
        not isinstance(v, float) for v in (start, end, step)) else torch.float32)
    like = torch.empty(0, dtype=dtype).numpy().dtype
    scalars = [g.scalar(v, like) for v in (start, end, step)]
    if dtype != torch.int64 and any(not isinstance(v, (int, float)) for v in (start, end, step)):
        raise BackendError("arange with a symbolic bound and a non-int64 dtype", node=node)
    return g.add("Range", scalars, node.name)


def index(g, node):
    """x[i0, i1, ...] with index tensors for the leading dims: GatherND of the broadcast,
    stacked indices."""
    x, indices = node.args[:2]
    if any(i is None for i in indices) or any(value_info(i)[0] == torch.bool for i in indices):
        raise BackendError("only integer index tensors on leading dims are exported", node=node)
    names = [g.tensor(i) for i in indices]
    if len(names) == 1:
        return g.add("Gather", [g.tensor(x), names[0]], node.name, axis=0)
    total = names[0]
    for name in names[1:]:
        total = g.add("Add", [total, name], f"{node.name}/broadcast")
    shape = g.add("Shape", [total], f"{node.name}/index_shape")
    axes = g.ints([-1], "c/axes")
    stacked = [g.add("Unsqueeze", [g.add("Expand", [n, shape], f"{node.name}/expand"), axes],
                     f"{node.name}/unsqueeze") for n in names]
    return g.add("GatherND", [g.tensor(x), g.add("Concat", stacked, f"{node.name}/stack",
                                                  axis=-1)], node.name)


def _split(g, node, dim: int, sizes: list[int]) -> list[str]:
    parts = g.add("Split", [g.tensor(node.args[0]), g.ints(sizes, "c/split")],
                  f"{node.name}/part", outputs=len(sizes), axis=dim)
    return [parts] if len(sizes) == 1 else parts


def _size_along(node, dim: int) -> int:
    _, shape = value_info(node.args[0])
    if shape is None:
        raise BackendError("the size of the split dimension is unknown", node=node)
    return shape[dim]


def unbind(g, node):
    """A list of ONNX names: Split into size-1 slices, each squeezed."""
    dim = _dim(node, arg(node, 1, "dim", 0))
    parts = _split(g, node, dim, [1] * _size_along(node, dim))
    axes = g.ints([dim], "c/axes")
    return [g.add("Squeeze", [p, axes], f"{node.name}/item") for p in parts]


def split(g, node):
    dim = _dim(node, arg(node, 2, "dim", 0))
    sizes = node.args[1]
    if isinstance(sizes, int):
        total = _size_along(node, dim)
        sizes = [min(sizes, total - start) for start in range(0, total, sizes)]
    return _split(g, node, dim, list(sizes))


def getitem(g, node):
    """An item of a list-valued op (unbind, split)."""
    items = g.env.get(node.args[0].name)
    if not isinstance(items, list):
        raise BackendError("getitem of a value that is not a list of tensors", node=node)
    return g.add("Identity", [items[node.args[1]]], node.name)


CONVERTERS = {
    aten.unbind.int: unbind, aten.split.Tensor: split, aten.split_with_sizes.default: split,
    operator.getitem: getitem,
    aten.view.default: reshape, aten.reshape.default: reshape, aten._unsafe_view.default: reshape,
    aten.permute.default: permute, aten.transpose.int: transpose, aten.t.default: t,
    aten.flatten.using_ints: flatten, aten.unflatten.int: unflatten,
    aten.squeeze.dim: squeeze, aten.squeeze.dims: squeeze, aten.squeeze.default: squeeze,
    aten.unsqueeze.default: unsqueeze, aten.expand.default: expand, aten.slice.Tensor: slice_,
    aten.select.int: select, aten.contiguous.default: identity, aten.clone.default: identity,
    aten.alias.default: identity, aten.detach.default: identity,
    aten.to.dtype: cast, aten.to.device: cast, aten.to.dtype_layout: cast,
    aten._to_copy.default: cast, aten.sym_size.int: sym_size, aten.arange.default: arange,
    aten.arange.start: arange, aten.arange.start_step: arange, aten.index.Tensor: index,
}
