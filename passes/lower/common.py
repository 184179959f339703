"""Integer parameters for lowered ops: multipliers, clamp bounds, int32 bias, overflow checks."""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompile.errors import LoweringError
from qcompile.facts import QParams, facts_of, update_facts
from qcompile.ops import reference
from qcompile.quant_math import quantize_multiplier, quantize_multipliers

INT32_MAX = 2 ** 31 - 1


def multiplier(real: float, node: fx.Node) -> tuple[int, int]:
    try:
        return quantize_multiplier(real)
    except ValueError as err:
        raise LoweringError(f"cannot represent rescale factor {real:.6g} as an integer "
                            f"multiplier: {err}", node=node) from None


def channel_multipliers(reals: torch.Tensor, node: fx.Node) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        return quantize_multipliers(reals)
    except ValueError as err:
        raise LoweringError(f"per-channel rescale factors out of range: {err}", node=node) from None


def clamp_bounds(out: QParams, activation: str | None) -> tuple[int, int]:
    """qmin/qmax of the output, narrowed by a fused ReLU/ReLU6 (q is monotone, so exact)."""
    lo, hi = out.qmin, out.qmax
    if activation in ("relu", "relu6"):
        lo = max(lo, min(hi, out.zero_point))
    if activation == "relu6":
        six = reference.quantize(torch.tensor([6.0]), out.scale, out.zero_point, out.qmin, out.qmax)
        hi = min(hi, int(six.item()))
    return lo, hi


def int32_bias(bias: torch.Tensor | None, input_scale: float, weight_scales: torch.Tensor,
               node: fx.Node) -> torch.Tensor | None:
    if bias is None:
        return None
    scaled = torch.round(bias.double() / (input_scale * weight_scales.double()))
    if scaled.abs().max().item() > INT32_MAX:
        raise LoweringError("bias does not fit int32 at scale s_x*s_w (input or weight scale "
                            "too small); keep this layer in float with keep_float", node=node)
    return scaled.to(torch.int32)


def check_accumulator(reduction: int, w_int8: torch.Tensor, bias_i32, node: fx.Node) -> None:
    """Fail when sum((x - zp) * w) + bias could leave int32 (|x - zp| <= 255)."""
    w_max = int(w_int8.abs().amax().item()) if w_int8.numel() else 0
    b_max = int(bias_i32.abs().max().item()) if bias_i32 is not None and bias_i32.numel() else 0
    if reduction * 255 * w_max + b_max > INT32_MAX:
        raise LoweringError(f"int32 accumulator could overflow (reduction length {reduction}, "
                            f"max |w| {w_max}, max |bias| {b_max}); keep this layer in float",
                            node=node)


def mark_lowered(new: fx.Node, anchor: fx.Node, out: QParams | None, inputs: tuple,
                 activation: str | None = None, origin: fx.Node | None = None) -> None:
    """Facts of a lowered node; `origin` is the float node whose value it computes."""
    old = facts_of(anchor)
    source = origin if origin is not None else anchor
    update_facts(new, qparams=out, input_qparams=inputs, weight_qparams=old.weight_qparams,
                 activation=activation, origin=facts_of(source).origin or source.name,
                 fusion=old.fusion)


def lowered_name(anchor: fx.Node) -> str:
    return f"q{anchor.name}" if not anchor.name.startswith("q") else f"{anchor.name}_int8"
