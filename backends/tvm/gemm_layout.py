"""Kernel geometry and the build-time packing of weights and per-channel constants.

A kernel computes Y[m, n] from X int8 [m, K] and W packed as
`wp[nblk, kq, (v * lanes + l) * group + g] = W[nblk * NB + v * lanes + l, kq * group + g]`
(zero outside W), NB = lanes * nv columns per block. One SIMD load of `lanes * group`
weights then feeds `lanes` int32 accumulators, `group` products each.

Zero points never reach the inner loop: with colsum[n] = sum_k W[n, k] and the kernel
accumulating S = sum_k (x + x_shift) * W (x_shift = 128 where the SIMD op wants unsigned
activations), the exact accumulator is
`acc = S - (x_shift + zp) * colsum[n] + bias[n] = S + off[n]`, off precomputed here; the
accumulators start at off[n] (int32), unless a huge bias could overflow a partial sum
(`needs_wide`): then off is added in int64 in the epilogue.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# path -> (int32 lanes per vector, k values per lane and step, packed weight dtype,
#          packed activation dtype, x_shift: what packing adds to x)
GEOMETRY = {
    "avx512-vnni": (16, 4, "int8", "uint8", 128),
    "avx2": (8, 2, "int16", "int16", 0),
    "generic": (16, 1, "int8", "int8", 0),
}
# default register tile (rows MR, vectors NV): accumulators MR * NV stay in registers
DEFAULT_TILE = {"avx512-vnni": (6, 4), "avx2": (6, 2), "generic": (4, 2)}
# register tiles worth timing per path, the default first. Each half of the accumulators
# ((MR + 1) // 2 rows * NV vectors) stays below gemm_tir.STACK_BYTES, and MR * NV accumulators
# + NV weight vectors + a broadcast fit the register file (32 zmm for VNNI, 16 ymm for AVX2,
# with one more for vpmaddwd's product). Wide, short tiles (2x8, 1x6) waste no padded rows
# when M is 1-2; tall ones reuse each weight load more at large M. Generic targets (SSE2: 16
# xmm, a 16-lane vector is 4 of them) spill any tile; its candidates trade spills for reuse.
TILE_CANDIDATES = {
    "avx512-vnni": [(6, 4), (8, 3), (5, 4), (10, 2), (4, 6), (4, 4), (2, 8)],
    "avx2": [(6, 2), (2, 4), (3, 3), (4, 2), (5, 2), (1, 6)],
    "generic": [(4, 2), (2, 2), (6, 1), (1, 4), (1, 2)],
}
MODES = ("int8", "f32")


@dataclass(frozen=True)
class GemmSpec:
    """Everything the generated code depends on; it is the kernel cache key."""

    path: str
    n: int
    k: int
    mode: str = "int8"  # "int8": integer requantize epilogue; "f32": float32 epilogue
    has_bias: bool = True  # f32 mode only: add bias[c] after the scale
    wide: bool = False  # int8 mode only: int64 column offsets (a huge bias), slower epilogue
    mr: int = 0  # 0 = the path's default tile
    nv: int = 0

    def __post_init__(self):
        if self.path not in GEOMETRY:
            raise ValueError(f"unknown path {self.path!r}; known: {', '.join(GEOMETRY)}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; known: {', '.join(MODES)}")
        if self.n < 1 or self.k < 1:
            raise ValueError(f"need N >= 1 and K >= 1, got N={self.n} K={self.k}")
        mr, nv = DEFAULT_TILE[self.path]
        object.__setattr__(self, "mr", self.mr or mr)
        object.__setattr__(self, "nv", self.nv or nv)

    @property
    def lanes(self) -> int:
        return GEOMETRY[self.path][0]

    @property
    def group(self) -> int:
        return GEOMETRY[self.path][1]

    @property
    def wdtype(self) -> str:
        return GEOMETRY[self.path][2]

    @property
    def xdtype(self) -> str:
        return GEOMETRY[self.path][3]

    @property
    def x_shift(self) -> int:
        return GEOMETRY[self.path][4]

    @property
    def max_partial(self) -> int:
        """A bound on |S| = |sum_k (x + x_shift) * W| (int8 W, int8 x)."""
        return self.k * (128 + self.x_shift) * 128

    @property
    def nb(self) -> int:
        return self.lanes * self.nv

    @property
    def nblk(self) -> int:
        return -(-self.n // self.nb)

    @property
    def kq(self) -> int:
        return -(-self.k // self.group)

    @property
    def kp(self) -> int:
        """K padded to the group size (the packed activations' row length)."""
        return self.kq * self.group

    @property
    def np(self) -> int:
        """N padded to whole column blocks: the length of per-channel constants."""
        return self.nblk * self.nb


def _as_numpy(t, dtype) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(t).astype(dtype))


