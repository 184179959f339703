"""quantize-kv-cache: option kv_cache. The KV cache is held as quantized codes in the graph.

A cache write is an `index_copy` or `slice_scatter` along the position dim (2) of a
[B, H, S, Dh] cache, or a `cat` of past and new keys/values along dim 2. Each becomes

    new_codes, new_scales = qcompile.kv_quantize(new, mode, head_scale)      # the write
    old_codes, old_scales = qcompile.kv_quantize(cache, mode, head_scale)    # cache coming in
    codes = write(old_codes, new_codes)            # the same index_copy/slice_scatter/cat
    scales = write(old_scales, new_scales)         # int8-per-token only (per-head: static)
    cache' = qcompile.kv_dequantize(codes, scales, mode)                     # the read

so attention and the cache outputs read the dequantized cache. The cache tensors at the
model boundary keep the model's float32 interface: a cache this graph wrote holds values
on the quantization grid, and quantizing it again on the way in gives back the same codes.
Per-head scales (int8-per-head, fp8) are static: calibrated amax / qmax of the values
written, per head, over the calibration batches.
"""
from __future__ import annotations

import operator

import torch
from torch import fx

from qcompile.errors import PipelineError
from qcompile.facts import update_facts
from qcompile.graph_edit import add_constant, call_before, replace_with
from qcompile.ops.kv_cache import KV_MODES, head_scales
from qcompile.registry import PassResult, register_pass

from .activation_stats import collect_statistics

Q = torch.ops.qcompile
aten = torch.ops.aten
POSITION_DIMS = (2, -2)
# write op -> (index of the cache argument, index of the new values, index of the dim)
WRITES = {aten.index_copy.default: (0, 3, 1), aten.slice_scatter.default: (0, 1, 2)}


def _rank(node) -> int | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val.dim() if isinstance(val, torch.Tensor) else None


def _write_parts(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """(cache, new values) of a cache write, or None when `node` is not one."""
    if node.op != "call_function":
        return None
    if node.target in WRITES:
        base_at, src_at, dim_at = WRITES[node.target]
        dim = node.args[dim_at] if len(node.args) > dim_at else node.kwargs.get("dim", 0)
        parts = (node.args[base_at], node.args[src_at])
    elif node.target == aten.cat.default and len(node.args[0]) == 2:
        dim = node.args[1] if len(node.args) > 1 else 0
        parts = tuple(node.args[0])
    else:
        return None
    if dim not in POSITION_DIMS or _rank(node) != 4:
        return None
    return parts


def cache_writes(gm: fx.GraphModule) -> list[fx.Node]:
    """The cache-write nodes of `gm`, in graph order."""
    return [n for n in gm.graph.nodes if _write_parts(n) is not None]


def _check_write(node: fx.Node, base, source) -> None:
    for value in (base, source):
        if not isinstance(value, fx.Node) or _rank(value) != 4:
            raise PipelineError("a KV-cache write needs float [B, H, T, Dh] cache and new "
                                f"values; got {value!r}", node=node)


class HeadAbsMax(torch.nn.Module):
    """Identity that keeps the running max |x| per head (dim 1) of [B, H, T, Dh] values."""

    def __init__(self):
        super().__init__()
        self.value = None

    def forward(self, x):
        amax = x.detach().abs().amax(dim=(0, 2, 3)).to(torch.float32)
        self.value = amax if self.value is None else torch.maximum(self.value, amax)
        return x


def _static_scales(gm, writes: list[fx.Node], ctx, mode: str) -> dict:
    """write -> get_attr node of its per-head scale [1, H, 1, 1], calibrated."""
    sources = list(dict.fromkeys(_write_parts(w)[1] for w in writes))
    amax = collect_statistics(gm, sources, ctx, HeadAbsMax)
    return {w: add_constant(gm, f"{w.name}_kv_scale",
                            head_scales(amax[_write_parts(w)[1]].value, mode), w)
            for w in writes}


def _quantize(gm, write: fx.Node, value: fx.Node, mode: str, scale, tag: str):
    """(codes, scales) getitem nodes of kv_quantize(value) placed before `write`."""
    q = call_before(gm.graph, write, Q.kv_quantize.default, (value, mode, scale),
                    origin=write, name=f"{write.name}_kvq_{tag}")
    update_facts(q, origin=write.name)
    return tuple(call_before(gm.graph, write, operator.getitem, (q, i), origin=write,
                             name=f"{write.name}_{tag}_{part}")
                 for i, part in enumerate(("codes", "scales")))


def _replace_parts(write: fx.Node, base, source) -> tuple:
    """The write's args with the cache and the new values replaced."""
    args = list(write.args)
    if write.target == aten.cat.default:
        args[0] = [base, source]
    else:
        base_at, src_at, _ = WRITES[write.target]
        args[base_at], args[src_at] = base, source
    return tuple(args)


def _rewrite(gm, write: fx.Node, mode: str, scale) -> fx.Node:
    """Replace one cache write by quantize, write of codes (and scales), dequantize."""
    base, source = _write_parts(write)
    _check_write(write, base, source)
    new_codes, new_scales = _quantize(gm, write, source, mode, scale, "new")
    old_codes, old_scales = _quantize(gm, write, base, mode, scale, "cache")
    codes = call_before(gm.graph, write, write.target, _replace_parts(write, old_codes, new_codes),
                        write.kwargs, origin=write, name=f"{write.name}_codes")
    scales = scale
    if scale is None:
        scales = call_before(gm.graph, write, write.target,
                             _replace_parts(write, old_scales, new_scales), write.kwargs,
                             origin=write, name=f"{write.name}_scales")
    read = call_before(gm.graph, write, Q.kv_dequantize.default, (codes, scales, mode),
                       origin=write, name=f"{write.name}_kvdq")
    update_facts(read, origin=write.name)
    replace_with(write, read)
    return read


@register_pass("quantize-kv-cache")
def quantize_kv_cache(gm: fx.GraphModule, ctx, *, mode="") -> PassResult:
    """Quantize the KV cache at its writes, dequantize at its reads (option kv_cache)."""
    mode = mode or ctx.options.kv_cache
    if not mode:
        return PassResult(gm, False, {})
    if mode not in KV_MODES:
        raise PipelineError(f"unknown KV-cache mode {mode!r}; valid: {', '.join(KV_MODES)}")
    writes = cache_writes(gm)
    if not writes:
        ctx.warn(f"kv_cache={mode}: no KV-cache write (index_copy, slice_scatter or cat along "
                 "dim 2 of a [B, H, S, Dh] cache) found; nothing quantized")
        return PassResult(gm, False, {"writes": 0})
    scales = _static_scales(gm, writes, ctx, mode) if mode != "int8-per-token" else {}
    for write in writes:
        _rewrite(gm, write, mode, scales.get(write))
    gm.graph.lint()
    gm.recompile()
    ctx.note(f"kv_cache={mode}: {len(writes)} cache write(s) quantized: "
             + ", ".join(w.name for w in writes[:6]) + (" ..." if len(writes) > 6 else ""))
    return PassResult(gm, True, {"writes": len(writes)})
