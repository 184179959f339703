"""Relax forms of pooling, concat, clamp and dynamic linear (see relax_ops.py)."""
from __future__ import annotations

from tvm import relax

from .relax_embed import NCHW_FROM_NHWC, nhwc_sources, to_nchw
from .relax_ops import E, _c, _emit, centered, in_nhwc, requantize_expr

R = relax.op


def _pair(values, default):
    values = list(values) if values else list(default)
    return values * 2 if len(values) == 1 else values


def _qmax_pool2d(node, importer):
    """Max over each window; padding is the dtype's minimum (-128), so it never wins."""
    x, kernel, stride, padding, dilation, ceil_mode = importer.retrieve_args(node)
    kernel = _pair(kernel, [1, 1])
    stride, padding, dilation = _pair(stride, kernel), _pair(padding, [0]), _pair(dilation, [1])
    return _emit(importer, in_nhwc([x], lambda layout, t: E.nn.max_pool2d(
        t, kernel, stride, padding, dilation, ceil_mode=bool(ceil_mode), layout=layout)))


def _window_sum(x, kernel, stride, padding, ceil_mode, layout="NCHW"):
    """Sum over each window of int32 x, padded positions counting 0 (a ones depthwise conv:
    OIHW weights [C, 1, KH, KW] in NCHW, HWIO [KH, KW, 1, C] in NHWC)."""
    if ceil_mode:
        raise ValueError("qavg_pool2d with ceil_mode is not lowered")
    channels = int(x.ty.shape[layout.index("C")])
    if layout == "NHWC":
        ones, kernel_layout = E.ones((kernel[0], kernel[1], 1, channels), "int32"), "HWIO"
    else:
        ones, kernel_layout = E.ones((channels, 1, kernel[0], kernel[1]), "int32"), "OIHW"
    return E.nn.conv2d(x, ones, strides=stride, padding=padding, groups=channels,
                       data_layout=layout, kernel_layout=kernel_layout, out_dtype="int32")


def _qavg_pool2d(node, importer):
    x, x_zp, kernel, stride, padding, ceil_mode, m, n, out_zp, qmin, qmax = \
        importer.retrieve_args(node)
    kernel = _pair(kernel, [1, 1])
    stride, padding = _pair(stride, kernel), _pair(padding, [0])

    def pool(layout, t):
        acc = _window_sum(centered(t, x_zp), kernel, stride, padding, ceil_mode, layout)
        return requantize_expr(acc, m, n, out_zp, qmin, qmax)
    return _emit(importer, in_nhwc([x], pool))


def _nhwc_axes(axes) -> list:
    """NCHW axes as the axes of the NHWC source."""
    return sorted(NCHW_FROM_NHWC[a] for a in axes)


def _keeps_order(axes) -> bool:
    """Whether the dims a reduction over NCHW `axes` keeps come out in the same order when
    it reduces the NHWC source instead: over (H, W) both give [n, C], over C [n, H, W];
    over H alone they do not ([n, C, W] against [n, W, C])."""
    kept = [NCHW_FROM_NHWC[a] for a in range(4) if a not in axes]
    return kept == sorted(kept)


def _qmean(node, importer):
    x, x_zp, dims, keepdim, m, n, out_zp, qmin, qmax = importer.retrieve_args(node)
    rank = x.ty.ndim
    axes = sorted({d % rank for d in dims}) if dims else list(range(rank))

    def mean(t, over):
        acc = E.sum(centered(t, x_zp), axis=over, keepdims=bool(keepdim))
        return requantize_expr(acc, m, n, out_zp, qmin, qmax)
    bb = relax.BlockBuilder.current()
    see_through = rank == 4 and (keepdim or _keeps_order(axes))
    sources = nhwc_sources(bb, [x]) if see_through else None
    if sources is None:
        return _emit(importer, mean(x, axes))
    y = mean(sources[0], _nhwc_axes(axes))
    return _emit(importer, to_nchw(bb, y) if keepdim else y)


def _qcat(node, importer):
    """Concatenation; in NHWC when every input is a transposed NHWC tensor."""
    tensors, dim = importer.retrieve_args(node)

    def cat(layout, *ts):
        along = int(dim) if layout == "NCHW" else NCHW_FROM_NHWC[int(dim) % 4]
        return E.concat(list(ts), axis=along)
    return _emit(importer, in_nhwc(list(tensors), cat, same_shape=False))


def _qclamp(node, importer):
    x, qmin, qmax = importer.retrieve_args(node)
    return _emit(importer, in_nhwc([x], lambda _, t: E.clip(t, int(qmin), int(qmax))))


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
