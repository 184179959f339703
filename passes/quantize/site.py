"""The observer site: an identity module in the graph that feeds an observer while calibrating."""
from __future__ import annotations

import torch

from qcompile.errors import CalibrationError


class ObserverSite(torch.nn.Module):
    """Returns its input unchanged; while `enabled`, shows it to `observer` first."""

    def __init__(self, value_name: str):
        super().__init__()
        self.value_name = value_name
        self.observer = None
        self.enabled = False

    def forward(self, x):
        if self.enabled and self.observer is not None and isinstance(x, torch.Tensor):
            try:
                self.observer(x)
            except CalibrationError as err:
                raise CalibrationError(f"value %{self.value_name}: {err.message}") from None
        return x


def observer_sites(gm) -> list[tuple]:
    """(node, ObserverSite) for every observer site in the graph, in graph order."""
    found = []
    for node in gm.graph.find_nodes(op="call_module"):
        module = gm.get_submodule(node.target)
        if isinstance(module, ObserverSite):
            found.append((node, module))
    return found
