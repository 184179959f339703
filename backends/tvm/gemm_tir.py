"""TVMScript int8 GEMM kernels: one register-tiled micro-kernel per ISA path, one skeleton.

Shapes and tiles are Python closure constants (template parameters); only M is symbolic
(`m = T.int32()`), so one compiled kernel serves every batch size. The skeleton walks
column blocks (NB = lanes * nv columns) and row tiles (MR rows); the micro-kernel runs the
whole K loop on MR * nv int32 vectors, then the epilogue turns them into outputs.

Register allocation: on CPU, TVM lowers an allocation to an LLVM `alloca` (which LLVM promotes
to registers) only for scope "global" and fewer than 1024 bytes; scope "local" or anything
larger goes to TVMBackendAllocWorkspace and every accumulator update becomes a store. So the
tile lives in two "global" buffers of < 1024 bytes each (rows [0, H0) and [H0, MR)).
A plain `name = expr` in TVMScript also allocates (a mutable scalar buffer): use `T.bind`.

Each call first packs x into xs [ceil(m / MR) * MR, Kp] in the micro-kernel's operand form
(u8 x ^ 0x80 for vpdpbusd, int16 for vpmaddwd), zero-padded, so the inner loop needs no
bounds checks; padded rows are computed and never stored. The accumulators start at the
column offsets (zero-point terms and bias), so the epilogue only rescales.

Threads: the tasks (column block, chunk of row tiles) are one `T.parallel` loop, which TVM
lowers to a closure run by its thread pool (TVM_NUM_THREADS threads, each a static contiguous
share of the tasks, so a thread keeps few weight panels). The accumulators are allocated inside
the loop body, so each task has them on its own stack (in registers). Waking the pool costs
about 1-3 us, so calls with little work (m < `parallel_min_rows`) run the same loop serially,
and x is packed in parallel only from `PACK_PARALLEL_MIN_BYTES` of input on.
"""
from __future__ import annotations

from tvm.script import tirx as T

from .gemm_layout import GemmSpec

STACK_BYTES = 1024  # TVM keeps smaller "global" allocations on the stack
# multiply-adds per call from which the tiles run on the thread pool: a few us of one thread's
# work per path (VNNI about 700, AVX2 about 160, generic about 20 GMAC/s on one core)
PARALLEL_MIN_MACS = {"avx512-vnni": 1 << 22, "avx2": 1 << 20, "generic": 1 << 17}
PACK_PARALLEL_MIN_BYTES = 1 << 16  # x bytes from which packing splits rows over the pool
TASKS_MIN = 64  # tasks per call at least (see row_chunks): balanced shares for up to ~16 threads


def _vnni_rows(nv):
    """vpdpbusd: 16 lanes x 4 k, u8 activations (x ^ 0x80, packed) times s8 weights."""

    @T.macro
    def rows(acc, xs, wp, r0, nrows, nb, kq):
        for i in T.unroll(nrows):
            a = T.bind(T.reinterpret(xs[r0 + i, T.ramp(kq * 4, 1, 4)], dtype="int32"))
            for v in T.unroll(nv):
                acc[T.ramp((i * nv + v) * 16, 1, 16)] = T.call_llvm_pure_intrin(
                    "int32x16", "llvm.x86.avx512.vpdpbusd.512",
                    acc[T.ramp((i * nv + v) * 16, 1, 16)],
                    T.reinterpret(T.broadcast(a, 16), dtype="uint8x64"),
                    wp[nb, kq, T.ramp(v * 64, 1, 64)])

    return rows


def _avx2_rows(nv):
    """vpmaddwd on int16 operands: 8 lanes x 2 k, exact (|x * w| <= 2^14, two terms)."""

    @T.macro
    def rows(acc, xs, wp, r0, nrows, nb, kq):
        for i in T.unroll(nrows):
            a = T.bind(T.reinterpret(xs[r0 + i, T.ramp(kq * 2, 1, 2)], dtype="int32"))
            for v in T.unroll(nv):
                acc[T.ramp((i * nv + v) * 8, 1, 8)] = acc[T.ramp((i * nv + v) * 8, 1, 8)] + \
                    T.call_llvm_pure_intrin(
                        "int32x8", "llvm.x86.avx2.pmadd.wd",
                        T.reinterpret(T.broadcast(a, 8), dtype="int16x16"),
                        wp[nb, kq, T.ramp(v * 16, 1, 16)])

    return rows


