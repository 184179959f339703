"""Relax forms of the integer-only (I-BERT) ops, step by step as the reference kernels in
qcompile/ops/integer_only.py compute them; the arithmetic (shifts, floor division, isqrt)
is relax_int_math.py's.

Integer contract: every intermediate is int64, as in the reference; i_linear accumulates in
int32, exact like qlinear (|x - x_zp| <= 255, |w| <= 128), then continues in int64.
"""
from __future__ import annotations

import numpy as np
import torch
from tvm import relax

from qcompile.errors import BackendError
from qcompile.ops.integer_only import (ERF_B, ERF_ONE, EXP_B, EXP_BITS, EXP_C, EXP_MAX_SHIFT,
                                       MEAN_BITS, NORM_BITS, PROB_BITS, VAR_SHIFT)

from . import gemm_kernels
from .cpu_features import choose_path
from .relax_int_math import (clamp_wide, floor_div, i64, isqrt, requantize8, round_div,
                             rounding_shift, scaled, shl, wide)
from .relax_ops import E, _c

MASKED_LOW = -(1 << 40)       # the reference's stand-in for masked scores in the row max
FLOAT32_EXACT = 1 << 24       # integers up to this magnitude are exact in float32


def _args(node, importer) -> list:
    """The op's arguments in schema order: positional, then keywords, then defaults."""
    values = importer.retrieve_args(node)
    schema = node.target._schema.arguments
    out = list(values)
    for argument in schema[len(out):]:
        if argument.name in node.kwargs:
            out.append(importer._retrieve_args(node.kwargs[argument.name]))
        elif argument.has_default_value():
            out.append(argument.default_value)
        else:
            raise BackendError(f"{node.target} is missing its argument {argument.name}")
    return out


# ---- softmax and GELU ------------------------------------------------------------------

def i_exp(t):
    """exp(t * S_T) in units of A * S_T**2 for int64 t <= 0:
    z = (-t) >> EXP_BITS;  p = t + z * 2**EXP_BITS;  L = (p + EXP_B)**2 + EXP_C;
    result = L >> min(z, EXP_MAX_SHIFT)."""
    z = E.right_shift(E.negative(t), i64(EXP_BITS))
    p = E.add(t, shl(z, EXP_BITS))
    a = E.add(p, i64(EXP_B))
    poly = E.add(E.multiply(a, a), i64(EXP_C))
    return E.right_shift(poly, E.minimum(z, i64(EXP_MAX_SHIFT)))


def _softmax(node, importer):
    """1. t = rrs((q - in_zp) * M_in, n_in);  2. t - max(t) over kept positions (masked ones
    count as -2**40), clamped to <= 0;  3. e = i_exp, 0 where masked;  4. s = max(sum(e), 1),
    r = (e << PROB_BITS) // s;  5. requantize r to int8."""
    q, in_zp, m_in, n_in, m_out, n_out, out_zp, qmin, qmax, dim, mask = _args(node, importer)
    axis = [int(dim)]
    t = scaled(E.subtract(wide(q), i64(in_zp)), int(m_in), int(n_in))
    keep = None
    if mask is not None:
        keep = mask if mask.ty.dtype == "bool" else E.astype(mask, "bool")
    ranked = t if keep is None else E.where(keep, t, i64(MASKED_LOW))
    top = E.max(ranked, axis=axis, keepdims=True)
    e = i_exp(E.minimum(E.subtract(t, top), i64(0)))
    if keep is not None:
        e = E.where(keep, e, i64(0))
    total = E.maximum(E.sum(e, axis=axis, keepdims=True), i64(1))
    r = floor_div(shl(e, PROB_BITS), total)
    return requantize8(r, m_out, n_out, out_zp, qmin, qmax)


def i_erf(u):
    """sgn(u) * (ERF_ONE - (min(|u|, ERF_B) - ERF_B)**2) for int64 u."""
    clipped = E.subtract(E.minimum(E.abs(u), i64(ERF_B)), i64(ERF_B))
    value = E.subtract(i64(ERF_ONE), E.multiply(clipped, clipped))
    signed = E.where(E.less(u, i64(0)), E.negative(value), value)
    return E.where(E.equal(u, i64(0)), i64(0), signed)


def _gelu(node, importer):
    """d = q - in_zp;  u = rrs(d * M_in, n_in);  acc = d * (ERF_ONE + i_erf(u));
    requantize acc to int8."""
    q, in_zp, m_in, n_in, m_out, n_out, out_zp, qmin, qmax = _args(node, importer)
    d = E.subtract(wide(q), i64(in_zp))
    u = scaled(d, int(m_in), int(n_in))
    acc = E.multiply(d, E.add(i64(ERF_ONE), i_erf(u)))
    return requantize8(acc, m_out, n_out, out_zp, qmin, qmax)


