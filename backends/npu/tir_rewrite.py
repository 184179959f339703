"""TIR rewrites that turn a legalized PrimFunc into one TVM's C code generator prints as a
plain C function: static shapes, serial loops, scalar arithmetic, pointer parameters, and
workspaces passed in by the caller instead of allocated through the TVM runtime.
"""
from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir import PointerType, PrimType

from qcompile.errors import BackendError

STACK_BYTES = 1024  # larger local buffers become workspace parameters (arena slots)

_BINARY = (tirx.Add, tirx.Sub, tirx.Mul, tirx.Div, tirx.Mod, tirx.FloorDiv, tirx.FloorMod,
           tirx.Min, tirx.Max, tirx.EQ, tirx.NE, tirx.LT, tirx.LE, tirx.GT, tirx.GE, tirx.And,
           tirx.Or)


def dtype_of(expr) -> tvm.DataType:
    return tvm.DataType(str(expr.ty.dtype))


def _scalar(dtype: tvm.DataType) -> str:
    return str(dtype.with_lanes(1))


def specialize(func: tirx.PrimFunc, shapes: list) -> tirx.PrimFunc:
    """`func` with every buffer parameter bound to a static (shape, dtype) from `shapes`."""
    if len(shapes) != len(func.params):
        raise BackendError(f"kernel takes {len(func.params)} buffers, the call passes "
                           f"{len(shapes)} (symbolic scalar parameters are not supported)")
    binding = {p: tirx.decl_buffer(list(shape), dtype, name=p.name)
               for p, (shape, dtype) in zip(func.params, shapes) if not _static(p)}
    return func.specialize(binding) if binding else func


def _static(param) -> bool:
    shape = getattr(param.ty, "shape", None)
    return shape is not None and all(isinstance(e, (int, tirx.IntImm)) for e in shape)


