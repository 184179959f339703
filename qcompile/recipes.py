"""Recipes (what to quantize and how) and their options, as frozen dataclasses."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import RecipeError
from .mixed_precision import check_budget

CALIBRATION_METHODS = ("minmax", "moving-average", "percentile", "mse", "entropy")
FP8_FORMATS = ("e4m3", "e5m2")
KV_CACHE_MODES = ("int8-per-head", "int8-per-token", "fp8")


@dataclass(frozen=True)
class QuantOptions:
    """Options of a recipe. Give them to `compile(options=...)` as a dict or as this class.

    calibration: range method for activations (minmax, moving-average, percentile, mse, entropy)
    calibration_options: that method's knobs, e.g. {"p": 99.99} for percentile
    weight_calibration: per-channel weight scales, "mse" (clipping with least rounding
        error) or "minmax" (max-abs / 127)
    symmetric_activations: zero point 0 for activations (default asymmetric)
    keep_float: layers kept in float, by node name or module path prefix ("encoder.layer.0")
    keep_float_ops: op kinds kept in float ("linear", "conv2d", "matmul", "add", "pool", "cat")
    alpha: SmoothQuant migration strength (recipe w8a8-smoothquant), 0..1
    group_size: weights per group for int4 recipes (32, 64, 128)
    weight_symmetric: int4 weights symmetric (zero code 8) or asymmetric
    fp8_format: float8 format of the fp8 recipe, "e4m3" (max 448) or "e5m2" (max 57344)
    numerics: compare each pass's output with the float model (report and bisect)
    progress: show progress bars (None: only on a terminal)
    dump_only_changed: with dump_dir, write a pass's dump only when it changed the graph

    Backend options (cpu-int8; other targets ignore them):
    cpu_path: highest ISA path for the generated kernels ("auto", "avx512-vnni", "avx2",
        "generic"); forcing is only ever downwards
    tune_trials: kernel candidates to measure in total (0 with tune_seconds 0: no tuning,
        default tiles; earlier measurements in the tuning database are still used)
    tune_seconds: wall-clock budget for tuning (0: no time limit besides tune_trials)
    tune_rpc: measure on other machines through a TVM RPC tracker, "host:port:key"
    cache: reuse (and fill) the on-disk tuning database and compiled-library cache
    cache_dir: where those live (default $QCOMPILE_CACHE_DIR, else ~/.cache/qcompile)
    profile: after the build, time every kernel on the example inputs (report.kernel_times)
    compile_cache: keep the whole compiled model on disk (beside the library cache) keyed by
        graph, weights, calibration data, target, pipeline, options and qcompile's sources;
        an identical compile then loads it instead of calibrating and building again

    Integer-only and NPU profile options (target npu-int8 sets integer_only):
    integer_only: softmax, layernorm and GELU as integer ops (I-BERT style), no float island
    pow2_scales: every scale a power of two, so requantize is a shift (no multiplier)
    per_tensor_weights: one weight scale per tensor instead of per output channel
    arena_limit: bytes the static activation arena may take (npu-int8); None: no limit

    cuda-int8 options:
    arch: build the engine for this GPU architecture ("sm_80", "sm_86", "sm_89", "sm_90")
        without a GPU (heuristic tactics, tuned on first use)
    emulate: run the engine's kernels on the CPU through the emulation layer (slow; tests)
    fallback: ops without an engine kernel run their reference kernel in torch (listed in
        the report with the reason); False: such an op is a BackendError naming the node

    Accuracy options (see qcompile/mixed_precision.py):
    budget: {"metric": "sqnr" | "cosine" | fn, "min": threshold, "data": batches}: keep the
        fewest layers float (most sensitive first) so the output score reaches min
    sensitivity: rank the quantized layers by output SQNR when quantized alone (report)

    Method options (passes in the `methods` group, before calibration):
    equalize: cross-layer equalization of consecutive conv/linear weights (pass equalize)
    bias_correction: subtract the expected output error of int8 weight rounding from each
        conv/linear bias, using calibration input means (pass bias-correction)
    kv_cache: quantize the KV cache at its writes (pass quantize-kv-cache): None,
        "int8-per-head", "int8-per-token" or "fp8" (E4M3, per-head scale)
    """
    calibration: str = "mse"
    alpha: float = 0.5
    group_size: int = 128
    weight_symmetric: bool = True
    fp8_format: str = "e4m3"
    weight_calibration: str = "mse"
    calibration_options: tuple[tuple[str, Any], ...] = ()
    symmetric_activations: bool = False
    keep_float: tuple[str, ...] = ()
    keep_float_ops: tuple[str, ...] = ()
    numerics: bool = True
    progress: bool | None = None
    dump_only_changed: bool = False
    cpu_path: str = "auto"
    tune_trials: int = 0
    tune_seconds: float = 0.0
    tune_rpc: str | None = None
    cache: bool = True
    cache_dir: str | None = None
    profile: bool = False
    compile_cache: bool = False
    budget: Any = None
    sensitivity: bool = False
    equalize: bool = False
    bias_correction: bool = False
    integer_only: bool = False
    pow2_scales: bool = False
    per_tensor_weights: bool = False
    arena_limit: int | None = None
    arch: str | None = None
    emulate: bool = False
    fallback: bool = True
    kv_cache: str | None = None

    def calibration_knobs(self) -> dict[str, Any]:
        return dict(self.calibration_options)


@dataclass(frozen=True)
class Recipe:
    """A named quantization scheme."""
    name: str
    activations: str            # "static" (calibrated per tensor) or "dynamic" (per token at run time)
    weights: str = "int8-per-channel"
    description: str = ""
    smoothing: bool = False
    weight_solver: str = "rtn"
    options: QuantOptions = field(default_factory=QuantOptions)

    @property
    def dynamic(self) -> bool:
        return self.activations == "dynamic"

    @property
    def linear_only(self) -> bool:
        """Recipes that quantize linear layers only (no calibrated activations)."""
        return self.activations in ("dynamic", "none", "lowp")


RECIPES: dict[str, Recipe] = {
    "w8a8": Recipe("w8a8", "static", description=(
        "int8 weights per output channel (symmetric), int8 activations per tensor "
        "(asymmetric unless symmetric_activations), calibrated ranges")),
    "w8a8-smoothquant": Recipe("w8a8-smoothquant", "static", smoothing=True, description=(
        "w8a8 with SmoothQuant: per-channel activation outliers migrated into the weights "
        "(option alpha, default 0.5) before calibration")),
    "w4a16-rtn": Recipe("w4a16-rtn", "none", weights="int4-group", description=(
        "weight-only int4, group-wise (option group_size, default 128; weight_symmetric), "
        "round to nearest; float32 activations")),
    "w4a16-gptq": Recipe("w4a16-gptq", "none", weights="int4-group", weight_solver="gptq",
                         description=("weight-only int4, group-wise, codes chosen by GPTQ from "
                                      "calibration Hessians (pass options damp, act-order)")),
    "w4a16-awq": Recipe("w4a16-awq", "none", weights="int4-group", weight_solver="awq",
                        description=("weight-only int4, group-wise, with activation-aware "
                                     "per-channel scales searched on calibration data")),
    "w8a16-rtn": Recipe("w8a16-rtn", "none", weights="int8-weight-only", description=(
        "weight-only int8, symmetric per output channel ([-127, 127], scales by option "
        "weight_calibration), round to nearest; float32 activations")),
    "w8a16-gptq": Recipe("w8a16-gptq", "none", weights="int8-weight-only", weight_solver="gptq",
                         description=("weight-only int8 per output channel, codes chosen by GPTQ "
                                      "from calibration Hessians (pass options damp, act-order)")),
    "w8a16-awq": Recipe("w8a16-awq", "none", weights="int8-weight-only", weight_solver="awq",
                        description=("weight-only int8 per output channel, with activation-aware "
                                     "per-channel scales searched on calibration data")),
    "fp16": Recipe("fp16", "lowp", weights="fp16", description=(
        "linear, conv2d and matmul on fp16 operands with float32 accumulation; the baseline "
        "int8 is compared against")),
    "bf16": Recipe("bf16", "lowp", weights="bf16", description=(
        "linear, conv2d and matmul on bf16 operands with float32 accumulation")),
    "fp8": Recipe("fp8", "lowp", weights="fp8", options=QuantOptions(calibration="minmax"),
                  description=(
        "linear, conv2d and matmul on float8 operands (option fp8_format: e4m3 or e5m2) with "
        "per-tensor scales: weights amax / max, activations calibrated amax (minmax unless "
        "option calibration says otherwise); exact accumulation, float32 outputs")),
    "w8a8-dynamic": Recipe("w8a8-dynamic", "dynamic", description=(
        "int8 weights per output channel; linear-layer activations quantized per token "
        "at run time (asymmetric int8)")),
}

CPU_PATHS = ("auto", "avx512-vnni", "avx2", "generic")
_OPTION_KINDS = {"linear", "conv2d", "matmul", "add", "pool", "cat"}


def _as_options(options: Any, base: QuantOptions | None = None) -> QuantOptions:
    """`options` as QuantOptions; a dict is applied on top of `base` (the recipe's own)."""
    if options is None:
        return base or QuantOptions()
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        options = dataclasses.asdict(options)
    if not isinstance(options, Mapping):
        raise RecipeError(f"options must be a dict or QuantOptions, got {type(options).__name__}")
    valid = {f.name for f in dataclasses.fields(QuantOptions)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise RecipeError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    values = dict(options)
    if isinstance(values.get("calibration_options"), Mapping):
        values["calibration_options"] = tuple(sorted(values["calibration_options"].items()))
    for key in ("keep_float", "keep_float_ops"):
        if isinstance(values.get(key), str):
            values[key] = (values[key],)
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    return dataclasses.replace(base or QuantOptions(), **values)


_OPTION_TYPES = (("calibration", str), ("symmetric_activations", bool), ("numerics", bool),
                 ("dump_only_changed", bool), ("alpha", (int, float)), ("group_size", int),
                 ("weight_symmetric", bool), ("fp8_format", str),
                 ("progress", (bool, type(None))), ("cpu_path", str), ("tune_trials", int),
                 ("tune_seconds", (int, float)), ("tune_rpc", (str, type(None))),
                 ("cache", bool), ("cache_dir", (str, type(None))), ("profile", bool),
                 ("sensitivity", bool), ("equalize", bool), ("bias_correction", bool))


def _kind_names(kinds) -> str:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join("None" if k is type(None) else k.__name__ for k in kinds)


def _check_types(options: QuantOptions) -> None:
    for name, kinds in _OPTION_TYPES:
        value = getattr(options, name)
        if not isinstance(value, kinds):
            raise RecipeError(f"option {name} expects {_kind_names(kinds)}, got {value!r}")
    for name in ("keep_float", "keep_float_ops"):
        value = getattr(options, name)
        if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
            raise RecipeError(f"option {name} expects a list of strings, got {value!r}")
    pairs = options.calibration_options
    if not isinstance(pairs, tuple) or not all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
        raise RecipeError(f"option calibration_options expects a dict, got {pairs!r}")


def _check(options: QuantOptions) -> None:
    _check_types(options)
    if options.calibration not in CALIBRATION_METHODS:
        raise RecipeError(f"unknown calibration method '{options.calibration}'; "
                          f"valid: {', '.join(CALIBRATION_METHODS)}")
    if options.weight_calibration not in ("minmax", "mse"):
        raise RecipeError(f"unknown weight_calibration '{options.weight_calibration}'; "
                          "valid: minmax, mse")
    check_budget(options.budget)
    if options.fp8_format not in FP8_FORMATS:
        raise RecipeError(f"unknown fp8_format {options.fp8_format!r}; "
                          f"valid: {', '.join(FP8_FORMATS)}")
    if options.kv_cache is not None and options.kv_cache not in KV_CACHE_MODES:
        raise RecipeError(f"unknown kv_cache {options.kv_cache!r}; "
                          f"valid: None, {', '.join(KV_CACHE_MODES)}")
    if options.cpu_path not in CPU_PATHS:
        raise RecipeError(f"unknown cpu_path {options.cpu_path!r}; valid: {', '.join(CPU_PATHS)}")
    if options.tune_trials < 0 or options.tune_seconds < 0:
        raise RecipeError("tune_trials and tune_seconds must be >= 0")
    if options.tune_rpc is not None and len(options.tune_rpc.rsplit(":", 2)) != 3:
        raise RecipeError(f"tune_rpc expects 'host:port:key', got {options.tune_rpc!r}")
    bad = sorted(set(options.keep_float_ops) - _OPTION_KINDS)
    if bad:
        raise RecipeError(f"keep_float_ops: unknown op kind(s) {', '.join(bad)}; "
                          f"valid: {', '.join(sorted(_OPTION_KINDS))}")


def resolve_recipe(recipe: "str | Recipe", options: Any = None) -> Recipe:
    """The recipe named `recipe` with `options` applied; RecipeError names what is wrong."""
    if isinstance(recipe, Recipe):
        base = recipe
    elif isinstance(recipe, str) and recipe in RECIPES:
        base = RECIPES[recipe]
    else:
        raise RecipeError(f"unknown recipe '{recipe}'; valid: {', '.join(sorted(RECIPES))}")
    resolved = _as_options(options, base.options)
    _check(resolved)
    return dataclasses.replace(base, options=resolved)
