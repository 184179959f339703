"""Relax forms of pooling, concat, clamp and dynamic linear (see relax_ops.py)."""
from __future__ import annotations

from tvm import relax

from .relax_ops import E, _c, _emit, centered, requantize_expr

R = relax.op


def _pair(values, default):
    values = list(values) if values else list(default)
    return values * 2 if len(values) == 1 else values


def _qmax_pool2d(node, importer):
    x, kernel, stride, padding, dilation, ceil_mode = importer.retrieve_args(node)
    kernel = _pair(kernel, [1, 1])
    return _emit(importer, E.nn.max_pool2d(x, kernel, _pair(stride, kernel), _pair(padding, [0]),
                                           _pair(dilation, [1]), ceil_mode=bool(ceil_mode)))


def _window_sum(x, kernel, stride, padding, ceil_mode):
    """Sum over each window of int32 x, padded positions counting 0 (a ones depthwise conv)."""
    channels = int(x.ty.shape[1])
    ones = E.ones((channels, 1, kernel[0], kernel[1]), "int32")
    if ceil_mode:
        raise ValueError("qavg_pool2d with ceil_mode is not lowered")
    return E.nn.conv2d(x, ones, strides=stride, padding=padding, groups=channels,
                       out_dtype="int32")


def _qavg_pool2d(node, importer):
    x, x_zp, kernel, stride, padding, ceil_mode, m, n, out_zp, qmin, qmax = \
        importer.retrieve_args(node)
    kernel = _pair(kernel, [1, 1])
    acc = _window_sum(_emit(importer, centered(x, x_zp)), kernel, _pair(stride, kernel),
                      _pair(padding, [0]), ceil_mode)
    return _emit(importer, requantize_expr(acc, m, n, out_zp, qmin, qmax))


def _qmean(node, importer):
    x, x_zp, dims, keepdim, m, n, out_zp, qmin, qmax = importer.retrieve_args(node)
    rank = x.ty.ndim
    axes = sorted({d % rank for d in dims}) if dims else list(range(rank))
    acc = E.sum(centered(x, x_zp), axis=axes, keepdims=bool(keepdim))
    return _emit(importer, requantize_expr(acc, m, n, out_zp, qmin, qmax))


def _qcat(node, importer):
    tensors, dim = importer.retrieve_args(node)
    return _emit(importer, E.concat(list(tensors), axis=int(dim)))


def _qclamp(node, importer):
    x, qmin, qmax = importer.retrieve_args(node)
    return _emit(importer, E.clip(x, int(qmin), int(qmax)))


def _per_token(importer, x):
    lo = E.minimum(E.min(x, axis=-1, keepdims=True), _c(0.0, "float32"))
    hi = E.maximum(E.max(x, axis=-1, keepdims=True), _c(0.0, "float32"))
    span = E.divide(E.subtract(hi, lo), _c(255.0, "float32"))
    s = (E.where(E.equal(span, _c(0.0, "float32")), _c(1.0, "float32"), span))
    zp = E.clip(E.round(E.subtract(_c(-128.0, "float32"), E.divide(lo, s))), -128, 127)
    zp = _emit(importer, zp)
    q = E.clip(E.add(E.round(E.divide(x, s)), zp), -128, 127)
    return s, zp, q


def _qlinear_dynamic(node, importer):
    x, w, w_scale, bias = importer.retrieve_args(node)
    s, zp, q = _per_token(importer, x)
    centered_q = E.astype(E.subtract(q, zp), "int32")
    acc = E.matmul(centered_q, E.permute_dims(E.astype(w, "int32")), out_dtype="int32")
    y = E.multiply(E.astype(acc, "float32"), E.multiply(s, w_scale))
    return _emit(importer, y if bias is None else E.add(y, bias))
