"""Typed errors. Each names what is wrong and where: pass, node and the user's source line."""
from __future__ import annotations

import re

_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)')
_INTERNAL = ("/torch/", "/transformers/", "/qcompile/", "/site-packages/torch", "<eval_with_key>")


def user_source_line(node) -> str | None:
    """The innermost frame of the user's code that produced `node`, as 'file:line: code'."""
    trace = getattr(node, "meta", {}).get("stack_trace") if node is not None else None
    if not trace:
        return None
    frames = _FRAME.findall(trace)
    user = [f for f in frames if not any(part in f[0] for part in _INTERNAL)]
    chosen = (user or frames or [None])[-1]
    if chosen is None:
        return None
    path, line, _func, code = chosen
    return f"{path}:{line}: {code.strip()}"


def describe_node(node) -> str:
    target = getattr(node, "target", None)
    op = getattr(target, "__name__", None) or str(target)
    return f"%{node.name} ({op})"


class QCompileError(Exception):
    """Base of every qcompile error. `pass_name`, `node` and `source` say where."""

    def __init__(self, message: str, *, pass_name: str | None = None, node=None,
                 source: str | None = None):
        self.message = message
        self.pass_name = pass_name
        self.node_name = getattr(node, "name", None)
        self.source = source or user_source_line(node)
        self._node_text = describe_node(node) if node is not None else None
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.pass_name:
            where.append(f"pass '{self.pass_name}'")
        if self._node_text:
            where.append(f"node {self._node_text}")
        text = (", ".join(where) + ": " if where else "") + self.message
        if self.source:
            text += f"\n  at {self.source}"
        return text

    def with_pass(self, pass_name: str) -> "QCompileError":
        """Fill in the pass name when the raiser did not know it."""
        if self.pass_name is None:
            self.pass_name = pass_name
            self.args = (self._format(),)
        return self


class CaptureError(QCompileError):
    """The model could not be captured as a graph."""


class PipelineError(QCompileError):
    """Unknown pass, bad pipeline text, bad pass option, or a pass that failed."""


class TargetError(PipelineError):
    """Unknown target, or a target that cannot run on this machine."""


class RecipeError(QCompileError):
    """Unknown recipe or bad recipe options."""


class CalibrationError(QCompileError):
    """Calibration data that is empty, malformed or non-finite."""


class VerificationError(PipelineError):
    """A pass left the graph broken."""


class LoweringError(QCompileError):
    """A quantized pattern could not be lowered to integer ops."""


class BackendError(QCompileError):
    """A backend could not build or run the lowered graph."""


class ArtifactError(QCompileError):
    """A saved artifact is corrupt, truncated, too new or for another target."""


class InputError(QCompileError):
    """Inputs given to a compiled model do not match what it was compiled for."""


class QCompileWarning(UserWarning):
    """Something the user should know: calibration fell back, a model was in training mode, ..."""