def pack_weight(w: torch.Tensor, spec: GemmSpec) -> np.ndarray:
    """int8 W [N, K] -> the kernel's blocked layout (see module doc)."""
    w = _as_numpy(w, np.int64)
    if w.shape != (spec.n, spec.k):
        raise ValueError(f"weight must be [{spec.n}, {spec.k}], got {list(w.shape)}")
    padded = np.zeros((spec.np, spec.kp), np.int64)
    padded[: spec.n, : spec.k] = w
    blocks = padded.reshape(spec.nblk, spec.nb, spec.kq, spec.group).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(blocks.reshape(spec.nblk, spec.kq, spec.nb * spec.group)
                                .astype(spec.wdtype))


def _padded(values: np.ndarray, length: int, dtype, fill=0) -> np.ndarray:
    if values.ndim != 1 or values.shape[0] > length:
        raise ValueError(f"per-channel values must be 1-D of the output channels, "
                         f"got shape {list(values.shape)}")
    out = np.full(length, fill, dtype)
    out[: values.shape[0]] = values
    return out


def column_offsets(w: torch.Tensor, x_zp: int, spec: GemmSpec) -> np.ndarray:
    """int64 [N]: -(x_shift + x_zp) * colsum(W), the zero-point term of every column."""
    colsum = _as_numpy(w, np.int64).sum(axis=1)
    return -(spec.x_shift + int(x_zp)) * colsum


def int8_offsets(w, x_zp, bias, spec: GemmSpec) -> np.ndarray:
    """int64 [N]: bias - (x_shift + x_zp) * colsum(W), what S needs to become acc."""
    off = column_offsets(w, x_zp, spec)
    return off if bias is None else off + _as_numpy(bias, np.int64)


def needs_wide(off: np.ndarray, spec: GemmSpec) -> bool:
    """True if S + off could overflow int32 somewhere: then the epilogue adds in int64."""
    return int(np.abs(off).max(initial=0)) + spec.max_partial >= 2**31


def int8_params(off, multiplier, shift, out_zp, qmin, qmax, spec) -> list:
    """init int32, off int64 (the offset goes to one of them, the other is zero), multiplier,
    2^(n-1) and n int64 (all [Np]), and (out_zp, qmin, qmax) int32."""
    shift = _as_numpy(shift, np.int64)
    if shift.size and (shift.min() < 1 or shift.max() > 62):
        raise ValueError("shifts must be in [1, 62]")
    if not -128 <= qmin <= qmax <= 127:
        raise ValueError(f"need -128 <= qmin <= qmax <= 127, got qmin={qmin} qmax={qmax}")
    zeros = np.zeros(spec.np, np.int64)
    init, wide_off = (zeros, _padded(off, spec.np, np.int64)) if spec.wide else \
        (_padded(off, spec.np, np.int64), zeros)
    return [init.astype(np.int32), wide_off,
            _padded(_as_numpy(multiplier, np.int64), spec.np, np.int64),
            _padded(np.left_shift(np.int64(1), shift - 1), spec.np, np.int64),
            _padded(shift, spec.np, np.int64, fill=1),
            np.array([out_zp, qmin, qmax], np.int32)]


def f32_params(w, x_zp, bias, scale, spec) -> list:
    """init int32 (the column offset), scale and bias float32 (zero without bias), all [Np]."""
    off = column_offsets(w, x_zp, spec)
    if needs_wide(off, spec):
        raise ValueError(f"K={spec.k} too large for exact int32 accumulation")
    bias = np.zeros(spec.n, np.float32) if bias is None else _as_numpy(bias, np.float32)
    return [_padded(off, spec.np, np.int32),
            _padded(_as_numpy(scale, np.float32), spec.np, np.float32),
            _padded(bias, spec.np, np.float32)]
