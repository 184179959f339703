"""observe: put an observer site after every value the recipe needs a range for."""
from __future__ import annotations

import torch.fx as fx

from qcompile.facts import facts_of, update_facts
from qcompile.registry import PassResult, register_pass

from .plan import observation_points, plan
from .site import ObserverSite


def observe_value(gm: fx.GraphModule, value: fx.Node) -> fx.Node:
    """An observer site after `value`; every other user of `value` now reads the site."""
    name = f"obs_{value.name}"
    gm.add_submodule(name, ObserverSite(value.name))
    with gm.graph.inserting_after(value):
        site = gm.graph.call_module(name, (value,))
    value.replace_all_uses_with(site, delete_user_cb=lambda user: user is not site)
    update_facts(site, tensor=facts_of(value).tensor)
    return site


@register_pass("observe")
def observe(gm: fx.GraphModule, ctx) -> PassResult:
    """Insert observer sites at the inputs and outputs of every op the recipe quantizes."""
    anchors, needed = plan(gm, ctx, record=True)
    if ctx.recipe.linear_only:
        return PassResult(gm, False, {"anchors": len(anchors), "observed": 0})
    points = observation_points(anchors, needed)
    for value in points:
        observe_value(gm, value)
    return PassResult(gm, bool(points), {"anchors": len(anchors), "observed": len(points)})
