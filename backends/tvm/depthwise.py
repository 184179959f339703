"""Depthwise int8 conv2d (groups == C_in == C_out) as a hand-written TVMScript kernel.

Layout: x int8 NHWC [n, H, W, C] (n symbolic), y NHWC [n, OH, OW, C], weights [KH * KW, C];
channels sit in the vector lanes. One parallel task per output row (n, oh); in it, per
channel block of one register width, the output columns run in register tiles of PIX
pixels, whose int32 accumulators start at the bias; every tap adds (x - x_zp) * w (`_madd`).

Padding: the reference pads with x_zp, and a padded tap adds (x_zp - x_zp) * w = 0, so
out-of-image taps are skipped: one test per (row, kh); the interior columns (all KW taps
inside) run without tests, and the few border columns are unrolled with their column known
at build time, so their tests fold away. The epilogues are the GEMM kernels' (integer
requantize, or float32(acc) * scale (+ bias) with two roundings).

In Relax, x arrives NCHW, usually as `permute_dims(nhwc, [0, 3, 1, 2])` of the previous
im2col GEMM's rows: the kernel reads that NHWC tensor instead (the pipeline drops the unused
transpose), and its own NHWC output goes back through a transpose that FuseOps fuses into the
next conv's im2col.
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np
import torch
from tvm.script import tirx as T

from .gemm_tir import _requant, _scale_bias_f32, _scale_f32
from .relax_embed import as_nhwc

LANES = {"avx512-vnni": 16, "avx2": 8, "generic": 4}
PIX = 8  # output columns per register tile (PIX * LANES * 4 bytes < 1024: stack, registers)


@dataclasses.dataclass(frozen=True)
class DepthwiseSpec:
    """Everything the compiled code depends on (the layer's constants are arguments)."""
    path: str
    c: int
    h: int
    w: int
    kernel: tuple       # (KH, KW); stride, padding, dilation: (along H, along W)
    stride: tuple
    padding: tuple
    dilation: tuple
    mode: str = "int8"  # "int8" (requantize) or "f32"
    has_bias: bool = True
    wide: bool = False  # int8: the bias may not fit the int32 accumulator: added in int64

    def out_size(self, axis: int) -> int:
        span = self.dilation[axis] * (self.kernel[axis] - 1) + 1
        return ((self.h, self.w)[axis] + 2 * self.padding[axis] - span) // self.stride[axis] + 1

    @property
    def interior(self) -> tuple:
        """Output columns [lo, hi) whose KW taps all lie inside the image."""
        ow, s, p = self.out_size(1), self.stride[1], self.padding[1]
        lo = min(ow, -(-p // s))
        last = self.w - 1 + p - self.dilation[1] * (self.kernel[1] - 1)
        return lo, max(lo, min(ow, last // s + 1 if last >= 0 else 0))

    @property
    def max_partial(self) -> int:
        """A bound on |sum (x - x_zp) * w| over the taps."""
        return self.kernel[0] * self.kernel[1] * 255 * 128


def _lanes(base, lanes: int):
    """Index of `lanes` consecutive elements from base (a scalar index for one lane)."""
    return base if lanes == 1 else T.ramp(base, 1, lanes)


def _splat(value, lanes: int):
    return value if lanes == 1 else T.broadcast(value, lanes)


def _madd(path: str, lanes: int):
    """acc + x * w on int32 lanes holding x - x_zp in [-255, 255] and w packed as w & 0xFFFF.

    Where the lanes fill a register: one vpdpwssds (AVX512-VNNI) or vpmaddwd + add (AVX2) on
    the lanes read as int16 pairs; the low halves give x * w, the upper halves (sign bits of
    x) meet the zero upper half of w. vpdpwssds saturates only outside int32, and |acc| stays
    below |init| + max_partial < 2^31 (else the spec is wide and init is 0), so it is exact;
    LLVM splits the non-saturating vpdpwssd back into vpmaddwd + vpaddd, this one it keeps.
    Other lanes (C below one register): a multiply with w sign-extended from 16 bits."""
    vec = "int32" if lanes == 1 else f"int32x{lanes}"
    if (path, lanes) == ("avx512-vnni", 16):
        return lambda acc, x, w: T.call_llvm_pure_intrin(
            vec, "llvm.x86.avx512.vpdpwssds.512", acc, T.reinterpret(x, dtype="int16x32"),
            T.reinterpret(w, dtype="int16x32"))
    if (path, lanes) == ("avx2", 8):
        return lambda acc, x, w: acc + T.call_llvm_pure_intrin(
            vec, "llvm.x86.avx2.pmadd.wd", T.reinterpret(x, dtype="int16x16"),
            T.reinterpret(w, dtype="int16x16"))
    half = "int16" if lanes == 1 else f"int16x{lanes}"
    return lambda acc, x, w: acc + x * T.Cast(vec, T.Cast(half, w))


def _accumulate(spec: DepthwiseSpec, lanes: int, npix: int, checked: bool):
    """Macro: acc[p] += sum over in-image taps of (x - x_zp) * w, for columns ow0 + p."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = spec.kernel, spec.stride, spec.padding, \
        spec.dilation
    h, w, madd = spec.h, spec.w, _madd(spec.path, lanes)
    vec = "int32" if lanes == 1 else f"int32x{lanes}"

    @T.macro
    def add_tap(acc, x, b, ih, iw, c0, p, wv, xzp):
        acc[_lanes(p * lanes, lanes)] = madd(
            acc[_lanes(p * lanes, lanes)],
            T.Cast(vec, x[b, ih, iw, _lanes(c0, lanes)]) - _splat(xzp, lanes), wv)

    @T.macro
    def accumulate(acc, x, wt, b, oh, ow0, c0, xzp):
        for i in T.unroll(kh):
            ih = T.bind(oh * sh - ph + i * dh)
            if ih >= 0 and ih < h:
                for j in T.unroll(kw):
                    wv = T.bind(wt[i * kw + j, _lanes(c0, lanes)])
                    for p in T.unroll(npix):
                        iw = T.bind((ow0 + p) * sw - pw + j * dw)
                        if checked:  # border column: ow0 is a constant, the test folds
                            if iw >= 0 and iw < w:
                                add_tap(acc, x, b, ih, iw, c0, p, wv, xzp)
                        else:
                            add_tap(acc, x, b, ih, iw, c0, p, wv, xzp)

    return accumulate


def _tile(spec: DepthwiseSpec, lanes: int, npix: int, checked: bool, value):
    """Macro: one register tile (npix columns from ow0 x lanes channels from c0), stored."""
    accumulate = _accumulate(spec, lanes, npix, checked)

    @T.macro
    def tile(acc, x, wt, y, b, oh, ow0, c0, init, params, xzp):
        for p in T.unroll(npix):
            acc[_lanes(p * lanes, lanes)] = init[_lanes(c0, lanes)]
        accumulate(acc, x, wt, b, oh, ow0, c0, xzp)
        for p in T.unroll(npix):
            for lane in T.vectorized(lanes):
                y[b, oh, ow0 + p, c0 + lane] = value(acc[p * lanes + lane], c0 + lane, params)

    return tile


def _channel_block(spec: DepthwiseSpec, lanes: int, value):
    """Macro: all output columns of one row for the channels [c0, c0 + lanes)."""
    ow, (lo, hi) = spec.out_size(1), spec.interior
    full, rest = divmod(hi - lo, PIX)
    border = _tile(spec, lanes, 1, True, value)
    block = _tile(spec, lanes, PIX, False, value)
    tail = _tile(spec, lanes, max(rest, 1), False, value)

    @T.macro
    def channel_block(acc, x, wt, y, b, oh, c0, init, params, xzp):
        for q in T.unroll(lo):
            border(acc, x, wt, y, b, oh, q, c0, init, params, xzp)
        for t in range(full):
            block(acc, x, wt, y, b, oh, lo + t * PIX, c0, init, params, xzp)
        if rest > 0:
            tail(acc, x, wt, y, b, oh, lo + full * PIX, c0, init, params, xzp)
        for q in T.unroll(ow - hi):
            border(acc, x, wt, y, b, oh, hi + q, c0, init, params, xzp)

    return channel_block


def _rows(spec: DepthwiseSpec, value):
    """Macro: every (n, oh) row in parallel, over channel blocks of one register width.

    When C is not a multiple of the width, the last block overlaps the one before (those
    channels are computed twice, with the same result); C below one width: one narrow block.
    """
    c, oh = spec.c, spec.out_size(0)
    vl = min(LANES[spec.path], c)
    nfull, rest = divmod(c, vl)
    block = _channel_block(spec, vl, value)

    @T.macro
    def rows(x, wt, y, n, init, params, xzp):
        for r in T.parallel(n * oh):
            with T.sblock("row"):  # the accumulators belong to the parallel task
                T.reads()
                T.writes()
                acc = T.alloc_buffer((PIX * vl,), "int32")
                for cb in range(nfull):
                    block(acc, x, wt, y, r // oh, r % oh, cb * vl, init, params, xzp)
                if rest > 0:
                    block(acc, x, wt, y, r // oh, r % oh, c - vl, init, params, xzp)

    return rows


def int8_kernel(spec: DepthwiseSpec):
    """PrimFunc (x, wt, init, off, mult, rnd, shift, qp, y); qp = (x_zp, zp_y, qmin, qmax)."""
    rows, wide = _rows(spec, _requant), spec.wide
    c, h, w, taps = spec.c, spec.h, spec.w, spec.kernel[0] * spec.kernel[1]
    oh, ow = spec.out_size(0), spec.out_size(1)

    @T.prim_func(s_tir=True)
    def depthwise_int8(x_h: T.handle, wt: T.Buffer((taps, c), "int32"),
                       init: T.Buffer((c,), "int32"), off: T.Buffer((c,), "int64"),
                       mult: T.Buffer((c,), "int64"), rnd: T.Buffer((c,), "int64"),
                       shift: T.Buffer((c,), "int64"), qp: T.Buffer((4,), "int32"),
                       y_h: T.handle):
        T.func_attr({"tir.noalias": True})
        n = T.int32()
        x = T.match_buffer(x_h, (n, h, w, c), "int8")
        y = T.match_buffer(y_h, (n, oh, ow, c), "int8")
        with T.sblock("root"):  # Relax (call_tir) wants the body to be one block
            # bound once: read from qp inside the tiles, they were reloaded after every store
            x_zp, out_zp = T.bind(qp[0]), T.bind(T.Cast("int64", qp[1]))
            qmin, qmax = T.bind(T.Cast("int64", qp[2])), T.bind(T.Cast("int64", qp[3]))
            rows(x, wt, y, n, init, (off if wide else None, mult, rnd, shift, out_zp, qmin,
                                     qmax), x_zp)

    return depthwise_int8


def f32_kernel(spec: DepthwiseSpec):
    """PrimFunc (x, wt, init, scale, bias, qp, y): float32(acc) * scale (+ bias); qp = x_zp."""
    rows = _rows(spec, _scale_bias_f32 if spec.has_bias else _scale_f32)
    c, h, w, taps = spec.c, spec.h, spec.w, spec.kernel[0] * spec.kernel[1]
    oh, ow = spec.out_size(0), spec.out_size(1)

    @T.prim_func(s_tir=True)
    def depthwise_f32(x_h: T.handle, wt: T.Buffer((taps, c), "int32"),
                      init: T.Buffer((c,), "int32"), scale: T.Buffer((c,), "float32"),
                      bias: T.Buffer((c,), "float32"), qp: T.Buffer((1,), "int32"),
                      y_h: T.handle):
        T.func_attr({"tir.noalias": True})
        n = T.int32()
        x = T.match_buffer(x_h, (n, h, w, c), "int8")
        y = T.match_buffer(y_h, (n, oh, ow, c), "float32")
        with T.sblock("root"):
            x_zp = T.bind(qp[0])
            rows(x, wt, y, n, init, (scale, bias), x_zp)

    return depthwise_f32


@lru_cache(maxsize=128)
def prim_func(spec: DepthwiseSpec):
    """The scheduled PrimFunc for `spec` (no global symbol: Relax names it)."""
    func = int8_kernel(spec) if spec.mode == "int8" else f32_kernel(spec)
    return func.without_attr("global_symbol").with_attr("tirx.is_scheduled", True)


# ---- one layer: constants, a standalone runner, the Relax emission -----------------------

def supported(w: torch.Tensor, groups: int, in_channels: int) -> bool:
    """Channel multiplier 1 (groups == C_in == C_out, w [C, 1, KH, KW]), exact in int32."""
    return (w.dim() == 4 and w.shape[1] == 1 and int(groups) == w.shape[0] == in_channels
            and w.shape[2] * w.shape[3] * 255 * 128 < 2**31)


def _per_channel(values, c: int, dtype) -> np.ndarray:
    if values is None:
        return np.zeros(c, dtype)
    out = values.detach().cpu().numpy().astype(dtype).reshape(-1)
    if out.shape != (c,):
        raise ValueError(f"per-channel values must have {c} entries, got {out.shape[0]}")
    return out


def _weights(w: torch.Tensor) -> np.ndarray:
    """int8 [C, 1, KH, KW] -> int32 [KH * KW, C] holding w & 0xFFFF (see _madd)."""
    return np.ascontiguousarray(w.reshape(w.shape[0], -1).T.numpy().astype(np.int32) & 0xFFFF)


def _spec(w, hw, stride, padding, dilation, path, mode, bias) -> DepthwiseSpec:
    spec = DepthwiseSpec(path, int(w.shape[0]), int(hw[0]), int(hw[1]),
                         (int(w.shape[2]), int(w.shape[3])), tuple(map(int, stride)),
                         tuple(map(int, padding)), tuple(map(int, dilation)), mode,
                         bias is not None)
    if min(spec.out_size(0), spec.out_size(1)) < 1:
        raise ValueError("the convolution has an empty output")
    if mode == "int8" and bias is not None and bias.numel():
        big = int(bias.to(torch.int64).abs().max())
        spec = dataclasses.replace(spec, wide=big + spec.max_partial >= 2**31)
    return spec


class DepthwiseKernel:
    """A depthwise conv bound to one layer's constants; `kernel(x)` runs it on NCHW int8."""

    def __init__(self, spec: DepthwiseSpec, constants: list):
        import tvm
        self.spec = spec
        self.constants = [tvm.runtime.tensor(c, tvm.cpu()) for c in constants]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import tvm
        s = self.spec
        if x.dtype != torch.int8 or x.dim() != 4 or tuple(x.shape[1:]) != (s.c, s.h, s.w):
            raise ValueError(f"x must be int8 [n, {s.c}, {s.h}, {s.w}], got {x.dtype} "
                             f"{list(x.shape)}")
        y = torch.empty((x.shape[0], s.out_size(0), s.out_size(1), s.c),
                        dtype=torch.int8 if s.mode == "int8" else torch.float32)
        _compiled(s)(tvm.runtime.from_dlpack(x.permute(0, 2, 3, 1).contiguous()),
                     *self.constants, tvm.runtime.from_dlpack(y))
        return y.permute(0, 3, 1, 2)


@lru_cache(maxsize=64)
def _compiled(spec: DepthwiseSpec):
    import tvm

    from .cpu_features import llvm_target
    func = prim_func(spec).with_attr("global_symbol", "depthwise")
    exe = tvm.compile(tvm.IRModule({"depthwise": func}), target=llvm_target(spec.path))
    return exe["depthwise"]


def build_depthwise(w, x_zp, bias, multiplier, shift, out_zp, qmin, qmax, hw, stride,
                    padding, dilation, path) -> DepthwiseKernel:
    """qconv2d, groups == C, on [n, C, *hw]: int8 out, per-channel integer requantize."""
    spec = _spec(w, hw, stride, padding, dilation, path, "int8", bias)
    shift = _per_channel(shift, spec.c, np.int64)
    if shift.size and (shift.min() < 1 or shift.max() > 62):
        raise ValueError("shifts must be in [1, 62]")
    if not -128 <= int(qmin) <= int(qmax) <= 127:
        raise ValueError(f"need -128 <= qmin <= qmax <= 127, got qmin={qmin} qmax={qmax}")
    bias, zeros = _per_channel(bias, spec.c, np.int64), np.zeros(spec.c, np.int64)
    init, off = (zeros, bias) if spec.wide else (bias, zeros)
    return DepthwiseKernel(spec, [
        _weights(w), init.astype(np.int32), off, _per_channel(multiplier, spec.c, np.int64),
        np.left_shift(np.int64(1), shift - 1), shift,
        np.array([x_zp, out_zp, qmin, qmax], np.int32)])


def build_depthwise_f32(w, x_zp, bias, scale, hw, stride, padding, dilation,
                        path) -> DepthwiseKernel:
    """qconv2d_f32, groups == C, on [n, C, *hw]: float32(acc) * scale[c] (+ bias[c])."""
    spec = _spec(w, hw, stride, padding, dilation, path, "f32", bias)
    return DepthwiseKernel(spec, [
        _weights(w), np.zeros(spec.c, np.int32), _per_channel(scale, spec.c, np.float32),
        _per_channel(bias, spec.c, np.float32), np.array([x_zp], np.int32)])


def emit_depthwise(bb, kern: DepthwiseKernel, x, name: str = "depthwise"):
    """Emit `kern` on the Relax tensor x [n, C, H, W] (NCHW in and out)."""
    from tvm import relax
    s = kern.spec
    gvar = bb.add_func(prim_func(s), name)
    out_ty = relax.TensorType((x.ty.shape.values[0], s.out_size(0), s.out_size(1), s.c),
                              "int8" if s.mode == "int8" else "float32")
    args = [as_nhwc(bb, x)] + [relax.const(c) for c in kern.constants]
    y = bb.emit(relax.call_tir(gvar, args, out_ty))
    return bb.emit(relax.op.permute_dims(y, (0, 3, 1, 2)))


def _emit_if_depthwise(x, w, groups, name: str, build):
    """emit_depthwise(build((H, W))) on x, or None when this conv is not for this kernel."""
    from tvm import relax, tirx
    dims = list(x.ty.shape.values)[1:]
    if not all(isinstance(d, tirx.IntImm) for d in dims):
        return None
    c, h, w_in = (int(d) for d in dims)
    if not supported(w, groups, c):
        return None
    return emit_depthwise(relax.BlockBuilder.current(), build((h, w_in)), x,
                          f"depthwise_{name}")


def qconv2d(x, x_zp, w, bias, multiplier, shift, out_zp, qmin, qmax, stride, padding,
            dilation, groups, name: str, path: str):
    """Relax qconv2d through the depthwise kernel; None when it is not depthwise."""
    return _emit_if_depthwise(x, w, groups, name, lambda hw: build_depthwise(
        w, int(x_zp), bias, multiplier, shift, int(out_zp), int(qmin), int(qmax), hw, stride,
        padding, dilation, path))


def qconv2d_f32(x, x_zp, w, bias, scale, stride, padding, dilation, groups, name: str,
                path: str):
    """Relax qconv2d_f32 through the depthwise kernel; None when it is not depthwise."""
    return _emit_if_depthwise(x, w, groups, name, lambda hw: build_depthwise_f32(
        w, int(x_zp), bias, scale, hw, stride, padding, dilation, path))
