"""Rules for average pooling, means and concatenation on int8."""
from __future__ import annotations

import math

import torch
import torch.fx as fx

from qcompile.facts import facts_of
from qcompile.graph_edit import call_before, replace_with
from qcompile.op_kinds import arg

from .common import lowered_name, mark_lowered, multiplier
from .match import Q, dequantized, only_user_is, quantize_params

aten = torch.ops.aten


def _pooled(qnode: fx.Node, targets):
    if quantize_params(qnode) is None:
        return None
    pool = qnode.args[0]
    if not isinstance(pool, fx.Node) or pool.op != "call_function" or pool.target not in targets:
        return None
    src = dequantized(pool.args[0])
    return (pool, src) if src is not None and only_user_is(pool, qnode) else None


def lower_avg_pool(gm, qnode: fx.Node) -> bool:
    found = _pooled(qnode, (aten.avg_pool2d.default,))
    if found is None:
        return False
    pool, src = found
    kernel = list(pool.args[1]) * (2 if len(pool.args[1]) == 1 else 1)
    stride = list(arg(pool, 2, "stride", []) or kernel)
    padding = list(arg(pool, 3, "padding", [0, 0]))
    padding = padding * 2 if len(padding) == 1 else padding
    out = quantize_params(qnode)
    m, n = multiplier(src.qparams.scale / (out.scale * kernel[0] * kernel[1]), pool)
    new = call_before(gm.graph, qnode, Q.qavg_pool2d.default,
                      (src.node, src.qparams.zero_point, kernel, stride, padding, False, m, n,
                       out.zero_point, out.qmin, out.qmax), origin=pool,
                      name=lowered_name(pool))
    mark_lowered(new, pool, out, (src.qparams,))
    replace_with(qnode, new)
    return True


def _reduced(pool: fx.Node, shape: tuple) -> tuple[list[int], bool] | None:
    if pool.target is aten.adaptive_avg_pool2d.default:
        return [-2, -1], True
    dims = arg(pool, 1, "dim", None)
    if dims is None:
        return None
    dims = [dims] if isinstance(dims, int) else list(dims)
    return [d % len(shape) for d in dims], bool(arg(pool, 2, "keepdim", False))


def lower_mean(gm, qnode: fx.Node) -> bool:
    found = _pooled(qnode, (aten.adaptive_avg_pool2d.default, aten.mean.dim))
    info = facts_of(found[0].args[0]).tensor if found else None
    reduced = _reduced(found[0], info.shape) if info is not None else None
    if reduced is None:
        return False
    (pool, src), (dims, keepdim) = found, reduced
    count = math.prod(info.shape[d] for d in dims)
    out = quantize_params(qnode)
    m, n = multiplier(src.qparams.scale / (out.scale * count), pool)
    new = call_before(gm.graph, qnode, Q.qmean.default,
                      (src.node, src.qparams.zero_point, dims, keepdim, m, n, out.zero_point,
                       out.qmin, out.qmax), origin=pool, name=lowered_name(pool))
    mark_lowered(new, pool, out, (src.qparams,))
    replace_with(qnode, new)
    return True


def _to_output_qparams(gm, qnode, src, out) -> fx.Node:
    same = (src.qparams.scale, src.qparams.zero_point) == (out.scale, out.zero_point)
    if same and (out.qmin, out.qmax) == (-128, 127):
        return src.node
    m, n = multiplier(src.qparams.scale / out.scale, qnode)
    return call_before(gm.graph, qnode, Q.requantize.default,
                       (src.node, src.qparams.zero_point, m, n, out.zero_point, out.qmin,
                        out.qmax))


def lower_cat(gm, qnode: fx.Node) -> bool:
    if quantize_params(qnode) is None:
        return False
    cat = qnode.args[0]
    if not isinstance(cat, fx.Node) or cat.target is not aten.cat.default:
        return False
    sources = [dequantized(x) for x in cat.args[0]]
    if any(s is None for s in sources) or not only_user_is(cat, qnode):
        return False
    out = quantize_params(qnode)
    parts = [_to_output_qparams(gm, qnode, s, out) for s in sources]
    new = call_before(gm.graph, qnode, Q.qcat.default, (parts, arg(cat, 1, "dim", 0)),
                      origin=cat, name=lowered_name(cat))
    mark_lowered(new, cat, out, tuple(s.qparams for s in sources))
    replace_with(qnode, new)
    return True


POOL_RULES = (lower_avg_pool, lower_mean, lower_cat)
