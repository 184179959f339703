"""Relax forms of the qcompile integer ops: the exact integer contract, written with Relax ops.

Each converter takes (fx node, TVM's torch importer) and emits Relax; `CONVERTERS` maps the
op names TVM's importer sees (`node.target.__name__`) to them. Integer sums are int32,
requantization is int64 multiply, add and arithmetic right shift, as in the reference kernels.
"""
from __future__ import annotations

from tvm import relax

from . import gemm_kernels
from .relax_embed import nhwc_sources, to_nchw

R = relax.op


class _Emitting:
    """`E.add(a, b)` is `R.add(a, b)` bound to a fresh variable by the current BlockBuilder,
    so every intermediate has its type when the next op asks for it."""

    def __init__(self, namespace):
        self._namespace = namespace

    def __getattr__(self, name):
        target = getattr(self._namespace, name)
        if not callable(target):
            return _Emitting(target)

        def emitting(*args, **kwargs):
            return relax.BlockBuilder.current().emit(target(*args, **kwargs))
        return emitting


E = _Emitting(R)


def _c(value, dtype):
    return relax.const(value, dtype)


def _emit(importer, expr):
    return expr


def in_nhwc(tensors, compute, same_shape: bool = True):
    """compute(layout, *tensors) for an op that can run in either layout. When every tensor
    is a transposed NHWC tensor (relax_embed.nhwc_sources), it runs on the NHWC sources
    (layout "NHWC") and its 4-D result is transposed back, which the next conv's `as_nhwc`
    (or the next such op) cancels; otherwise compute("NCHW", *tensors)."""
    bb = relax.BlockBuilder.current()
    sources = nhwc_sources(bb, list(tensors), same_shape)
    if sources is None:
        return compute("NCHW", *tensors)
    return to_nchw(bb, compute("NHWC", *sources))


def centered(x, zp):
    """int32(x) - zp."""
    return E.subtract(E.astype(x, "int32"), _c(int(zp), "int32"))


def requantize_expr(acc, multiplier, shift, out_zp, qmin, qmax, channel_axis=None):
    """clamp(((int64(acc) * M + 2^(n-1)) >> n) + zp, qmin, qmax) as int8.

    `multiplier`/`shift` are Python ints, or int32 Relax tensors per channel along the last
    axis (or `channel_axis` for NCHW)."""
    wide = E.astype(acc, "int64")
    if isinstance(multiplier, int):
        m, n = _c(multiplier, "int64"), _c(shift, "int64")
        rounding = _c(1 << (shift - 1), "int64")
    else:
        m, n = E.astype(multiplier, "int64"), E.astype(shift, "int64")
        if channel_axis is not None:
            m, n = (E.reshape(t, (-1, 1, 1)) for t in (m, n))
        rounding = E.left_shift(_c(1, "int64"), E.subtract(n, _c(1, "int64")))
    scaled = E.right_shift(E.add(E.multiply(wide, m), rounding), n)
    shifted = E.add(scaled, _c(int(out_zp), "int64"))
    return E.astype(E.clip(shifted, int(qmin), int(qmax)), "int8")


def quantize_expr(x, scale, zp, qmin, qmax):
    """clamp(round_half_even(x / s) + zp, qmin, qmax); NaN -> zp."""
    rounded = E.round(E.divide(x, _c(float(scale), "float32")))
    shifted = E.add(rounded, _c(float(zp), "float32"))
    clipped = E.clip(shifted, int(qmin), int(qmax))
    safe = E.where(E.isnan(x), _c(float(min(max(zp, qmin), qmax)), "float32"), clipped)
    return E.astype(safe, "int8")


def _quantize(node, importer):
    x, scale, zp, qmin, qmax = importer.retrieve_args(node)
    return _emit(importer, quantize_expr(x, scale, zp, qmin, qmax))


def _dequantize(node, importer):
    q, scale, zp = importer.retrieve_args(node)
    return _emit(importer, E.multiply(E.astype(centered(q, zp), "float32"),
                                      _c(float(scale), "float32")))


