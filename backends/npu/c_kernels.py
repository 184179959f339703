"""Legalized Relax PrimFuncs -> plain C99 kernels through TVM's C code generator.

Each kernel is lowered with TVM's own TIR passes (the s_tir pipeline up to, not including,
MakePackedAPI), rewritten by tir_rewrite.py into a function with pointer parameters, then
printed by `target.build.c`. The TVM prelude (runtime headers, FFI context, export macros)
is stripped: what remains is `static void qc_k_<n>(int8_t* x, ..., int8_t* y)` per kernel,
with workspaces as trailing parameters the driver points into the arena.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx

from qcompile.errors import BackendError

from ..tvm.schedule import schedule_generic
from . import tir_rewrite as rw

_TARGET = {"kind": "c"}
_TVM_LEFTOVERS = re.compile(r"TVM|tvm_|__tvm|DLTensor|int\d+_t\d+|float\d+_t\d+")
_PRELUDE = ("// tvm target", "#define TVM_EXPORTS", '#include "tvm/', "#include <math.h>",
            "#include <stdbool.h>",
            "void* __tvm_ffi__library_ctx", "#ifdef __cplusplus", 'extern "C"', "#endif")


@dataclass(frozen=True)
class Kernel:
    """One lowered kernel: its C name, its pointer parameters' element types and the byte
    sizes of the workspaces it takes after its buffer arguments."""

    name: str
    func: tirx.PrimFunc
    param_dtypes: tuple
    workspaces: tuple


def _flatten_passes() -> list:
    """Blocks to loops over flat buffers; vectorized loops become serial."""
    return [
        s_tir.transform.CanonicalizeLoop(), s_tir.transform.LowerInitBlock(),
        s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
        s_tir.transform.ConvertBlocksToOpaque(), s_tir.transform.CompactBufferAllocation(),
        s_tir.transform.LowerMatchBuffer(), s_tir.transform.StmtSimplify(),
        s_tir.transform.LowerOpaqueBlock(), tirx.transform.FlattenBuffer(),
        tirx.transform.NarrowDataType(32), tirx.transform.VectorizeLoop(False),
    ]


def _finish_passes() -> list:
    """After scalarize: buffer reuse, unrolling, simplification, intrinsics."""
    return [tirx.transform.StorageRewrite(), tirx.transform.UnrollLoop(),
            tirx.transform.StmtSimplify(), tirx.transform.RemoveNoOp(),
            tirx.transform.LowerIntrin()]


def _tir_lower(func: tirx.PrimFunc) -> tirx.PrimFunc:
    target = tvm.target.Target(_TARGET)
    mod = tirx.transform.BindTarget(target)(tvm.IRModule({"k": func}))
    with target:
        mod = tvm.transform.Sequential(_flatten_passes())(mod)
        mod = tvm.IRModule({"k": rw.scalarize(mod["k"])})
        mod = tvm.transform.Sequential(_finish_passes())(mod)
    return mod["k"]


def _inline(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """cpu-int8's default schedule (producers inlined into consumers, so no full-size
    intermediate buffers) for legalized functions; hand-written kernels stay as they are."""
    if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
        return func
    try:
        return schedule_generic(func) or func
    except Exception:  # noqa: BLE001 - a schedule that does not apply: keep the naive loops
        return func


def lower_kernel(func: tirx.PrimFunc, shapes: list, name: str, origin: str) -> Kernel:
    """Lower `func` called on buffers of static `shapes` [(shape, dtype)] to kernel `name`.

    BackendError naming `origin` (the Relax function) if float arithmetic remains or the
    function cannot be written as plain C."""
    try:
        func = _inline(rw.specialize(func.without_attr("global_symbol"), shapes))
        func = _tir_lower(rw.serial_loops(func))
    except BackendError as err:
        raise BackendError(f"kernel {origin}: {err.message}") from err
    except Exception as err:
        raise BackendError(f"kernel {origin}: TVM could not lower it: {type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}") from err
    floats = rw.float_values(func)
    if floats:
        raise BackendError(f"kernel {origin} computes in {floats[0]}: npu-int8 runs integer "
                           "kernels only (keep the op on the host or use an integer-only form)")
    func, workspaces = rw.hoist_workspaces(func)
    func = rw.pointer_params(rw.drop_unused_binds(func), name)
    dtypes = tuple(str(p.ty.element_type.dtype) for p in func.params)
    return Kernel(name, func, dtypes, tuple(size for _, size in workspaces))


def _strip_prelude(source: str) -> str:
    lines = [ln for ln in source.splitlines() if not ln.startswith(_PRELUDE)]
    text = "\n".join(lines).replace("TVM_DLL ", "static ")
    text = re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
    leftover = _TVM_LEFTOVERS.search(text)
    if leftover:
        raise BackendError(f"the generated C still refers to '{leftover.group(0)}' (a TVM "
                           "runtime call or vector type); a kernel could not be made plain C")
    return text


def kernels_c(kernels: list) -> str:
    """The C text of `kernels`: declarations then definitions, no TVM header or runtime."""
    if not kernels:
        return ""
    mod = tvm.IRModule({k.name: k.func for k in kernels})
    try:
        built = tvm.get_global_func("target.build.c")(mod, tvm.target.Target(_TARGET))
    except Exception as err:
        raise BackendError(f"TVM's C code generator failed: {type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}") from err
    return _strip_prelude(built.inspect_source())
