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


def compile(model, target: str = "reference", example_inputs=None, calibration_data=None,
            recipe="w8a8", pipeline=None, dump_dir: str | None = None, partial: bool = False,
            options=None) -> CompiledModel:
    """Quantize and compile `model` for `target`. See DESIGN.md for every argument."""
    _load_builtin_passes()
    tgt = get_target(target)
    resolved = resolve_recipe(recipe, options)
    args = normalize_inputs(example_inputs)
    try:
        captured = capture(model, args)
    except CaptureError as err:
        if not partial:
            raise
        from .partial_compile import compile_partial
        return compile_partial(model, args, calibration_data, err, compile, dump_dir=dump_dir,
                               target=target, recipe=recipe, pipeline=pipeline, options=options)
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
    manager = PassManager(Pipeline.parse(tgt.pipeline if pipeline is None else pipeline,
                                         default=tgt.pipeline),
                          instruments)
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
