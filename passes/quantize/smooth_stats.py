"""Per-channel absolute maxima of activations over the calibration batches."""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompile.errors import CalibrationError
from qcompile.inputs import as_tuple, check_inputs


class ChannelAbsMax(torch.nn.Module):
    """Identity that keeps the running max |x| per last-dim channel."""

    def __init__(self):
        super().__init__()
        self.value = None

    def forward(self, x):
        flat = x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0)
        self.value = flat if self.value is None else torch.maximum(self.value, flat)
        return x


def channel_absmax(gm: fx.GraphModule, values: list[fx.Node], ctx) -> dict:
    """Run the calibration batches once with temporary statistics modules after `values`."""
    sites = {}
    for index, value in enumerate(values):
        name = f"_smooth_stats_{index}"
        gm.add_submodule(name, ChannelAbsMax())
        with gm.graph.inserting_after(value):
            sites[value] = gm.graph.call_module(name, (value,))
    gm.recompile()
    try:
        count = 0
        with torch.no_grad():
            for index, batch in enumerate(ctx.calibration_data):
                args = as_tuple(batch)
                check_inputs(args, ctx.input_specs, f"calibration batch {index}",
                             error=CalibrationError, check_finite=True)
                gm(*args)
                count += 1
        if count == 0:
            raise CalibrationError("calibration_data yielded no batches")
        return {value: gm.get_submodule(site.target).value for value, site in sites.items()}
    finally:
        for site in sites.values():
            gm.graph.erase_node(site)
            gm.delete_submodule(site.target)
        gm.recompile()
