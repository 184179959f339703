"""Default CPU schedules for the PrimFuncs TVM's LegalizeOps writes, and the Relax pipeline
that applies them.

TVM 0.27's default Relax CPU pipeline schedules nothing: every legalized op (quantize,
requantize epilogues, reshapes, transposes, float islands, int32 matmul / conv2d) becomes
naive serial loops, one loop nest and one full-size intermediate buffer per fused op. Here,
after LegalizeOps / FuseOps / FuseTIR, every PrimFunc without `tirx.is_scheduled` (the
hand-written GEMM kernels carry it) gets:

- softmax / layer norm shaped functions: dlight's CPU `Reduction` rule;
- anything else (`schedule_generic`): injective producers inlined into their consumers;
  per remaining block, the leading spatial loops fused and parallel, the innermost spatial
  loop vectorized; in reductions (int32 matmul, conv2d) the innermost spatial loop moves
  inside the reduction loops when an input is contiguous along it, so it vectorizes too.

Exactness: TVM's LLVM target hard-codes AllowFPOpFusion=Fast, so `a * s + b` becomes an fma
(one rounding instead of the reference's two), more so once producers are inlined.
`rewrite_float_math` wraps every float multiply in `llvm.arithmetic.fence`, which keeps it a
separate rounding step, as the unfused reference computes it (and replaces erf, which LLVM
only has as a scalar libm call, by a polynomial: float islands only). Integer arithmetic is unaffected by any
of this. A function whose schedule fails is left as it was (correct, slow).
"""
from __future__ import annotations

import tvm
import tvm_ffi
from tvm import s_tir, tirx

SCHEDULED = "tirx.is_scheduled"
VECTOR_BITS = 512


def _const(expr):
    return int(expr) if isinstance(expr, (int, tirx.IntImm)) else None


