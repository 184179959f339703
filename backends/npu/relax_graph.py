"""The integer part of a lowered graph as a legalized Relax module with static shapes, and
its `main` read back as a list of kernel calls on named tensors.

The cpu-int8 converters (backends/tvm/relax_convert.py) build the Relax ops, inside
`cpu_features.limited("generic")` so that no x86 intrinsic is emitted; the export here keeps
every dimension static (the C model has one fixed shape per tensor).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from qcompile.errors import BackendError

from ..tvm import relax_convert as rc
from ..tvm.cpu_features import limited
from .acc_ops import CONVERTERS as ACC_CONVERTERS


@dataclass(frozen=True)
class Tensor:
    """A tensor of the Relax main: kind "input" | "const" | "act", its key, shape, dtype."""

    kind: str
    key: object
    shape: tuple
    dtype: str

    @property
    def nbytes(self) -> int:
        count = 1
        for extent in self.shape:
            count *= extent
        return count * torch.empty((), dtype=getattr(torch, self.dtype)).element_size()


@dataclass(frozen=True)
class Call:
    """`out = func(*args)`: one call_tir of the Relax main, in program order."""

    func: str
    args: tuple
    out: Tensor


def _static_relax(gm: fx.GraphModule, example_inputs: tuple):
    return rc.to_relax(gm, example_inputs, dynamic_batch=False,
                       extra_converters=ACC_CONVERTERS)


def _legalize(mod):
    import tvm
    from tvm import relax
    passes = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
              relax.transform.FoldConstant(), relax.transform.FuseOps(),
              relax.transform.FuseTIR(), relax.transform.DeadCodeElimination()]
    with tvm.target.Target({"kind": "c"}):
        return tvm.transform.Sequential(passes)(mod)


def integer_module(gm: fx.GraphModule, example_inputs: tuple):
    """Legalized, fused Relax module of `gm` (integer ops only) with static shapes."""
    try:
        with limited("generic"):
            return _legalize(_static_relax(gm, example_inputs))
    except BackendError:
        raise
    except Exception as err:
        raise BackendError(f"TVM could not import the integer graph: {type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}") from err


def _tensor_of(kind, key, ty) -> Tensor:
    return Tensor(kind, key, tuple(int(s) for s in ty.shape.values), str(ty.dtype))


class _Reader:
    """Walks the bindings of `main`, naming every tensor it meets."""

    def __init__(self, func):
        self.values: dict = {}
        self.constants: list = []
        self._const_index: dict = {}
        self.calls: list[Call] = []
        for index, param in enumerate(func.params):
            self.values[param.__chandle__()] = _tensor_of("input", index, param.ty)

    def value(self, expr):
        import tvm
        if isinstance(expr, tvm.ir.expr.Constant):
            index = self._const_index.setdefault(expr.__chandle__(), len(self.constants))
            if index == len(self.constants):
                self.constants.append(expr.value.numpy())
            return _tensor_of("const", index, expr.ty)
        key = expr.__chandle__()
        if key not in self.values:
            raise BackendError(f"the Relax main uses {type(expr).__name__} {expr}, which "
                               "the C driver cannot express")
        return self.values[key]

    def bind(self, var, value) -> None:
        import tvm
        from tvm import relax
        if isinstance(value, relax.Call) and value.op.same_as(tvm.ir.Op.get("relax.call_tir")):
            if isinstance(value.ty, relax.TupleType) or len(value.args) > 2:
                raise BackendError(f"call_tir {value.args[0].name_hint} with several outputs "
                                   "or symbolic arguments is not supported by the C driver")
            out = _tensor_of("act", f"{var.name}.{len(self.calls)}", value.ty)
            args = tuple(self.value(a) for a in value.args[1].fields)
            self.calls.append(Call(value.args[0].name_hint, args, out))
            self.values[var.__chandle__()] = out
        elif isinstance(value, relax.Tuple):
            self.values[var.__chandle__()] = tuple(self.value(f) for f in value.fields)
        elif isinstance(value, relax.Var):
            self.values[var.__chandle__()] = self.value(value)
        else:
            raise BackendError(f"the Relax main binds {type(value).__name__} ({value}); only "
                               "kernel calls (call_tir) can run in the C driver")


def read_main(mod):
    """(calls, constants, outputs) of `mod["main"]`: outputs a list of Tensors."""
    from tvm import relax
    func = mod["main"]
    reader = _Reader(func)
    body = func.body
    for block in body.blocks:
        for binding in block.bindings:
            reader.bind(binding.var, binding.value)
    result = body.body
    if isinstance(result, relax.Tuple):
        outputs = [reader.value(f) for f in result.fields]
    else:
        outputs = reader.value(result)
    outputs = list(outputs) if isinstance(outputs, tuple) else [outputs]
    return reader.calls, reader.constants, outputs


def main_inputs(mod) -> list:
    """The parameters of `mod["main"]` as input Tensors, in order."""
    return [_tensor_of("input", i, p.ty) for i, p in enumerate(mod["main"].params)]
