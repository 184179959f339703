"""Use the hand-written GEMM micro-kernels (qlinear.py) for qlinear/qlinear_f32 in a Relax
module, when the weights and qparams are constants (they always are after lowering).

TVM's torch importer hands the converters the exported program's parameters, buffers and
lifted constants as Relax *Vars* (function parameters it binds to constants only after the
whole graph is translated, with BindParams). `bound_constants(values)` makes their torch
values visible here while the importer runs, keyed by the Var's name.
"""
from __future__ import annotations

import contextlib
import contextvars

import torch
import tvm
from tvm import relax

from .cpu_features import choose_path
from .qlinear import build_qlinear, build_qlinear_f32
from .relax_embed import as_nhwc, emit_gemm


_BOUND: contextvars.ContextVar = contextvars.ContextVar("qcompile_tvm_bound", default={})


@contextlib.contextmanager
def bound_constants(values: dict):
    """While active, a Relax Var named like a key of `values` stands for that torch tensor."""
    token = _BOUND.set(dict(values))
    try:
        yield
    finally:
        _BOUND.reset(token)


def _tensor(value) -> torch.Tensor | None:
    if value is None:
        return None
    if isinstance(value, tvm.ir.expr.Constant):
        return torch.from_numpy(value.value.numpy().copy())
    if isinstance(value, relax.Var) and value.name in _BOUND.get():
        return _BOUND.get()[value.name].detach().cpu()
    raise TypeError("not a constant")


def _constants(*values):
    try:
        return [_tensor(v) for v in values]
    except TypeError:
        return None


def qlinear(x, x_zp, w, bias, multiplier, shift, out_zp, qmin, qmax, name: str):
    values = _constants(w, bias, multiplier, shift)
    if values is None:
        return None
    w_t, bias_t, m_t, n_t = values
    kernel = build_qlinear(w_t, int(x_zp), bias_t, m_t, n_t, int(out_zp), int(qmin), int(qmax),
                           path=choose_path())
    return emit_gemm(relax.BlockBuilder.current(), kernel, x, f"gemm_{name}")


def qlinear_f32(x, x_zp, w, bias, scale, name: str):
    values = _constants(w, bias, scale)
    if values is None:
        return None
    w_t, bias_t, scale_t = values
    kernel = build_qlinear_f32(w_t, int(x_zp), bias_t, scale_t, path=choose_path())
    return emit_gemm(relax.BlockBuilder.current(), kernel, x, f"gemm_{name}")


def _pair(values, default):
    values = list(values) if values else list(default)
    return [int(v) for v in (values * 2 if len(values) == 1 else values)]


def _im2col(x, x_zp: int, kh: int, kw: int, stride, padding, dilation):
    """int8 x [N, C, H, W] -> cols [N * OH * OW, KH * KW * C]: rows (n, oh, ow), columns
    (kh, kw, c), the order of w.permute(0, 2, 3, 1).reshape(CO, -1). Out-of-image taps are
    x_zp, so they add (x_zp - x_zp) * w = 0 to the accumulator, as the reference's padding.

    Written as a 6-D compute (no div/mod per element) reshaped to 2-D (free). When x is the
    previous conv's GEMM output transposed back to NCHW, FuseOps fuses that transpose in
    here, so the innermost loop (c) reads the NHWC GEMM output contiguously."""
    from tvm import te, tirx
    n, c, h, w = x.ty.shape.values
    bb = relax.BlockBuilder.current()
    if (kh, kw) == (1, 1) and list(stride) == [1, 1] and list(padding) == [0, 0]:
        # a 1x1 conv reads each pixel's channels as they are: the NHWC rows, no copy when x
        # is the previous GEMM's output transposed back to NCHW
        return bb.emit(relax.op.reshape(as_nhwc(bb, x), (n * h * w, c))), h, w
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh = (int(h) + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (int(w) + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def compute(xt):
        def value(b, r, q, i, j, ci):
            ih, iw = r * sh - ph + i * dh, q * sw - pw + j * dw
            inside = tirx.all(ih >= 0, ih < h, iw >= 0, iw < w)
            return tirx.if_then_else(inside, xt[b, ci, ih, iw], tirx.const(x_zp, "int8"))
        return te.compute((n, oh, ow, kh, kw, c), value, name="im2col")

    cols = bb.emit_te(compute, x)
    cols = bb.emit(relax.op.reshape(cols, (n * oh * ow, kh * kw * c)))
    return cols, oh, ow


def _taps_last(w: torch.Tensor) -> torch.Tensor:
    """[CO, C, KH, KW] -> [CO, KH * KW * C], the column order of _im2col."""
    return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).contiguous()


def _conv_gemm(x, kernel, w_shape, stride, padding, dilation, x_zp, name):
    bb = relax.BlockBuilder.current()
    co, _, kh, kw = w_shape
    cols, oh, ow = _im2col(x, int(x_zp), kh, kw, _pair(stride, [1]), _pair(padding, [0]),
                           _pair(dilation, [1]))
    y = emit_gemm(bb, kernel, cols, f"gemm_{name}")
    n = x.ty.shape.values[0]
    y = bb.emit(relax.op.reshape(y, (n, oh, ow, co)))
    return bb.emit(relax.op.permute_dims(y, (0, 3, 1, 2)))


def qconv2d(x, x_zp, w, bias, multiplier, shift, out_zp, qmin, qmax, stride, padding,
            dilation, groups, name: str):
    """qconv2d (groups = 1) as im2col + the int8 GEMM micro-kernel, NCHW in and out."""
    values = _constants(w, bias, multiplier, shift)
    if values is None:
        return None
    if int(groups) != 1:  # depthwise: its own kernel; other groups: None (Relax conv2d)
        from . import depthwise
        return depthwise.qconv2d(x, x_zp, *values, out_zp, qmin, qmax, _pair(stride, [1]),
                                 _pair(padding, [0]), _pair(dilation, [1]), groups, name,
                                 choose_path())
    w_t, bias_t, m_t, n_t = values
    kernel = build_qlinear(_taps_last(w_t), int(x_zp), bias_t, m_t, n_t,
                           int(out_zp), int(qmin), int(qmax), path=choose_path())
    return _conv_gemm(x, kernel, tuple(w_t.shape), stride, padding, dilation, x_zp, name)


def qconv2d_f32(x, x_zp, w, bias, scale, stride, padding, dilation, groups, name: str):
    """qconv2d_f32 (groups = 1): im2col + the GEMM with the float epilogue (two roundings)."""
    values = _constants(w, bias, scale)
    if values is None:
        return None
    if int(groups) != 1:  # depthwise: its own kernel; other groups: None (Relax conv2d)
        from . import depthwise
        return depthwise.qconv2d_f32(x, x_zp, *values, _pair(stride, [1]), _pair(padding, [0]),
                                     _pair(dilation, [1]), groups, name, choose_path())
    w_t, bias_t, scale_t = values
    kernel = build_qlinear_f32(_taps_last(w_t), int(x_zp), bias_t, scale_t,
                               path=choose_path())
    return _conv_gemm(x, kernel, tuple(w_t.shape), stride, padding, dilation, x_zp, name)