def _lanes(extent, bits: int) -> int | None:
    """Vector lanes for an inner loop of `extent` elements of `bits` bits (None: don't)."""
    extent = _const(extent)
    if extent is None or extent < 4:
        return None
    width = max(VECTOR_BITS // max(bits, 8), 4)
    for lanes in (width, width // 2, width // 4, 8, 4):
        if lanes and extent % lanes == 0:
            return lanes
    return extent if extent <= width else None


def _block_loops(sch, block):
    """(loops, kinds) with kinds 'S'/'R' per loop, or None if the binding is not 1-1."""
    loops = sch.get_loops(block)
    stmt = sch.get(block)
    if len(loops) != len(stmt.iter_vars):
        return None
    kinds = []
    for iv in stmt.iter_vars:
        if iv.iter_type == tirx.IterVar.DataPar:
            kinds.append("S")
        elif iv.iter_type == tirx.IterVar.CommReduce:
            kinds.append("R")
        else:
            return None
    return loops, kinds


def _has_if_then_else(stmt) -> bool:
    found = []

    def visit(call):
        if str(getattr(call.op, "name", "")).endswith("if_then_else"):
            found.append(call)
    tvm_ffi.structural_walk(stmt.body, (tvm.ir.expr.Call, visit))
    return bool(found)


def _is_copy(stmt) -> bool:
    """The block only moves data (transpose, reshape): y[...] = x[...]."""
    body = stmt.body
    # TVM 0.27 names the load node TensorLoad (tvm.ir.TensorLoad), older versions BufferLoad
    return (type(body).__name__ == "BufferStore"
            and type(body.value).__name__ in ("TensorLoad", "BufferLoad"))


def _inline(sch, blocks):
    """compute_inline every injective producer we can (not padding: its if_then_else would
    sit in the vectorized inner loop), repeatedly, and return the remaining blocks."""
    changed = True
    while changed:
        changed = False
        for block in list(blocks):
            stmt = sch.get(block)
            if any(iv.iter_type != tirx.IterVar.DataPar for iv in stmt.iter_vars):
                continue
            if _has_if_then_else(stmt):
                continue
            if not _is_copy(stmt) and any(_has_if_then_else(sch.get(c))
                                          for c in sch.get_consumers(block)):
                continue  # im2col reads each input ~KH*KW times: compute it once
            try:
                sch.compute_inline(block)
            except Exception:  # noqa: BLE001 - not inlinable (an output, a reduction consumer)
                continue
            blocks.remove(block)
            changed = True
    return blocks


def _bits(sch, block) -> int:
    writes = sch.get(block).writes
    return writes[0].source.dtype.bits if writes else 32


def _parallel(sch, loops):
    if not loops:
        return
    outer = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    sch.parallel(outer)


PARALLEL_MIN = 256  # parallel iterations enough to feed the threads with small chunks


def _parallel_prefix(sch, loops) -> int:
    """How many leading loops to fuse into the parallel loop: just enough to reach
    PARALLEL_MIN iterations (a symbolic extent counts as 1). The loops after it stay nested,
    so their indices need no div/mod of a fused index (im2col's 6-D loops)."""
    total = 1
    for count, loop in enumerate(loops, start=1):
        total *= _const(sch.get(loop).extent) or 1
        if total >= PARALLEL_MIN:
            return count
    return len(loops)


def _schedule_spatial(sch, block, loops):
    lanes = _lanes(sch.get(loops[-1]).extent, _bits(sch, block))
    if _has_if_then_else(sch.get(block)):  # padding: a vector load could leave the buffer
        lanes = None
    if len(loops) == 1:
        extent = _const(sch.get(loops[0]).extent)
        if extent is not None and extent <= 64:
            if lanes:
                sch.vectorize(loops[0])
            return
        chunk = lanes or 64
        outer, inner = sch.split(loops[0], factors=[None, chunk])
        sch.parallel(outer)
        if lanes:
            sch.vectorize(inner)
        return
    _parallel(sch, loops[:_parallel_prefix(sch, loops[:-1])])
    inner = loops[-1]
    if lanes:
        extent = _const(sch.get(inner).extent)
        if extent > lanes:
            _, inner = sch.split(inner, factors=[None, lanes])
        sch.vectorize(inner)


def _contiguous_along(sch, block, var) -> bool:
    """Some read buffer's innermost index uses `var` (and so runs along it)."""
    stmt = sch.get(block)
    for region in stmt.reads:
        if not region.region:
            continue
        last = region.region[-1].min
        used = []
        tvm_ffi.structural_walk(last, (tirx.Var, lambda v: used.append(v)))
        if any(v.same_as(var) for v in used):
            return True
    return False


def _schedule_reduction(sch, block, loops, kinds):
    lead = len(kinds) - len(kinds.lstrip("S"))
    if lead == 0:
        return
    if kinds[lead:].count("S"):  # spatial loops after reductions: keep it simple
        _parallel(sch, loops[:lead])
        return
    stmt = sch.get(block)
    last_spatial = stmt.iter_vars[lead - 1].var
    lanes = _lanes(sch.get(loops[lead - 1]).extent, _bits(sch, block))
    vectorize = lead >= 2 and lanes and _contiguous_along(sch, block, last_spatial)
    if not vectorize:
        _parallel(sch, loops[:lead])
        return
    inner = loops[lead - 1]
    sch.reorder(*loops[lead:], inner)
    _parallel(sch, loops[:lead - 1])
    if _const(sch.get(inner).extent) > lanes:
        _, inner = sch.split(inner, factors=[None, lanes])
    sch.vectorize(inner)  # with the init inside: a decomposed update is no reduction block


def schedule_generic(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """Inline, parallelize and vectorize `func` (None if nothing applies)."""
    sch = s_tir.Schedule(func)
    root = sch.get_sblock("root")
    blocks = _inline(sch, list(sch.get_child_blocks(root)))
    for block in blocks:
        info = _block_loops(sch, block)
        if info is None or not info[0]:
            continue
        loops, kinds = info
        kinds = "".join(kinds)
        if "R" in kinds:
            _schedule_reduction(sch, block, loops, kinds)
        else:
            _schedule_spatial(sch, block, loops)
    return sch.mod["main"]


def _row_reductions_only(func: tirx.PrimFunc) -> bool:
    """Every reduction block reads at most one of the function's parameters (softmax, layer
    norm: a row of x plus intermediates), so no matmul / conv2d, which schedule_generic
    vectorizes along the output row instead."""
    sch = s_tir.Schedule(func)
    root = sch.get_sblock("root")
    local = list(sch.get(root).alloc_buffers)
    for block in sch.get_child_blocks(root):
        stmt = sch.get(block)
        if all(iv.iter_type == tirx.IterVar.DataPar for iv in stmt.iter_vars):
            continue
        inputs = [r.source for r in stmt.reads
                  if not any(r.source.same_as(b) for b in local)]
        inputs = [b for i, b in enumerate(inputs) if not any(b.same_as(c) for c in inputs[:i])]
        if len(inputs) > 1:
            return False
    return True


def _dlight_reduction(func: tirx.PrimFunc, target) -> tirx.PrimFunc | None:
    from tvm.s_tir.dlight.cpu import Reduction
    if not _row_reductions_only(func):
        return None
    sch = Reduction().apply(func, target, False)
    return None if sch is None else sch.mod["main"]


_ERF_ALPHA = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
              -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
              -1.60960333262415e-02)
_ERF_BETA = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
             -7.37332916720468e-03, -1.42647390514189e-02)


def _fast_erf(x):
    """erf(x) for float32 as a rational polynomial (Eigen's, as TVM's topi.fast_erf): LLVM
    has no vector erf, and a scalar erff call keeps the whole loop from vectorizing. Float
    islands only (GELU): within the DESIGN.md tolerance, not bit-exact with torch's erf."""
    dtype = str(x.ty.dtype)

    def c(value):
        return tirx.FloatImm(dtype, value)
    x = tirx.max(tirx.min(x, c(4.0)), c(-4.0))
    x2 = x * x
    p = c(_ERF_ALPHA[0])
    for a in _ERF_ALPHA[1:]:
        p = x2 * p + c(a)
    p = x * p
    q = c(_ERF_BETA[0])
    for b in _ERF_BETA[1:]:
        q = x2 * q + c(b)
    return p / q


_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
             1.6666665459e-1, 5.0000001201e-1)