def _generic_rows(nv):
    """Plain TIR int32 vector multiply-add; LLVM lowers it for whatever CPU it targets."""

    @T.macro
    def rows(acc, xs, wp, r0, nrows, nb, kq):
        for i in T.unroll(nrows):
            a = T.bind(T.Cast("int32", xs[r0 + i, kq]))
            for v in T.unroll(nv):
                acc[T.ramp((i * nv + v) * 16, 1, 16)] = acc[T.ramp((i * nv + v) * 16, 1, 16)] + \
                    T.broadcast(a, 16) * T.Cast("int32x16", wp[nb, kq, T.ramp(v * 16, 1, 16)])

    return rows


_ROWS = {"avx512-vnni": _vnni_rows, "avx2": _avx2_rows, "generic": _generic_rows}


def _x_value(path: str, value):
    """The packed activation: u8 x ^ 0x80 (= x + 128) for vpdpbusd, int16 for vpmaddwd."""
    if path == "avx512-vnni":
        return T.bitwise_xor(T.reinterpret(value, dtype="uint8"), T.uint8(128))
    if path == "avx2":
        return T.Cast("int16", value)
    return value


def parallel_min_rows(spec: GemmSpec) -> int:
    """Smallest M for which the tiles run on the thread pool (m * N * K >= PARALLEL_MIN_MACS)."""
    return max(1, -(-PARALLEL_MIN_MACS[spec.path] // (spec.n * spec.k)))


def pack_parallel_min_rows(spec: GemmSpec) -> int:
    """Smallest M for which packing x splits its rows over the thread pool."""
    return max(1, -(-PACK_PARALLEL_MIN_BYTES // spec.k))


def _pack_x(spec: GemmSpec, loop):
    """Macro copying x [m, K] into rows [0, m) of xs [., Kp] in the micro-kernel's form.

    `loop` is T.serial or T.parallel (over rows); the padding k >= K is zero (W is zero there).
    """
    k, kp, path = spec.k, spec.kp, spec.path

    @T.macro
    def pack(x, xs, m):
        for r in loop(m):
            for j in range(k):
                xs[r, j] = _x_value(path, x[r, j])
            for j in range(kp - k):
                xs[r, k + j] = T.Cast(xs.dtype, 0)

    return pack


@T.macro
def _zero_rows(xs, m, mp, kp):
    """Rows [m, mp) of xs (the last row tile's padding) are zero; they are never stored."""
    for r, j in T.grid(mp - m, kp):
        xs[m + r, j] = T.Cast(xs.dtype, 0)


def _requant(acc_value, c, params):
    """clamp(((acc * M + 2^(n-1)) >> n) + zp_y, qmin, qmax) in int64, as in DESIGN.md.

    The accumulators start at init[c] (the int32 column offset), so acc_value is the exact
    accumulator; only where that offset does not fit (spec.wide) is off[c] added here, in
    int64. Both multiply operands are visibly sign-extended 32-bit values, which lets LLVM
    use one vpmuldq (32x32->64) instead of a 3-uop vpmullq.
    """
    off, mult, rnd, shift, out_zp, qmin, qmax = params
    acc = T.Cast("int64", acc_value)
    if off is not None:
        acc = acc + off[c]
    t = T.shift_right(acc * T.Cast("int64", T.Cast("int32", mult[c])) + rnd[c], shift[c])
    return T.Cast("int8", T.max(T.min(t + out_zp, qmax), qmin))


def _scale_f32(acc_value, c, params):
    """float32(acc) * scale[c] in float32 (acc started at the column offset)."""
    return T.Cast("float32", acc_value) * params[0][c]


def _scale_bias_f32(acc_value, c, params):
    """float32(acc) * scale[c] + bias[c]: two roundings, as the reference.

    TVM's LLVM target hard-codes AllowFPOpFusion=Fast, so the backend would fuse the multiply
    and the add into one fma (one rounding): llvm.arithmetic.fence keeps them apart.
    """
    product = T.call_llvm_pure_intrin("float32", "llvm.arithmetic.fence",
                                      _scale_f32(acc_value, c, params))
    return product + params[1][c]


def _tile_sizes(spec: GemmSpec) -> tuple:
    """Accumulator halves: rows [0, h0) and [h0, MR), each < STACK_BYTES."""
    h0 = (spec.mr + 1) // 2
    h1 = spec.mr - h0
    sizes = (h0 * spec.nv * spec.lanes, max(h1, 1) * spec.nv * spec.lanes)
    if max(sizes) * 4 >= STACK_BYTES:
        raise ValueError(f"register tile {spec.mr}x{spec.nv} too large: each half of the "
                         f"accumulators must stay below {STACK_BYTES} bytes")
    return h0, h1, sizes


def _macros(spec: GemmSpec):
    """(accumulate, store) macros for this spec's tile and path."""
    rows = _ROWS[spec.path](spec.nv)
    nv, vl, kq, n, nb_cols = spec.nv, spec.lanes, spec.kq, spec.n, spec.nb
    h0, h1, _ = _tile_sizes(spec)

    @T.macro
    def accumulate(acc0, acc1, xs, wp, nb, r0, init):
        for j in T.unroll(h0 * nv):
            acc0[T.ramp(j * vl, 1, vl)] = init[T.ramp(nb * nb_cols + j % nv * vl, 1, vl)]
        for j in T.unroll(h1 * nv):
            acc1[T.ramp(j * vl, 1, vl)] = init[T.ramp(nb * nb_cols + j % nv * vl, 1, vl)]
        for k in range(kq):
            rows(acc0, xs, wp, r0, h0, nb, k)
            rows(acc1, xs, wp, r0 + h0, h1, nb, k)

    @T.macro
    def store(acc, y, r0, nrows, nb, m, value, params):
        for i in range(nrows):
            if r0 + i < m:
                for v in range(nv):
                    c0 = T.bind(nb * nb_cols + v * vl)
                    if c0 + vl <= n:
                        for lane in T.vectorized(vl):
                            y[r0 + i, c0 + lane] = value(acc[(i * nv + v) * vl + lane],
                                                         c0 + lane, params)
                    else:
                        for lane in range(vl):
                            if c0 + lane < n:
                                y[r0 + i, c0 + lane] = value(acc[(i * nv + v) * vl + lane],
                                                             c0 + lane, params)

    return accumulate, store


def row_chunks(spec: GemmSpec) -> int:
    """Row chunks per column block, so that there are at least TASKS_MIN tasks per call."""
    return -(-TASKS_MIN // spec.nblk)


def _tiles(spec: GemmSpec, value, loop):
    """Macro: accumulate and store every (column block, row tile) pair.

    `loop` (T.serial or T.parallel) runs over tasks = (column block, chunk of its row tiles),
    column-block major, so the thread pool's contiguous share of tasks works through
    consecutive row tiles of few weight panels; the divisor (chunks) is a constant, so
    splitting a task index costs no division. The accumulators are allocated in the task
    body (an opaque block), so every task has its own (on its stack, < STACK_BYTES each; LLVM
    keeps them in registers). The block declares no regions: it only scopes the allocations.
    """
    accumulate, store = _macros(spec)
    h0, h1, (size0, size1) = _tile_sizes(spec)
    mr, nblk, chunks = spec.mr, spec.nblk, row_chunks(spec)

    @T.macro
    def tiles(xs, wp, y, m, init, params):
        for task in loop(nblk * chunks):
            with T.sblock("task"):
                T.reads()
                T.writes()
                acc0 = T.alloc_buffer((size0,), "int32")
                acc1 = T.alloc_buffer((size1,), "int32")
                nb = T.bind(task // chunks)
                per_chunk = T.bind(T.ceildiv(T.ceildiv(m, mr), chunks))
                for i in range(per_chunk):
                    r0 = T.bind((task % chunks * per_chunk + i) * mr)
                    if r0 < m:
                        accumulate(acc0, acc1, xs, wp, nb, r0, init)
                        store(acc0, y, r0, h0, nb, m, value, params)
                        store(acc1, y, r0 + h0, h1, nb, m, value, params)

    return tiles


def _gemm(spec: GemmSpec, value):
    """Macro: pack x, then all tiles; each step on the thread pool when m is large enough."""
    pack_serial, pack_parallel = _pack_x(spec, T.serial), _pack_x(spec, T.parallel)
    tiles_serial, tiles_parallel = _tiles(spec, value, T.serial), _tiles(spec, value, T.parallel)
    pack_rows, tile_rows = pack_parallel_min_rows(spec), parallel_min_rows(spec)
    mr, kp, xdt = spec.mr, spec.kp, spec.xdtype

    @T.macro
    def gemm(x, wp, y, m, init, params):
        xs = T.alloc_buffer((T.ceildiv(m, mr) * mr, kp), xdt)
        if m < pack_rows:
            pack_serial(x, xs, m)
        else:
            pack_parallel(x, xs, m)
        _zero_rows(xs, m, T.ceildiv(m, mr) * mr, kp)
        if tile_rows <= 1:  # a Python bool: only the parallel loop is generated
            tiles_parallel(xs, wp, y, m, init, params)
        elif m < tile_rows:
            tiles_serial(xs, wp, y, m, init, params)
        else:
            tiles_parallel(xs, wp, y, m, init, params)

    return gemm


def int8_kernel(spec: GemmSpec):
    """PrimFunc (x, wp, init, off, mult, rnd, shift, qp, y): int8 out, integer requantize.

    init int32 [Np] starts the accumulators; off int64 [Np] is added in the epilogue only
    when spec.wide; mult, rnd = 2^(n-1) and shift are int64 [Np]; qp = (zp_y, qmin, qmax).
    """
    n, k, wdt, wide = spec.n, spec.k, spec.wdtype, spec.wide
    gemm = _gemm(spec, _requant)
    wshape, npad = (spec.nblk, spec.kq, spec.nb * spec.group), spec.np

    @T.prim_func(s_tir=True)
    def qlinear_int8(x_h: T.handle, wp: T.Buffer(wshape, wdt), init: T.Buffer((npad,), "int32"),
                     off: T.Buffer((npad,), "int64"), mult: T.Buffer((npad,), "int64"),
                     rnd: T.Buffer((npad,), "int64"), shift: T.Buffer((npad,), "int64"),
                     qp: T.Buffer((3,), "int32"), y_h: T.handle):
        T.func_attr({"tir.noalias": True})
        m = T.int32()
        x = T.match_buffer(x_h, (m, k), "int8")
        y = T.match_buffer(y_h, (m, n), "int8")
        with T.sblock("root"):  # Relax (call_tir) wants the body to be one block
            out_zp = T.bind(T.Cast("int64", qp[0]))
            qmin = T.bind(T.Cast("int64", qp[1]))
            qmax = T.bind(T.Cast("int64", qp[2]))
            gemm(x, wp, y, m, init, (off if wide else None, mult, rnd, shift, out_zp, qmin, qmax))

    return qlinear_int8


def f32_kernel(spec: GemmSpec):
    """PrimFunc (x, wp, init, scale, bias, y): float32 out, float32(acc) * scale (+ bias)."""
    gemm = _gemm(spec, _scale_bias_f32 if spec.has_bias else _scale_f32)
    n, k, wdt = spec.n, spec.k, spec.wdtype
    wshape, npad = (spec.nblk, spec.kq, spec.nb * spec.group), spec.np

    @T.prim_func(s_tir=True)
    def qlinear_f32(x_h: T.handle, wp: T.Buffer(wshape, wdt), init: T.Buffer((npad,), "int32"),
                    scale: T.Buffer((npad,), "float32"), bias: T.Buffer((npad,), "float32"),
                    y_h: T.handle):
        T.func_attr({"tir.noalias": True})
        m = T.int32()
        x = T.match_buffer(x_h, (m, k), "int8")
        y = T.match_buffer(y_h, (m, n), "float32")
        with T.sblock("root"):  # Relax (call_tir) wants the body to be one block
            gemm(x, wp, y, m, init, (scale, bias))

    return qlinear_f32


def kernel(spec: GemmSpec):
    """The PrimFunc for `spec` (int8 or f32 epilogue)."""
    return int8_kernel(spec) if spec.mode == "int8" else f32_kernel(spec)
