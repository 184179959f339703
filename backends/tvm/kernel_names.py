"""What the report says ran each node on cpu-int8: the op's TVM kernel, and for GEMMs the
register tile and whether tuning chose it."""
from __future__ import annotations

import torch.fx as fx

from qcompile.dump import op_name
from qcompile.kernels import record_kernels

from .gemm_layout import DEFAULT_TILE
from .tiles import tile_key
from .tune import gemm_shape


def kernel_name(gm: fx.GraphModule, node: fx.Node, path: str, table: dict) -> str:
    name = f"tvm-{path}:{op_name(node.target).split('.', 1)[1]}"
    shape = gemm_shape(gm, node)
    if shape is None:
        return name
    mode, n, k, _ = shape
    tuned = table.get(tile_key(path, n, k, mode))
    tile = tuned or DEFAULT_TILE[path]
    return f"{name} tile {tile[0]}x{tile[1]} {'tuned' if tuned else 'default'}"


def mark_kernels(gm: fx.GraphModule, backend: str, path: str, table: dict) -> None:
    record_kernels(gm, backend, lambda node: kernel_name(gm, node, path, table))