def _fast_exp(x):
    """exp(x) for float32 (Cephes' expf polynomial): LLVM lowers a vector llvm.exp to one
    scalar expf call per lane. Float islands only (softmax)."""
    def c(value):
        return tirx.FloatImm("float32", value)
    x = tirx.max(tirx.min(x, c(88.3762626647949)), c(-88.3762626647949))
    n = tirx.floor(x * c(1.44269504088896341) + c(0.5))
    r = x - n * c(0.693359375) - n * c(-2.12194440e-4)
    p = c(_EXP_POLY[0])
    for a in _EXP_POLY[1:]:
        p = p * r + c(a)
    y = p * (r * r) + r + c(1.0)
    scale = tirx.call_intrin("float32", "tirx.reinterpret",
                             (tirx.Cast("int32", n) + tirx.IntImm("int32", 127))
                             << tirx.IntImm("int32", 23))
    return y * scale


def _is_nan(x):
    """isnan from the bits: |bits| > 0x7f800000. TVM's vectorizer does not know tirx.isnan
    (it scalarizes the loop), and `x != x` is folded to false (NoNaNsFPMath)."""
    bits = tirx.call_intrin("int32", "tirx.reinterpret", x)
    return tirx.BitwiseAnd(bits, tirx.IntImm("int32", 0x7FFFFFFF)) > tirx.IntImm("int32",
                                                                                  0x7F800000)


def _rewrite_call(call):
    """Calls TVM's vectorizer would scalarize, as vectorizable equivalents."""
    name = str(getattr(call.op, "name", ""))
    dtype = str(call.ty.dtype)
    if name == "tirx.exp" and dtype == "float32":
        return _fast_exp(call.args[0])
    if name == "tirx.erf" and dtype == "float32":
        return _fast_erf(call.args[0])
    if name == "tirx.nearbyint" and dtype.startswith("float"):
        # round half to even in the default rounding mode: exactly what nearbyint computes
        return tirx.call_llvm_pure_intrin(dtype, "llvm.nearbyint", call.args[0])
    if name == "tirx.isnan" and str(call.args[0].ty.dtype) == "float32":
        return _is_nan(call.args[0])
    if name == "tirx.rsqrt" and dtype.startswith("float"):  # float islands (layer norm)
        return tirx.FloatImm(dtype, 1.0) / tirx.sqrt(call.args[0])
    return call


def rewrite_float_math(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Vectorizable forms of exp / erf / nearbyint / isnan / rsqrt, then every float multiply
    wrapped in llvm.arithmetic.fence: no fma contraction downstream, each op rounds as in the
    reference."""
    def fence(mul):
        dtype = str(mul.ty.dtype)
        if dtype.startswith("float") or dtype.startswith("bfloat"):
            return tirx.call_llvm_pure_intrin(dtype, "llvm.arithmetic.fence", mul)
        return mul
    body = tvm_ffi.structural_map(func.body, (tvm.ir.expr.Call, _rewrite_call))
    body = tvm_ffi.structural_map(body, (tirx.Mul, fence))
    return func.with_body(body)


def schedule_func(func: tirx.PrimFunc, target) -> tirx.PrimFunc:
    """The scheduled (and fenced) form of one legalized PrimFunc; unchanged if none applies."""
    for rule in (lambda f: _dlight_reduction(f, target), schedule_generic):
        try:
            scheduled = rule(func)
        except Exception:  # noqa: BLE001 - a rule that does not fit: try the next one
            continue
        if scheduled is not None:
            return rewrite_float_math(scheduled).with_attr(SCHEDULED, True)
    return rewrite_float_math(func)


@tvm.transform.module_pass(opt_level=0, name="QCompileScheduleCPU")
def schedule_cpu(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Schedule every PrimFunc of `mod` that has no schedule yet."""
    target = tvm.target.Target.current(allow_none=False)
    updates = {}
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and not _is_scheduled(func):
            updates[gvar] = schedule_func(func, target)
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod


def _is_scheduled(func) -> bool:
    return SCHEDULED in func.attrs and bool(func.attrs[SCHEDULED])


def relax_pipeline(target):
    """TVM's cpu_generic pipeline with `schedule_cpu` after LegalizeOps/FuseOps/FuseTIR."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="QCompileCPUPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                cpu.library_dispatch_passes(target) + cpu.legalize_passes(target)
                + [schedule_cpu] + cpu.dataflow_lower_passes(target)
                + cpu.finalize_passes(target))
            return seq(mod)

    return _pipeline
