"""Build and run exact int8 `qlinear` / `qlinear_f32` kernels generated with TVM.

    k = build_qlinear(w, x_zp, bias, multiplier, shift, out_zp, qmin, qmax)   # path="auto"
    y = k(x)            # int8 [..., K] -> int8 [..., N], bit-exact with reference.qlinear

Weights, column sums and per-channel constants are packed once here; the compiled code
depends only on the GemmSpec (path, N, K, tile, mode) and is cached, so layers of one shape
share it. Tensors cross into TVM through DLPack without copies.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

import torch

from . import cpu_features, tiles
from .gemm_layout import (GemmSpec, f32_params, int8_offsets, int8_params, needs_wide,
                          pack_weight)

ALIGN = 64  # TVM's generated code assumes 64-byte aligned tensor data


@lru_cache(maxsize=256)
def compiled(spec: GemmSpec):
    """The tvm runtime function for `spec` (compiled once per process)."""
    import tvm

    from .gemm_tir import kernel

    func = kernel(spec).with_attr("global_symbol", "qgemm")
    exe = tvm.compile(tvm.IRModule({"qgemm": func}), target=cpu_features.llvm_target(spec.path))
    return exe["qgemm"]


def resolve_path(path: str) -> str:
    """"auto" -> the best path this CPU runs; an explicit path is checked against the CPU."""
    if path == "auto":
        return cpu_features.choose_path()
    cpu_features.require(path)
    return path


def _tvm_tensor(array):
    import tvm

    if isinstance(array, torch.Tensor):
        return tvm.runtime.from_dlpack(array)
    return tvm.runtime.tensor(array, tvm.cpu())


def _aligned(x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    if x.data_ptr() % ALIGN:
        x = x.clone()
    return x


class GemmKernel:
    """A compiled kernel bound to one layer's packed weights and constants."""

    def __init__(self, spec: GemmSpec, wp, params: list):
        self.spec = spec
        self.func = compiled(spec)
        self.constants = [_tvm_tensor(wp)] + [_tvm_tensor(p) for p in params]
        self.out_dtype = torch.int8 if spec.mode == "int8" else torch.float32

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        if x.dtype != torch.int8 or x.dim() < 1 or x.shape[-1] != spec.k:
            raise ValueError(f"x must be int8 [..., {spec.k}], got {x.dtype} {list(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, spec.k)
        y = torch.empty((x2.shape[0], spec.n), dtype=self.out_dtype)
        if x2.shape[0]:
            self.func(_tvm_tensor(_aligned(x2)), *self.constants, _tvm_tensor(y))
        return y.reshape(*lead, spec.n)

    def __repr__(self) -> str:
        s = self.spec
        return f"GemmKernel({s.path}, N={s.n}, K={s.k}, {s.mode}, tile={s.mr}x{s.nv})"


def _spec(w: torch.Tensor, path: str, mode: str, tile, has_bias=True, wide=False) -> GemmSpec:
    if w.dtype != torch.int8 or w.dim() != 2:
        raise ValueError(f"w must be int8 [N, K], got {w.dtype} {list(w.shape)}")
    path, n, k = resolve_path(path), int(w.shape[0]), int(w.shape[1])
    mr, nv = tile or tiles.chosen_tile(path, n, k, mode) or (0, 0)
    return GemmSpec(path, n, k, mode, has_bias, wide, mr, nv)


def build_qlinear(w: torch.Tensor, x_zp: int, bias: Optional[torch.Tensor],
                  multiplier: torch.Tensor, shift: torch.Tensor, out_zp: int, qmin: int,
                  qmax: int, path: str = "auto", tile=None) -> GemmKernel:
    """Kernel for reference.qlinear with these weights and qparams (x is the only input)."""
    spec = _spec(w, path, "int8", tile)
    off = int8_offsets(w, x_zp, bias, spec)
    if needs_wide(off, spec):
        spec = _spec(w, path, "int8", tile, wide=True)
    params = int8_params(off, multiplier, shift, out_zp, qmin, qmax, spec)
    return GemmKernel(spec, pack_weight(w, spec), params)


def build_qlinear_f32(w: torch.Tensor, x_zp: int, bias: Optional[torch.Tensor],
                      scale: torch.Tensor, path: str = "auto", tile=None) -> GemmKernel:
    """Kernel for float_out.qlinear_f32: float32(acc) * scale[n] (+ bias[n]) in float32."""
    spec = _spec(w, path, "f32", tile, has_bias=bias is not None)
    return GemmKernel(spec, pack_weight(w, spec), f32_params(w, x_zp, bias, scale, spec))
