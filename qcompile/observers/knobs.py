"""Observer methods, their knobs with defaults, and knob validation."""
from __future__ import annotations

import numbers

OBSERVER_METHODS: dict[str, dict] = {
    "minmax": {},
    "moving-average": {"averaging_constant": 0.01},
    "percentile": {"p": 99.99, "bins": 2048},
    "mse": {"candidates": 100, "bins": 2048},
    "entropy": {"bins_target": 128, "bins": 2048},
}


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


_CHECKS = {
    "averaging_constant": (lambda v: _is_real(v) and 0 < v <= 1, "a number in (0, 1]"),
    "p": (lambda v: _is_real(v) and 50 <= v <= 100, "a percentile in [50, 100]"),
    "bins": (lambda v: _is_int(v) and 16 <= v <= 1 << 20, "an integer in [16, 1048576]"),
    "candidates": (lambda v: _is_int(v) and 2 <= v <= 10000, "an integer in [2, 10000]"),
    "bins_target": (lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
}


def canonical_method(method: str) -> str:
    """The registered spelling of `method` ('moving_average' -> 'moving-average')."""
    name = str(method).strip().lower().replace("_", "-")
    if name not in OBSERVER_METHODS:
        valid = ", ".join(OBSERVER_METHODS)
        raise ValueError(f"unknown observer method {method!r}; valid methods: {valid}")
    return name


def resolve_knobs(method: str, knobs: dict) -> dict:
    """Defaults of `method` updated with `knobs`; ValueError for unknown or bad knobs."""
    defaults = OBSERVER_METHODS[method]
    unknown = sorted(set(knobs) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) or "none"
        raise ValueError(f"unknown knob(s) {', '.join(map(repr, unknown))} for observer "
                         f"'{method}'; valid knobs: {valid}")
    resolved = {**defaults, **knobs}
    for name, value in resolved.items():
        check, expected = _CHECKS[name]
        if not check(value):
            raise ValueError(f"observer '{method}' knob {name}={value!r}: expected {expected}")
    if method == "entropy" and resolved["bins_target"] >= resolved["bins"]:
        raise ValueError(f"observer 'entropy' knob bins_target={resolved['bins_target']} "
                         f"must be smaller than bins={resolved['bins']}")
    return resolved
