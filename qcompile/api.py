"""compile(): capture -> pass pipeline -> backend -> CompiledModel with its report."""
from __future__ import annotations

from .batches import ReplayableBatches
from .capture import capture, normalize_inputs
from .compiled import CompiledModel
from .context import PassContext
from .errors import CaptureError
from .instruments import DumpInstrument, FloatSnapshotInstrument, NumericsInstrument
from .pass_manager import PassManager
from .pipeline import Pipeline
from .recipes import resolve_recipe
from .report_build import build_report, build_summary
from .targets import get_target


def _load_builtin_passes() -> None:
    from . import passes  # noqa: F401  (registers every built-in pass)


# Registered on `import qcompile`, so Pipeline.parse() and list_passes() see them before a compile.
_load_builtin_passes()


def _calibration(calibration_data, example_inputs, ctx_warn):
    if calibration_data is None:
        ctx_warn("no calibration_data given: calibrating on the example inputs only, which "
                 "rarely covers real ranges")
        return [example_inputs]
    return ReplayableBatches(calibration_data)


def _compile_with_accuracy_search(model, args, calibration_data, resolved, kwargs):
    """budget= and sensitivity=: several compiles on replayable calibration data."""
    from dataclasses import fields

    from .mixed_precision import compile_within_budget, ranked_layers
    from .recipes import QuantOptions
    options = {f.name: getattr(resolved.options, f.name) for f in fields(QuantOptions)}
    plain = {**options, "budget": None, "sensitivity": False}
    calibration = list(calibration_data) if calibration_data is not None else None
    if options["budget"] is not None:
        compiled = compile_within_budget(model, args, calibration, compile,
                                         {**kwargs, "options": {**plain, "budget": options["budget"]}})
    else:
        compiled = compile(model, example_inputs=args, calibration_data=calibration,
                           **{**kwargs, "options": plain})
    if options["sensitivity"] and not compiled.report.sensitivity:
        search = {**kwargs, "target": "reference", "dump_dir": None,
                  "example_inputs": args, "calibration_data": calibration}
        compiled.report.sensitivity = ranked_layers(model, args, calibration, compile, search, plain)
    return compiled


def compile(model, target: str = "reference", example_inputs=None, calibration_data=None,
            recipe="w8a8", pipeline=None, dump_dir: str | None = None, partial: bool = False,
            options=None) -> CompiledModel:
    """Quantize and compile `model` for `target`. See DESIGN.md for every argument."""
    _load_builtin_passes()
    tgt = get_target(target)
    resolved = tgt.fit(resolve_recipe(recipe, options))
    args = normalize_inputs(example_inputs)
    from .qat import QATModel, compile_qat
    if isinstance(model, QATModel):
        return compile_qat(model, tgt, args, calibration_data, dump_dir, options)
    if resolved.options.budget is not None or resolved.options.sensitivity:
        return _compile_with_accuracy_search(model, args, calibration_data, resolved, {
            "target": target, "recipe": recipe, "pipeline": pipeline, "dump_dir": dump_dir,
            "partial": partial})
    try:
        captured = capture(model, args)
    except CaptureError as err:
        if not partial:
            raise
        from .partial_compile import compile_partial
        return compile_partial(model, args, calibration_data, err, compile, dump_dir=dump_dir,
                               target=target, recipe=recipe, pipeline=pipeline, options=options)
    return compile_captured(captured, tgt, resolved, args, calibration_data,
                            tgt.pipeline if pipeline is None else pipeline, dump_dir)


def compile_captured(captured, tgt, resolved, args, calibration_data, pipeline: str,
                     dump_dir: str | None) -> CompiledModel:
    """Run `pipeline` on a captured graph, build it for `tgt`, and report (or, with option
    compile_cache, load the result of an identical earlier compile)."""
    key = None
    if resolved.options.compile_cache and resolved.options.cache and dump_dir is None:
        from . import compile_cache
        if calibration_data is not None:
            calibration_data = ReplayableBatches(calibration_data)
        calibration = calibration_data if calibration_data is not None else [args]
        key = compile_cache.compile_key(captured, tgt.name, resolved, pipeline, calibration)
        hit = compile_cache.lookup(resolved.options, key) if key else None
        if hit is not None and hit.target == tgt.name:
            hit.report.build = {**hit.report.build, "compile_cache": "hit"}
            return hit
    compiled = _compile_fresh(captured, tgt, resolved, args, calibration_data, pipeline,
                              dump_dir)
    if key is not None:
        from . import compile_cache
        compile_cache.store(resolved.options, key, compiled)
    return compiled


def _compile_fresh(captured, tgt, resolved, args, calibration_data, pipeline: str,
                   dump_dir: str | None) -> CompiledModel:
    ctx = PassContext(target=tgt.name, recipe=resolved, example_inputs=args,
                      input_specs=captured.input_specs)
    ctx.calibration_data = _calibration(calibration_data, args, ctx.warn)
    snapshot = FloatSnapshotInstrument()
    instruments = [snapshot]
    if resolved.options.numerics:
        instruments.append(NumericsInstrument())
    dumper = (DumpInstrument(dump_dir, only_changed=resolved.options.dump_only_changed)
              if dump_dir is not None else None)
    if dumper is not None:
        instruments.append(dumper)
    manager = PassManager(Pipeline.parse(pipeline, default=tgt.pipeline), instruments)
    graph = manager(captured.graph_module, ctx).graph_module
    runner = tgt.backend().build(graph, resolved.options, args)
    if dumper is not None:
        dumper.write_final(graph)
    report = build_report(graph, snapshot.snapshot, manager.records, ctx)
    report.build = build_summary(runner)
    if dump_dir is not None:
        from .html_report import write_html_report
        write_html_report(dump_dir, report)
    compiled = CompiledModel(graph, runner, report, tgt.name, resolved, captured.input_specs)
    if resolved.options.profile:
        compiled.profile(*args)
    return compiled
