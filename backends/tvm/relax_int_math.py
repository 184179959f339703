"""Integer arithmetic of the integer-only ops as Relax: the int64 steps that the reference
kernels (qcompile/ops/integer_only.py, qcompile/quant_math.py) compute with torch.

`>>` is Relax right_shift, an arithmetic shift on signed values (torch.bitwise_right_shift);
`<< k` of a value that may be negative is a multiply by 2**k (identical in int64 without
overflow); `//` is Relax floor_divide (TIR floordiv: rounds toward -inf, torch's
rounding_mode="floor"), for negative numerators too.
"""
from __future__ import annotations

from functools import lru_cache

from tvm import relax

from qcompile.errors import BackendError
from qcompile.ops.integer_only import WIDE_MAX, WIDE_MIN

from .relax_ops import E, _c

I64 = "int64"
ISQRT_ROUNDS = 32             # bit pairs of an int64 n < 2**64: floor(sqrt(n)) < 2**32


def i64(value):
    return _c(int(value), I64)


def wide(x):
    return E.astype(x, I64)


def shl(x, bits: int):
    """x << bits for int64 x of either sign, as x * 2**bits."""
    return E.multiply(x, i64(1 << bits))


def rounding_shift(v, shift):
    """(v + 2**(n-1)) >> n for int64 v; n a Python int >= 1 or an integer tensor >= 1."""
    if isinstance(shift, int):
        if shift < 1:
            raise BackendError(f"shift must be >= 1, got {shift}")
        return E.right_shift(E.add(v, i64(1 << (shift - 1))), i64(shift))
    n = wide(shift)
    half = E.left_shift(i64(1), E.subtract(n, i64(1)))
    return E.right_shift(E.add(v, half), n)


def scaled(v, multiplier, shift):
    """rrs(v * M, n) in int64 (|v| < 2**31 and M < 2**31 keep v * M inside int64); M, n
    Python ints or int32 tensors per channel along the last axis."""
    m = i64(multiplier) if isinstance(multiplier, int) else wide(multiplier)
    return rounding_shift(E.multiply(v, m), shift)


def requantize8(acc, multiplier, shift, out_zp, qmin, qmax):
    """clamp(rrs(acc * M, n) + out_zp, qmin, qmax) as int8."""
    y = E.add(scaled(acc, int(multiplier), int(shift)), i64(out_zp))
    return E.astype(E.clip(y, int(qmin), int(qmax)), "int8")


def clamp_wide(v):
    """clamp(v, WIDE_MIN, WIDE_MAX) as int32 (the 16-bit residual values)."""
    return E.astype(E.clip(v, WIDE_MIN, WIDE_MAX), "int32")


def floor_div(a, b):
    """floor(a / b) of int64 tensors (TIR floordiv)."""
    return E.floor_divide(a, b)


def round_div(a, b):
    """a / b rounded half up, for b > 0: floor((2a + b) / 2b)."""
    return floor_div(E.add(shl(a, 1), b), shl(b, 1))


@lru_cache(maxsize=64)
def _isqrt_func(rows: int | None):
    """PrimFunc (n: int64 [rows], r: int64 [rows]), rows symbolic when None: r[i] =
    floor(sqrt(n[i])) for 0 <= n[i] < 2**63, the value the reference's Newton loop converges
    to, by the classic digit-by-digit (restoring) square root in a fixed ISQRT_ROUNDS rounds,
    one bit of the root per round, for b = 4**k from 4**31 down to 1:
        t = r + b;  rem >= t: rem -= t, r = (r >> 1) + b;  else r = r >> 1
    (rem: n less the square of the root so far; rem starts at n, r at 0). Exact for every
    n < 4**32, every value stays in [0, 2**63), the last r is floor(sqrt(n)). A loop, not Relax ops:
    inlining 32 rounds of injective ops that each read rem and r twice grows exponentially."""
    from tvm.script import tirx as T
    top = 2 * (ISQRT_ROUNDS - 1)

    @T.macro
    def body(n, r, m):
        with T.sblock("root"):
            rem = T.alloc_buffer((1,), "int64")
            for i in range(m):
                rem[0] = n[i]
                r[i] = T.int64(0)
                for k in range(ISQRT_ROUNDS):
                    b = T.bind(T.shift_left(T.int64(1), T.Cast("int64", top - 2 * k)))
                    t = T.bind(r[i] + b)
                    if rem[0] >= t:
                        rem[0] = rem[0] - t
                        r[i] = T.shift_right(r[i], T.int64(1)) + b
                    else:
                        r[i] = T.shift_right(r[i], T.int64(1))

    @T.prim_func(s_tir=True)
    def isqrt_any(n_h: T.handle, r_h: T.handle):
        T.func_attr({"tir.noalias": True})
        m = T.int64()
        n = T.match_buffer(n_h, (m,), "int64")
        r = T.match_buffer(r_h, (m,), "int64")
        body(n, r, m)

    @T.prim_func(s_tir=True)
    def isqrt_static(n: T.Buffer((rows or 1,), "int64"), r: T.Buffer((rows or 1,), "int64")):
        T.func_attr({"tir.noalias": True})
        body(n, r, rows or 1)

    func = isqrt_any if rows is None else isqrt_static
    return func.without_attr("global_symbol").with_attr("tirx.is_scheduled", True)


def _static_extent(extent) -> int | None:
    try:
        return int(extent)
    except TypeError:
        return None


def isqrt(n):
    """floor(sqrt(n)) of an int64 tensor with 0 <= n < 2**63 (see _isqrt_func); a static
    row count gives a static PrimFunc (npu-int8's C model needs one)."""
    bb = relax.BlockBuilder.current()
    shape = list(n.ty.shape.values)
    flat = E.reshape(n, (-1,))
    rows = _static_extent(flat.ty.shape.values[0])
    gvar = bb.add_func(_isqrt_func(rows), "isqrt")
    r = bb.emit(relax.call_tir(gvar, [flat], relax.TensorType(flat.ty.shape, I64)))
    return E.reshape(r, shape)
