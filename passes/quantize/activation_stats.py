"""Statistics of activations over the calibration batches (per-channel max, Hessians)."""
from __future__ import annotations

import torch
import torch.fx as fx

from .stream import run_calibration_batches


class ChannelAbsMax(torch.nn.Module):
    """Identity that keeps the running max |x| per last-dim channel."""

    def __init__(self):
        super().__init__()
        self.value = None

    def forward(self, x):
        flat = x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0)
        self.value = flat if self.value is None else torch.maximum(self.value, flat)
        return x


class InputHessian(torch.nn.Module):
    """Identity that accumulates X^T X over the rows of x (last dim = features)."""

    def __init__(self):
        super().__init__()
        self.value, self.rows = None, 0

    def forward(self, x):
        flat = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        product = flat.T @ flat
        self.value = product if self.value is None else self.value + product
        self.rows += flat.shape[0]
        return x

    def hessian(self) -> torch.Tensor:
        return 2.0 * self.value / max(self.rows, 1)


def channel_absmax(gm: fx.GraphModule, values: list[fx.Node], ctx) -> dict:
    """Per-channel max |x| of each value over the calibration batches."""
    modules = collect_statistics(gm, values, ctx, ChannelAbsMax)
    return {value: module.value for value, module in modules.items()}


def input_hessians(gm: fx.GraphModule, values: list[fx.Node], ctx) -> dict:
    """2 X^T X / n of each value over the calibration batches (GPTQ)."""
    modules = collect_statistics(gm, values, ctx, InputHessian)
    return {value: module.hessian() for value, module in modules.items()}


def collect_statistics(gm: fx.GraphModule, values: list[fx.Node], ctx, factory) -> dict:
    """Run the calibration batches once with a temporary `factory()` module after each value."""
    sites = {}
    for index, value in enumerate(values):
        name = f"_stats_{index}"
        gm.add_submodule(name, factory())
        with gm.graph.inserting_after(value):
            sites[value] = gm.graph.call_module(name, (value,))
    gm.recompile()
    try:
        run_calibration_batches(gm, ctx, "statistics")
        return {value: gm.get_submodule(site.target) for value, site in sites.items()}
    finally:
        for site in sites.values():
            gm.graph.erase_node(site)
            gm.delete_submodule(site.target)
        gm.recompile()


class ChannelMeanAndSample(torch.nn.Module):
    """Identity that keeps mean |x| per last-dim channel and the first `rows` rows of x."""

    def __init__(self, rows: int = 256):
        super().__init__()
        self.limit, self.total, self.count, self.sample = rows, None, 0, []

    def forward(self, x):
        flat = x.detach().reshape(-1, x.shape[-1]).float()
        total = flat.abs().sum(dim=0)
        self.total = total if self.total is None else self.total + total
        self.count += flat.shape[0]
        kept = sum(s.shape[0] for s in self.sample)
        if kept < self.limit:
            self.sample.append(flat[: self.limit - kept].clone())
        return x


def channel_means_and_samples(gm: fx.GraphModule, values: list[fx.Node], ctx) -> dict:
    """(mean |x| per channel, up to 256 rows of x) of each value (AWQ)."""
    modules = collect_statistics(gm, values, ctx, ChannelMeanAndSample)
    return {value: (m.total / max(m.count, 1), torch.cat(m.sample)) for value, m in modules.items()}