def _requantize(node, importer):
    q, in_zp, m, n, out_zp, qmin, qmax = importer.retrieve_args(node)
    return _emit(importer, in_nhwc([q], lambda _, t: requantize_expr(
        centered(t, in_zp), m, n, out_zp, qmin, qmax)))


def _linear_acc(x, x_zp, w, bias=None):
    acc = E.matmul(centered(x, x_zp), E.permute_dims(E.astype(w, "int32")), out_dtype="int32")
    return acc if bias is None else E.add(acc, bias)


def _qlinear(node, importer):
    x, x_zp, w, bias, m, n, out_zp, qmin, qmax = importer.retrieve_args(node)
    fast = gemm_kernels.qlinear(x, x_zp, w, bias, m, n, out_zp, qmin, qmax, node.name)
    if fast is not None:
        return fast
    return _emit(importer, requantize_expr(_linear_acc(x, x_zp, w, bias), m, n, out_zp,
                                           qmin, qmax))


def _qlinear_f32(node, importer):
    x, x_zp, w, bias, scale = importer.retrieve_args(node)
    fast = gemm_kernels.qlinear_f32(x, x_zp, w, bias, scale, node.name)
    if fast is not None:
        return fast
    y = E.multiply(E.astype(_linear_acc(x, x_zp, w), "float32"), scale)
    return _emit(importer, y if bias is None else E.add(y, bias))


def _conv_acc(x, x_zp, w, stride, padding, dilation, groups):
    return E.nn.conv2d(centered(x, x_zp), E.astype(w, "int32"), strides=stride, padding=padding,
                       dilation=dilation, groups=groups, out_dtype="int32")


def _qconv2d(node, importer):
    x, x_zp, w, bias, m, n, out_zp, qmin, qmax, stride, padding, dilation, groups = \
        importer.retrieve_args(node)
    fast = gemm_kernels.qconv2d(x, x_zp, w, bias, m, n, out_zp, qmin, qmax, stride, padding,
                                dilation, groups, node.name)
    if fast is not None:
        return fast
    acc = _conv_acc(x, x_zp, w, stride, padding, dilation, groups)
    if bias is not None:
        acc = E.add(acc, E.reshape(bias, (-1, 1, 1)))
    return _emit(importer, requantize_expr(acc, m, n, out_zp, qmin, qmax, channel_axis=1))


def _qconv2d_f32(node, importer):
    x, x_zp, w, bias, scale, stride, padding, dilation, groups = importer.retrieve_args(node)
    fast = gemm_kernels.qconv2d_f32(x, x_zp, w, bias, scale, stride, padding, dilation, groups,
                                    node.name)
    if fast is not None:
        return fast
    acc = _conv_acc(x, x_zp, w, stride, padding, dilation, groups)
    y = E.multiply(E.astype(acc, "float32"), E.reshape(scale, (-1, 1, 1)))
    return _emit(importer, y if bias is None else E.add(y, E.reshape(bias, (-1, 1, 1))))


def _matmul_acc(a, a_zp, b, b_zp):
    return E.matmul(centered(a, a_zp), centered(b, b_zp), out_dtype="int32")


def _qmatmul(node, importer):
    a, a_zp, b, b_zp, m, n, out_zp, qmin, qmax = importer.retrieve_args(node)
    return _emit(importer, requantize_expr(_matmul_acc(a, a_zp, b, b_zp), m, n, out_zp,
                                           qmin, qmax))


def _qmatmul_f32(node, importer):
    a, a_zp, b, b_zp, scale = importer.retrieve_args(node)
    acc = E.astype(_matmul_acc(a, a_zp, b, b_zp), "float32")
    return _emit(importer, E.multiply(acc, _c(float(scale), "float32")))


def _qadd(node, importer):
    a, a_zp, ma, b, b_zp, mb, shift, out_zp, qmin, qmax = importer.retrieve_args(node)

    def add(_, a, b):
        ta = E.multiply(E.astype(centered(a, a_zp), "int64"), _c(int(ma), "int64"))
        tb = E.multiply(E.astype(centered(b, b_zp), "int64"), _c(int(mb), "int64"))
        return requantize_expr(E.add(ta, tb), 1, shift, out_zp, qmin, qmax)
    return _emit(importer, in_nhwc([a, b], add))
