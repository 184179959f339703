"""Embed the GEMM kernels in a Relax module: the step towards whole-model lowering.

One Relax function per graph; each qlinear becomes `R.call_tir(kernel, [x, *constants])`
with its packed weight and per-channel constants as `relax.const` (packed once at build
time), and the batch dimension a symbolic shape variable. `tvm.compile` runs the default
Relax CPU pipeline (LegalizeOps, FuseOps/FuseTIR, memory planning, VM lowering), which
leaves these hand-written PrimFuncs as they are, then builds them with the TIR pipeline.

    mod = qlinear_module([kernel1, kernel2])       # y = k2(k1(x)), e.g. an int8 MLP
    run = RelaxRunner(mod, kernel1.spec.path)
    y = run(x)
"""
from __future__ import annotations

import torch

from . import cpu_features
from .gemm_tir import kernel as make_prim_func


def _out_dtype(spec) -> str:
    return "int8" if spec.mode == "int8" else "float32"


def qlinear_module(kernels: list, func_name: str = "main"):
    """IRModule with `main(x: int8[m, K]) -> y[m, N]` chaining the bound kernels in order.

    Each entry is a qlinear.GemmKernel; consecutive kernels must agree on N == next K and
    all but the last must produce int8.
    """
    import tvm
    from tvm import relax

    first = kernels[0].spec
    m = tvm.tirx.Var("m", "int64")
    x = relax.Var("x", relax.TensorType((m, first.k), "int8"))
    bb = relax.BlockBuilder()
    with bb.function(func_name, [x]):
        with bb.dataflow():
            value = x
            for index, kern in enumerate(kernels):
                value = emit_gemm(bb, kern, value, f"qgemm{index}")
            out = bb.emit_output(value)
        bb.emit_func_output(out)
    return bb.get()


def emit_gemm(bb, kern, x, name: str = "qgemm"):
    """Emit `kern` on the Relax tensor x [..., K] in the current dataflow block: [..., N].

    Adds kern's PrimFunc to the module (structurally equal PrimFuncs are added once), its
    packed weight and constants as relax.const, and reshapes N-D inputs to [rows, K] and back.
    """
    from tvm import relax

    spec = kern.spec
    shape = list(x.ty.shape.values)
    rows = x
    if len(shape) != 2:
        rows = bb.emit(relax.op.reshape(x, (-1, spec.k)))
    # no global_symbol: TVMScript names every kernel of one mode alike ("qlinear_int8"), and
    # a module may hold several specs; AttachGlobalSymbol names it after its GlobalVar
    # tirx.is_scheduled: hand-written, the default schedules of schedule.py leave it alone
    func = make_prim_func(spec).without_attr("global_symbol").with_attr("tirx.is_scheduled", True)
    gvar = bb.add_func(func, name)
    # pass tvm tensors: relax.const silently narrows an int64 numpy array to int32
    consts = [relax.const(c) for c in kern.constants]
    out_ty = relax.TensorType((rows.ty.shape.values[0], spec.n), _out_dtype(spec))
    y = bb.emit(relax.call_tir(gvar, [rows] + consts, out_ty))
    if len(shape) != 2:
        y = bb.emit(relax.op.reshape(y, shape[:-1] + [spec.n]))
    return y


class RelaxRunner:
    """tvm.compile + relax.VirtualMachine around a module from qlinear_module."""

    def __init__(self, mod, path: str, func_name: str = "main"):
        import tvm
        from tvm import relax

        self.exe = tvm.compile(mod, target=cpu_features.llvm_target(path))
        self.vm = relax.VirtualMachine(self.exe, tvm.cpu())
        self.func = self.vm[func_name]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import tvm

        out = self.func(tvm.runtime.from_dlpack(x.contiguous()))
        return torch.from_dlpack(out)


def as_nhwc(bb, x):
    """x [n, C, H, W] as NHWC: `src` when x is `permute_dims(src, [0, 3, 1, 2])` (the
    previous im2col GEMM's output), else a transpose of x."""
    import tvm
    from tvm import relax
    bound = bb.lookup_binding(x) if isinstance(x, relax.Var) else None
    if (isinstance(bound, relax.Call) and bound.op == tvm.ir.Op.get("relax.permute_dims")
            and bound.attrs.axes is not None
            and [int(a) for a in bound.attrs.axes] == [0, 3, 1, 2]):
        return bound.args[0]
    return bb.emit(relax.op.permute_dims(x, (0, 2, 3, 1)))