def serial_loops(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Parallel loops as serial ones (the C model runs on one core, without a thread pool)."""
    def serial(loop):
        if loop.kind == tirx.ForKind.PARALLEL:
            return tirx.For(loop.loop_var, loop.min, loop.extent, tirx.ForKind.SERIAL,
                            loop.body, loop.thread_binding, loop.annotations)
        return loop
    return func.with_body(tvm_ffi.structural_map(func.body, (tirx.For, serial)))


def scalarize_expr(expr, lane):
    """Lane `lane` of a vector expression, as a scalar expression."""
    if dtype_of(expr).lanes == 1:
        return expr
    if isinstance(expr, tirx.Ramp):
        return expr.base + expr.stride * lane
    if isinstance(expr, tirx.Broadcast):
        return expr.value
    if isinstance(expr, tirx.Cast):
        return tirx.Cast(_scalar(dtype_of(expr)), scalarize_expr(expr.value, lane))
    if isinstance(expr, tvm.ir.TensorLoad):
        return tirx.BufferLoad(expr.source, [scalarize_expr(i, lane) for i in expr.indices])
    if isinstance(expr, _BINARY):
        return type(expr)(scalarize_expr(expr.a, lane), scalarize_expr(expr.b, lane))
    if isinstance(expr, tirx.Not):
        return tirx.Not(scalarize_expr(expr.a, lane))
    if isinstance(expr, tirx.Select):
        return tirx.Select(*(scalarize_expr(e, lane) for e in
                             (expr.condition, expr.true_value, expr.false_value)))
    if isinstance(expr, tvm.ir.Call):
        return tirx.call_intrin(_scalar(dtype_of(expr)), expr.op.name,
                                *(scalarize_expr(a, lane) for a in expr.args))
    raise BackendError(f"cannot write the vector expression {type(expr).__name__} "
                       f"({dtype_of(expr)}) as scalar C")


def _vector_bind_buffers(body) -> dict:
    buffers: dict = {}

    def visit(bind):
        dtype = dtype_of(bind.var)
        if dtype.lanes > 1:
            buf = tirx.decl_buffer((dtype.lanes,), _scalar(dtype), name=f"{bind.var.name}_v")
            buffers[bind.var.__chandle__()] = buf
    tvm_ffi.structural_walk(body, (tirx.Bind, visit))
    return buffers


def vector_binds_to_arrays(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`v = <vector expr>` as a local array of its lanes; reads of v load the array."""
    buffers = _vector_bind_buffers(func.body)
    if not buffers:
        return func

    def whole(buf):
        return [tirx.Ramp(tirx.IntImm("int32", 0), tirx.IntImm("int32", 1), buf.ty.shape[0])]

    def use(var, kind):
        buf = buffers.get(var.__chandle__()) if kind == tvm_ffi.DefRegionKind.NONE else None
        return var if buf is None else tirx.BufferLoad(buf, whole(buf))

    def seq(stmt):
        out = []
        for s in stmt.seq:
            buf = buffers.get(s.var.__chandle__()) if isinstance(s, tirx.Bind) else None
            out += [s] if buf is None else [tirx.AllocBuffer(buf),
                                            tirx.BufferStore(buf, s.value, whole(buf))]
        return tirx.SeqStmt(out)
    body = tvm_ffi.structural_map(func.body, (tirx.SeqStmt, seq),
                                  with_def_region_kind=(tirx.Var, use))
    return func.with_body(body)


def _scalar_store(store):
    lanes = dtype_of(store.value).lanes
    if lanes == 1:
        return store
    lane = tirx.Var("lane", "int32")
    body = tirx.BufferStore(store.buffer, scalarize_expr(store.value, lane),
                            [scalarize_expr(i, lane) for i in store.indices])
    return tirx.For(lane, tirx.IntImm("int32", 0), tirx.IntImm("int32", lanes),
                    tirx.ForKind.SERIAL, body)


def scalarize(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Every vector store (explicit ramps, broadcasts) as a serial loop over its lanes."""
    func = vector_binds_to_arrays(drop_unused_binds(func))
    return func.with_body(tvm_ffi.structural_map(func.body, (tirx.BufferStore, _scalar_store)))


def _nbytes(buffer) -> int:
    count = 1
    for extent in buffer.ty.shape:
        if not isinstance(extent, (int, tirx.IntImm)):
            raise BackendError(f"buffer {buffer.name} has a symbolic size")
        count *= int(extent)
    return count * tvm.DataType(str(buffer.ty.dtype)).itemsize


def hoist_workspaces(func: tirx.PrimFunc, limit: int = STACK_BYTES):
    """Buffers of `limit` bytes or more become trailing pointer parameters.

    Returns (func, workspaces) with workspaces a list of (name, nbytes); the body binds each
    buffer to its parameter (the caller passes an arena slot)."""
    params, sizes = [], []

    def hoist(alloc):
        size = _nbytes(alloc.buffer)
        if size < limit:
            return alloc
        ptr = tirx.Var(f"ws{len(params)}", PointerType(PrimType(str(alloc.buffer.ty.dtype))))
        params.append(ptr)
        sizes.append((alloc.buffer.name, size))
        return tirx.DeclBuffer(alloc.buffer, data=ptr)

    body = tvm_ffi.structural_map(func.body, (tirx.AllocBuffer, hoist))
    return tirx.PrimFunc(list(func.params) + params, body, attrs=func.attrs), sizes


def pointer_params(func: tirx.PrimFunc, name: str) -> tirx.PrimFunc:
    """Buffer parameters as plain data pointers (`int8_t* x`), the buffers declared on them."""
    params, decls = [], []
    for param in func.params:
        if isinstance(param.ty, PointerType):
            params.append(param)
            continue
        ptr = tirx.Var(param.name, PointerType(PrimType(str(param.ty.dtype))))
        params.append(ptr)
        decls.append(tirx.DeclBuffer(param, data=ptr))
    new = tirx.PrimFunc(params, tirx.SeqStmt(decls + [func.body]))
    return new.with_attr("target", func.attrs["target"]).with_attr("global_symbol", name)


def _var_uses(body) -> dict:
    counts: dict = {}

    def count(var):
        key = var.__chandle__()
        counts[key] = counts.get(key, 0) + 1
    tvm_ffi.structural_walk(body, (tirx.Var, count))
    return counts


def _drop_unused_once(body, counts: dict):
    """(body without the bindings of variables seen once in `counts`, how many went)."""
    dropped = []

    def drop(seq):
        kept = [s for s in seq.seq if not (isinstance(s, tirx.Bind)
                                           and counts.get(s.var.__chandle__(), 0) <= 1)]
        if len(kept) == len(seq.seq):
            return seq
        dropped.append(len(seq.seq) - len(kept))
        if len(kept) == 1:
            return kept[0]
        return tirx.SeqStmt(kept) if kept else tirx.Evaluate(tirx.IntImm("int32", 0))
    return tvm_ffi.structural_map(body, (tirx.SeqStmt, drop)), sum(dropped)


def drop_unused_binds(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Remove `x = value` bindings whose variable is never read (gcc -Wall rejects them).

    A variable seen once in the body is seen only at its own binding; dropping one binding
    can leave another unread, so this repeats until nothing changes."""
    for _ in range(8):
        body, dropped = _drop_unused_once(func.body, _var_uses(func.body))
        func = func.with_body(body)
        if not dropped:
            break
    return func


def float_values(func: tirx.PrimFunc) -> list:
    """The float-typed expressions and buffers of `func` (names, for error messages)."""
    found = []

    def visit(expr):
        try:
            if dtype_of(expr).is_float:
                found.append(str(expr.ty.dtype))
        except (AttributeError, ValueError, TypeError):
            pass
    tvm_ffi.structural_walk(func.body, [(cls, visit) for cls in (tvm.ir.TensorLoad, tirx.Cast)])
    return found
