"""calibrate: stream the calibration batches through the observers and choose int8 qparams."""
from __future__ import annotations

from contextlib import contextmanager

import torch.fx as fx

from qcompile.errors import CalibrationError, PipelineError
from qcompile.facts import QParams, ValueRange, update_facts
from qcompile.observers import make_observer
from qcompile.quant_math import qparams_from_range
from qcompile.registry import PassResult, register_pass

from .scale_profile import constrain_activation
from .site import observer_sites
from .stream import run_calibration_batches


def _number(name: str, text):
    if text is None or not isinstance(text, str):
        return text
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise PipelineError(f"option '{name}' of pass 'calibrate' expects a number, got "
                            f"'{text}'") from None


def _make(method: str, knobs: dict, symmetric: bool):
    try:
        return make_observer(method, symmetric=symmetric, **knobs)
    except ValueError as err:
        raise CalibrationError(f"calibration method '{method}': {err}") from None


@contextmanager
def _observing(sites):
    for _, site in sites:
        site.enabled = True
    try:
        yield
    finally:
        for _, site in sites:
            site.enabled = False


def _stream(gm: fx.GraphModule, ctx, sites) -> int:
    with _observing(sites):
        return run_calibration_batches(gm, ctx, "calibrate")


def _choose_qparams(sites, method: str, symmetric: bool, options) -> None:
    for node, site in sites:
        lo, hi = site.observer.range()
        scale, zero_point = constrain_activation(*qparams_from_range(lo, hi, symmetric=symmetric),
                                                 options)
        update_facts(node, observed=ValueRange(float(lo), float(hi), method),
                     qparams=QParams(scale, zero_point))


@register_pass("calibrate")
def calibrate(gm: fx.GraphModule, ctx, *, method=None, p=None, averaging_constant=None,
              candidates=None, bins=None, bins_target=None) -> PassResult:
    """Run calibration batches once; pick each observed value's range and int8 qparams."""
    sites = observer_sites(gm)
    if not sites:
        return PassResult(gm, False, {"batches": 0})
    method = method or ctx.options.calibration
    knobs = ctx.options.calibration_knobs()
    passed = {"p": p, "averaging_constant": averaging_constant, "candidates": candidates,
              "bins": bins, "bins_target": bins_target}
    knobs.update({k: _number(k, v) for k, v in passed.items() if v is not None})
    symmetric = ctx.options.symmetric_activations
    for _, site in sites:
        site.observer = _make(method, knobs, symmetric)
    batches = _stream(gm, ctx, sites)
    _choose_qparams(sites, method, symmetric, ctx.options)
    ctx.calibration_summary = {"method": method, "knobs": knobs, "batches": batches,
                               "observed_values": len(sites)}
    return PassResult(gm, True, {"batches": batches, "observed": len(sites)})
