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


NCHW_FROM_NHWC = (0, 3, 1, 2)


def _static_ones(dims) -> bool:
    import tvm
    return all(isinstance(d, tvm.tirx.IntImm) and int(d) == 1 for d in dims)


def _same_dims(a, b) -> bool:
    """Whether two shapes (lists of PrimExpr) are the same expressions."""
    import tvm_ffi
    return len(a) == len(b) and all(tvm_ffi.structural_equal(p, q) for p, q in zip(a, b))


def _dims4(x) -> list | None:
    """The 4 dims of a Relax tensor x of known 4-D shape; else None."""
    from tvm import relax
    ty = getattr(x, "ty", None)
    if not isinstance(ty, relax.TensorType) or ty.ndim != 4 or ty.shape is None:
        return None
    return list(ty.shape.values)


def _is_pixel_reshape(src, x) -> bool:
    """x = reshape(src) with src [n, 1, 1, C] and x [n, C, 1, 1]: the same bytes as the
    transpose (0, 3, 1, 2) of src."""
    s, d = _dims4(src), _dims4(x)
    if s is None or d is None:
        return False
    return _static_ones(s[1:3]) and _static_ones(d[2:]) and _same_dims([s[0], s[3]], d[:2])


def nhwc_source(bb, x):
    """The NHWC tensor behind x [n, C, H, W] when x is only a layout view of it:
    `permute_dims(src, [0, 3, 1, 2])` (a conv kernel's output, or an op computed in NHWC),
    or the reshape of an [n, 1, 1, C] src; else None."""
    import tvm
    from tvm import relax
    bound = bb.lookup_binding(x) if isinstance(x, relax.Var) else None
    if not isinstance(bound, relax.Call):
        return None
    if (bound.op == tvm.ir.Op.get("relax.permute_dims") and bound.attrs.axes is not None
            and [int(a) for a in bound.attrs.axes] == list(NCHW_FROM_NHWC)):
        return bound.args[0]
    if bound.op == tvm.ir.Op.get("relax.reshape") and _is_pixel_reshape(bound.args[0], x):
        return bound.args[0]
    return None


def nhwc_sources(bb, tensors, same_shape: bool = True):
    """The NHWC sources of `tensors` when every one is 4-D and a layout view of an NHWC
    tensor (nhwc_source), all of one shape unless `same_shape` is False; else None."""
    shapes = [_dims4(t) for t in tensors]
    if not tensors or any(s is None for s in shapes):
        return None
    sources = [nhwc_source(bb, t) for t in tensors]
    if any(s is None for s in sources):
        return None
    if same_shape and not all(_same_dims(s, shapes[0]) for s in shapes):
        return None
    return sources


def to_nchw(bb, y):
    """The NHWC tensor y [n, H, W, C] as NCHW: a reshape when H = W = 1, else
    `permute_dims(y, [0, 3, 1, 2])`; nhwc_source (and so as_nhwc) undoes either."""
    from tvm import relax
    n, h, w, c = y.ty.shape.values
    if _static_ones([h, w]):
        return bb.emit(relax.op.reshape(y, (n, c, h, w)))
    return bb.emit(relax.op.permute_dims(y, NCHW_FROM_NHWC))


def as_nhwc(bb, x):
    """x [n, C, H, W] as NHWC: its source when x is a layout view of an NHWC tensor
    (nhwc_source: the previous im2col GEMM's output, or an op computed in NHWC), else a
    transpose of x."""
    from tvm import relax
    src = nhwc_source(bb, x)
    if src is not None:
        return src
    return bb.emit(relax.op.permute_dims(x, (0, 2, 3, 1)))
