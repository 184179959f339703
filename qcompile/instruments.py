"""Built-in instruments: dumps, printing, numeric comparison with the float model."""
from __future__ import annotations

import copy
import math
import os
import sys
import warnings

import torch

from .dot import graph_to_dot
from .dump import format_graph
from .op_kinds import is_qcompile_op
from .pass_manager import Instrument, PassRecord


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


class DumpInstrument(Instrument):
    """Writes NNN-pass.txt after each pass (or only after a change), and final.dot."""

    def __init__(self, dump_dir: str, only_changed: bool = False):
        self.dump_dir = dump_dir
        self.only_changed = only_changed

    def _write(self, filename: str, text: str) -> None:
        with open(os.path.join(self.dump_dir, filename), "w", encoding="utf-8") as f:
            f.write(text)

    def begin(self, gm, ctx) -> None:
        os.makedirs(self.dump_dir, exist_ok=True)
        for name in os.listdir(self.dump_dir):
            if name[:3].isdigit() and name.endswith(".txt") or name in ("final.txt", "final.dot"):
                os.remove(os.path.join(self.dump_dir, name))
        self._write("000-capture.txt", format_graph(gm))

    def after_pass(self, record: PassRecord, gm, ctx, outputs) -> None:
        if record.changed or not self.only_changed:
            self._write(f"{record.index:03d}-{_safe(record.name)}.txt", format_graph(gm))

    def write_final(self, gm) -> None:
        """The graph as the backend runs it (kernels chosen): final.txt and final.dot."""
        self._write("final.txt", format_graph(gm))
        self._write("final.dot", graph_to_dot(gm))


class PrintInstrument(Instrument):
    """Prints the graph after each pass that changed it (print-after-change)."""

    def __init__(self, stream=None, only_changed: bool = True):
        self.stream = stream or sys.stderr
        self.only_changed = only_changed

    def after_pass(self, record, gm, ctx, outputs) -> None:
        if record.changed or not self.only_changed:
            print(f"// after {record.spec}", file=self.stream)
            print(format_graph(gm), file=self.stream)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal to quantization-noise ratio in dB (inf when equal)."""
    ref = reference.detach().double()
    noise = (ref - approx.detach().double()).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def outputs_sqnr(reference: list, outputs: list) -> float | None:
    """Worst SQNR over the floating-point outputs."""
    values = [sqnr_db(r, o.float()) for r, o in zip(reference, outputs)
              if r.is_floating_point() and r.shape == o.shape]
    return min(values) if values else None


class NumericsInstrument(Instrument):
    """After each pass, the model-output SQNR against the captured float graph."""

    def __init__(self):
        self.reference: list = []

    def begin(self, gm, ctx) -> None:
        from .graph_run import flatten_outputs, run_recording
        out, _ = run_recording(gm, ctx.example_inputs)
        self.reference = flatten_outputs(out)

    def after_pass(self, record: PassRecord, gm, ctx, outputs) -> None:
        record.sqnr_db = outputs_sqnr(self.reference, outputs)


def is_float_graph(gm) -> bool:
    return not any(is_qcompile_op(n) for n in gm.graph.nodes)


class FloatSnapshotInstrument(Instrument):
    """Keeps a copy of the last graph before quantization (for per-layer error)."""

    def __init__(self):
        self.snapshot = None

    def before_pass(self, spec, gm, ctx) -> None:
        if is_float_graph(gm):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self.snapshot = copy.deepcopy(gm)
