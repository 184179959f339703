"""Fake quantization for quantization-aware training, in the graph where insert-qdq will put
real quantize/dequantize (see qcompile/qat.py).

- `FakeQuantSite` is an observer site whose value is also rounded to the int8 grid of a
  learnable per-tensor scale (LSQ: straight-through estimator for the value, a scaled
  gradient for the scale) and a fixed zero point, exactly as `qcompile::quantize` would.
- `WeightFakeQuant` rounds a weight per output channel to the symmetric int8 grid of its
  current max-abs scale (the weight_calibration="minmax" rule), straight-through.
`qat-freeze` turns both into what the rest of the pipeline expects: the site's learned qparams
in its facts (as calibrate would), the weight fake quant removed (insert-qdq quantizes the
trained weight with the same rule).
"""
from __future__ import annotations

import math

import torch
import torch.fx as fx

from qcompile.facts import QParams, ValueRange, update_facts
from qcompile.quant_math import MIN_SCALE, WEIGHT_QMAX, WEIGHT_QMIN, weight_scales_per_channel
from qcompile.registry import PassResult, register_pass

from .site import ObserverSite, observer_sites


class FakeQuantSite(ObserverSite):
    """An observer site that, once given qparams, fake-quantizes its value."""

    def __init__(self, value_name: str, scale: float, zero_point: int, learn_scale: bool = True,
                 qmin: int = -128, qmax: int = 127):
        super().__init__(value_name)
        self.scale = torch.nn.Parameter(torch.tensor([float(scale)]), requires_grad=learn_scale)
        self.register_buffer("zero_point", torch.tensor([float(zero_point)]))
        self.qmin, self.qmax = qmin, qmax

    def forward(self, x):
        x = super().forward(x)
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return x
        scale = self.scale.abs().clamp(min=MIN_SCALE)
        grad_factor = 1.0 / math.sqrt(max(x.numel() // max(x.shape[0], 1), 1) * self.qmax)
        return torch._fake_quantize_learnable_per_tensor_affine(
            x, scale, self.zero_point, self.qmin, self.qmax, grad_factor)

    def qparams(self) -> QParams:
        """The int8 qparams this site trained to (the float32 scale quantize will use)."""
        scale = float(torch.tensor(float(self.scale.detach().abs().clamp(min=MIN_SCALE)),
                                   dtype=torch.float32))
        return QParams(scale, int(self.zero_point.item()), self.qmin, self.qmax)


class WeightFakeQuant(torch.nn.Module):
    """Per-output-channel symmetric int8 fake quantization of a weight (max-abs scales)."""

    def forward(self, w):
        scales = weight_scales_per_channel(w.detach(), axis=0)
        zeros = torch.zeros(scales.shape, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scales, zeros, 0, WEIGHT_QMIN,
                                                      WEIGHT_QMAX)


def weight_fake_quants(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.find_nodes(op="call_module")
            if isinstance(gm.get_submodule(n.target), WeightFakeQuant)]


@register_pass("qat-freeze")
def qat_freeze(gm: fx.GraphModule, ctx) -> PassResult:
    """Trained fake-quant sites -> their qparams in the facts; weight fake quant removed."""
    sites = [(n, s) for n, s in observer_sites(gm) if isinstance(s, FakeQuantSite)]
    for node, site in sites:
        qp = site.qparams()
        low = (qp.qmin - qp.zero_point) * qp.scale
        high = (qp.qmax - qp.zero_point) * qp.scale
        update_facts(node, qparams=qp, observed=ValueRange(low, high, "qat"))
    weights = weight_fake_quants(gm)
    for node in weights:
        node.replace_all_uses_with(node.args[0])
        target = node.target
        gm.graph.erase_node(node)
        gm.delete_submodule(target)
    gm.graph.lint()
    gm.recompile()
    return PassResult(gm, bool(sites) or bool(weights),
                      {"activation_sites": len(sites), "weights": len(weights)})