# ---- LayerNorm and the 16-bit residual ops ---------------------------------------------

def _last_dim(x, node) -> int:
    extent = x.ty.shape.values[-1]
    try:
        return int(extent)
    except TypeError:
        raise BackendError("i_layernorm needs a static last dimension, got "
                           f"{extent}", node=node) from None


def _layernorm(node, importer):
    """d = x - in_zp;  mean = round_div(sum(d) << MEAN_BITS, N);  c = (d << MEAN_BITS) - mean;
    v = ((sum(c * c) // N) << 2*VAR_SHIFT) + eps;  den = max(isqrt(v), 1);
    norm = round_div(c << (VAR_SHIFT + NORM_BITS), den);  acc = norm * gamma + beta;
    requantize acc to int8. All sums over the last axis, int64."""
    x, in_zp, gamma, beta, eps, mult, shift, out_zp, qmin, qmax = _args(node, importer)
    count = i64(_last_dim(x, node))
    d = E.subtract(wide(x), i64(in_zp))
    mean = round_div(shl(E.sum(d, axis=[-1], keepdims=True), MEAN_BITS), count)
    c = E.subtract(shl(d, MEAN_BITS), mean)
    var = floor_div(E.sum(E.multiply(c, c), axis=[-1], keepdims=True), count)
    den = E.maximum(isqrt(E.add(shl(var, 2 * VAR_SHIFT), i64(eps))), i64(1))
    norm = round_div(shl(c, VAR_SHIFT + NORM_BITS), den)
    acc = E.add(E.multiply(norm, wide(gamma)), wide(beta))
    return requantize8(acc, mult, shift, out_zp, qmin, qmax)


def _add(node, importer):
    """clamp(rrs((a - a_zp) * M_a + (b - b_zp) * M_b, n), WIDE_MIN, WIDE_MAX) as int32."""
    a, a_zp, m_a, b, b_zp, m_b, shift = _args(node, importer)
    ta = E.multiply(E.subtract(wide(a), i64(a_zp)), i64(m_a))
    tb = E.multiply(E.subtract(wide(b), i64(b_zp)), i64(m_b))
    return clamp_wide(rounding_shift(E.add(ta, tb), int(shift)))


def _gemm_acc(x, x_zp, w, name: str):
    """sum_k (x - x_zp) * w[n, k] from the int8 GEMM micro-kernel's float epilogue with scale
    1 and no bias: its int32 accumulator is exact, and float32(acc) * 1.0 == acc while
    |acc| <= 2**24, which max|x - x_zp| * max_n sum_k |w[n, k]| bounds. None on the generic
    path (its modules, npu-int8's C model among them, keep integer ops free of float), when
    w is not a constant, the bound fails, or the kernel cannot accumulate K in int32."""
    values = gemm_kernels._constants(w)
    if values is None or choose_path() == "generic":
        return None
    reach = max(int(x_zp) + 128, 127 - int(x_zp))
    weights = values[0].to(torch.int64)
    if reach * int(weights.abs().sum(dim=1).max()) > FLOAT32_EXACT:
        return None
    ones = relax.const(np.ones(weights.shape[0], np.float32))
    try:
        y = gemm_kernels.qlinear_f32(x, x_zp, w, None, ones, name)
    except ValueError:
        return None
    return None if y is None else E.astype(y, "int32")


def _linear_acc(x, x_zp, w, node):
    """sum_k (x - x_zp) * w[n, k]: exact int32 (|x - x_zp| <= 255, |w| <= 128), by the GEMM
    micro-kernel where _gemm_acc allows, else a Relax int32 matmul."""
    fast = _gemm_acc(x, x_zp, w, node.name)
    if fast is not None:
        return fast
    centred = E.subtract(E.astype(x, "int32"), _c(int(x_zp), "int32"))
    return E.matmul(centred, E.permute_dims(E.astype(w, "int32")), out_dtype="int32")


def _linear(node, importer):
    """acc = sum((x - x_zp) * w) + bias (int64);
    out = clamp(rrs(acc * M[n], n[n]), WIDE_MIN, WIDE_MAX) as int32."""
    x, x_zp, w, bias, mult, shift = _args(node, importer)
    acc = wide(_linear_acc(x, x_zp, w, node))
    if bias is not None:
        acc = E.add(acc, wide(bias))
    return clamp_wide(scaled(acc, mult, shift))


CONVERTERS = {"i_softmax.default": _softmax, "i_gelu.default": _gelu,
              "i_layernorm.default": _layernorm, "i_add.default": _add,
              "i_linear.default": _linear}
