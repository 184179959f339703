"""`qcompile bisect`: the numeric debugger from the command line."""
from __future__ import annotations

from .cli_commands import _model_dir, _on_path, as_inputs, load_calibration, load_model, \
    load_pt, parse_options


def cmd_bisect(args) -> int:
    from . import debug
    options = parse_options(args.option)
    options.setdefault("progress", False)
    example = as_inputs(load_pt(args.example, "example"), args.example, "example")
    calibration = load_calibration(args.calib) if args.calib else None
    common = dict(target=args.target, recipe=args.recipe, options=options)
    with _on_path(_model_dir(args.model)):
        model = load_model(args.model)
        result = debug.bisect(model, example, calibration, threshold_db=args.threshold,
                              pipeline=args.pipeline, **common)
        print(result, end="")
        if args.sensitivity:
            print(debug.sensitivity(model, example, calibration, **common), end="")
    return 0
