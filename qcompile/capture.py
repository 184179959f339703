"""Capture: nn.Module -> fx.GraphModule (an ATen graph from torch.export, non-strict)."""
from __future__ import annotations

import io
import logging

import re
import warnings
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch.fx.experimental.symbolic_shapes import is_concrete_int

from .errors import CaptureError, QCompileWarning

_USER_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*([^\n]*)')


@dataclass(frozen=True)
class InputSpec:
    """What one model input must look like: dtype and shape (None where the size may vary)."""
    name: str
    dtype: torch.dtype
    shape: tuple[int | None, ...]

    def describe(self) -> str:
        dims = ",".join("*" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {str(self.dtype).replace('torch.', '')}[{dims}]"


@dataclass
class Captured:
    graph_module: fx.GraphModule
    input_specs: tuple[InputSpec, ...]


def normalize_inputs(example_inputs) -> tuple:
    if example_inputs is None:
        raise CaptureError("example_inputs are required: a tuple of tensors (or one tensor)")
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    if not isinstance(example_inputs, tuple):
        raise CaptureError(f"example_inputs must be a tuple of tensors, got "
                           f"{type(example_inputs).__name__}")
    return example_inputs


@contextmanager
def _eval_mode(model: torch.nn.Module):
    was_training = model.training
    if was_training:
        warnings.warn("qcompile: the model is in training mode; it is captured in eval mode "
                      "(dropout off, BatchNorm running statistics). Call model.eval() to "
                      "silence this.", QCompileWarning, stacklevel=4)
        model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _user_location(err: BaseException) -> str | None:
    text = "".join(str(a) for a in (err, getattr(err, "__cause__", None)) if a)
    frames = [f for f in _USER_FRAME.findall(text)
              if "/torch/" not in f[0] and "/site-packages/" not in f[0]]
    if frames:
        path, line, _func, code = frames[-1]
        return f"{path}:{line}: {code.strip()}"
    tb = err.__traceback__
    location = None
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if "/torch/" not in name and "/qcompile/" not in name and "site-packages" not in name:
            location = f"{name}:{tb.tb_lineno}"
        tb = tb.tb_next
    return location


def _reason(err: BaseException) -> str:
    first = str(err).strip().split("\n")[0]
    return f"{type(err).__name__}: {first[:400]}"


# torch loggers that print whole graphs on a failed capture; the CaptureError says it better
_NOISY_LOGGERS = ("torch.fx.experimental.symbolic_shapes", "torch._dynamo", "torch.export",
                  "torch._export", "torch._subclasses.fake_tensor")


@contextmanager
def _quiet_torch_logs():
    """Silence torch's warnings and the partial graph torch.export prints to stderr when it
    fails; what was printed is kept (CaptureError.torch_output) for whoever wants it."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    printed = io.StringIO()
    try:
        with redirect_stderr(printed):
            yield printed
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export(model: torch.nn.Module, args: tuple, dynamic_batch: bool):
    dims = None
    if dynamic_batch:
        auto = torch.export.Dim.AUTO
        dims = tuple({0: auto} if isinstance(a, torch.Tensor) and a.dim() > 0 else None
                     for a in args)
    return torch.export.export(model, args, dynamic_shapes=dims, strict=False)


def _input_specs(gm: fx.GraphModule) -> tuple[InputSpec, ...]:
    specs = []
    for node in gm.graph.find_nodes(op="placeholder"):
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        shape = tuple(int(d) if is_concrete_int(d) else None for d in val.shape)
        specs.append(InputSpec(node.name, val.dtype, shape))
    return tuple(specs)


def _drop_guard_module(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            gm.graph.erase_node(node)
    gm.recompile()


def capture(model: torch.nn.Module, example_inputs) -> Captured:
    """Export `model` with a dynamic batch dimension (static if that fails)."""
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    args = normalize_inputs(example_inputs)
    with _eval_mode(model), _quiet_torch_logs() as printed:
        try:
            try:
                program = _export(model, args, dynamic_batch=True)
            except Exception:
                program = _export(model, args, dynamic_batch=False)
        except Exception as err:
            error = CaptureError(f"torch.export could not capture the model: {_reason(err)}",
                                 source=_user_location(err))
            error.torch_output = printed.getvalue()
            raise error from err
    gm = program.module()
    _drop_guard_module(gm)
    specs = _input_specs(gm)
    _warn_fixed_batch(args, specs)
    return Captured(gm, specs)


def _warn_fixed_batch(args: tuple, specs: tuple) -> None:
    tensors = [a for a in args if isinstance(a, torch.Tensor) and a.dim() > 0]
    if specs and tensors and all(s.shape and s.shape[0] is not None for s in specs) \
            and any(t.shape[0] == 1 for t in tensors):
        warnings.warn("qcompile: the example inputs have batch size 1, so the batch dimension "
                      "is fixed at 1 (torch.export specializes sizes 0 and 1); give an example "
                      "with batch size >= 2 to run other batch sizes", QCompileWarning,
                      stacklevel=4)
