"""Run the calibration batches through a graph: the one loop calibrate and the statistics
passes (SmoothQuant, GPTQ, AWQ) share, with input checks and a progress line."""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompile.errors import CalibrationError
from qcompile.inputs import as_tuple, check_inputs
from qcompile.progress import Progress


def run_calibration_batches(gm: fx.GraphModule, ctx, label: str) -> int:
    """Call `gm` on every calibration batch (checked against the example inputs); returns
    how many batches ran. Empty, malformed or non-finite data raises CalibrationError."""
    if ctx.calibration_data is None:
        raise CalibrationError("no calibration data (compile() passes the example inputs "
                               "when calibration_data is None)")
    count = 0
    with torch.no_grad(), Progress(label, enabled=ctx.options.progress) as bar:
        for index, batch in enumerate(ctx.calibration_data):
            try:
                args = as_tuple(batch)
            except TypeError as err:
                raise CalibrationError(f"calibration batch {index}: {err}") from None
            check_inputs(args, ctx.input_specs, f"calibration batch {index}",
                         error=CalibrationError, check_finite=True)
            gm(*args)
            count += 1
            bar.update()
    if count == 0:
        raise CalibrationError("calibration_data yielded no batches (an empty or already "
                               "consumed iterable?)")
    return count
