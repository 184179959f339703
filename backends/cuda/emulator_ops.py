"""The cuda-int8 elementwise, pooling and mean kernels, run by the CPU emulator.

Each `*_emulated` function takes the arguments of its reference kernel in
qcompile.ops.reference and returns the same tensor, computed by the CUDA source in
kernels/elementwise.cuh or kernels/pool.cuh built with g++ (emulator.load). Keyword-only
extras: `max_blocks` caps the grid (so every thread walks several grid strides) and, for
the elementwise kernels, `out` is a contiguous tensor to write into (its alignment then
decides between the vector and the scalar path). Limits of the kernels, raised as
KernelConstraintError and left to the torch fallback: qadd needs same-shape inputs (no
broadcasting); qmean reduces trailing dims only; pooling needs 3-D or 4-D int8 input.
"""
from __future__ import annotations

import ctypes
import functools

import torch
import torch.nn.functional as F

from qcompile.ops.reference import as_pair, reduced_dims
from qcompile.quant_math import MAX_SHIFT

from . import emulator
from .emulator import EmulatedRunError, KernelConstraintError

SOURCE = '#include "elementwise.cuh"\n#include "pool.cuh"\n'
DEFAULT_MAX_BLOCKS = 4
_P, _N, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_float
SIGNATURES = {
    "qc_requantize": [_P, _P, _N] + [_I] * 6,
    "qc_qadd": [_P, _P, _P, _N] + [_I] * 8,
    "qc_qclamp": [_P, _P, _N, _I, _I],
    "qc_quantize": [_P, _P, _N, _F, _I, _I, _I],
    "qc_dequantize": [_P, _P, _N, _F, _I],
    "qc_qmax_pool2d": [_P, _P, _P],
    "qc_qavg_pool2d": [_P, _P, _P, _P],
    "qc_qmean": [_P, _P, _N, _N, _P],
}


@functools.cache
def library() -> ctypes.CDLL:
    """The emulation build of the elementwise and pool kernels, launchers' types set."""
    lib = emulator.load(SOURCE)
    for kernel, params in SIGNATURES.items():
        launch = getattr(lib, kernel + "_launch")
        launch.argtypes = params + [ctypes.c_int]
        launch.restype = ctypes.c_int
    return lib


def launch(kernel: str, *args, max_blocks: int = DEFAULT_MAX_BLOCKS) -> None:
    """Runs `kernel`'s host launcher; tensors are passed as their data pointers."""
    if max_blocks < 1:
        raise KernelConstraintError(f"max_blocks must be >= 1, got {max_blocks}")
    raw = [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args]
    if getattr(library(), kernel + "_launch")(*raw, max_blocks) != 0:
        raise EmulatedRunError(f"emulated launch of {kernel} failed")


# ---- argument checks (KernelConstraintError, the reference's ranges) ---------------------

def int8_input(name: str, t: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.int8:
        raise KernelConstraintError(f"{name} must be an int8 tensor")
    return t.detach().cpu().contiguous()


def check_int32(**values: int) -> None:
    for name, v in values.items():
        if not -2**31 <= int(v) < 2**31:
            raise KernelConstraintError(f"{name} must fit in int32, got {v}")


def check_bounds(qmin: int, qmax: int) -> None:
    if not -128 <= qmin <= qmax <= 127:
        raise KernelConstraintError(f"need -128 <= qmin <= qmax <= 127, got [{qmin}, {qmax}]")


def check_requant(multiplier: int, shift: int) -> None:
    if not (0 <= multiplier < 2**31 and 1 <= shift <= MAX_SHIFT):
        raise KernelConstraintError(f"need multiplier in [0, 2**31) and shift in [1, "
                                    f"{MAX_SHIFT}], got {multiplier}, {shift}")


def check_scale(scale: float) -> None:
    if not 0.0 < scale < float("inf"):
        raise KernelConstraintError(f"scale must be positive and finite, got {scale}")


def output_like(x: torch.Tensor, dtype: torch.dtype, out: torch.Tensor | None) -> torch.Tensor:
    """`out` checked, or a new tensor shaped like x whose element offset modulo 4 matches
    x's, so that a misaligned x still takes the vector path after a scalar head."""
    if out is not None:
        if out.dtype != dtype or out.shape != x.shape or not out.is_contiguous():
            raise KernelConstraintError(f"out must be a contiguous {dtype} tensor of shape "
                                        f"{list(x.shape)}")
        return out
    n = x.numel()
    base = torch.empty(n + 4, dtype=dtype)
    phase = lambda t: (t.data_ptr() // t.element_size()) % 4
    offset = (phase(x) - phase(base)) % 4 if n else 0
    return base[offset:offset + n].view(x.shape)


# ---- the kernels ------------------------------------------------------------------------

def requantize_emulated(q, in_zp, multiplier, shift, out_zp, qmin, qmax, *,
                        out=None, max_blocks=DEFAULT_MAX_BLOCKS) -> torch.Tensor:
    """reference.requantize by qc_requantize."""
    x = int8_input("q", q)
    check_requant(multiplier, shift)
    check_bounds(qmin, qmax)
    check_int32(in_zp=in_zp, out_zp=out_zp)
    y = output_like(x, torch.int8, out)
    launch("qc_requantize", x, y, x.numel(), in_zp, multiplier, shift, out_zp, qmin, qmax,
           max_blocks=max_blocks)
    return y


def qadd_emulated(a, a_zp, a_multiplier, b, b_zp, b_multiplier, shift, out_zp, qmin, qmax,
                  *, out=None, max_blocks=DEFAULT_MAX_BLOCKS) -> torch.Tensor:
    """reference.qadd by qc_qadd, for same-shape a and b (broadcasting stays in torch)."""
    a, b = int8_input("a", a), int8_input("b", b)
    if a.shape != b.shape:
        raise KernelConstraintError(f"qc_qadd needs same-shape inputs, got {list(a.shape)} "
                                    f"and {list(b.shape)}; broadcasting is left to torch")
    check_requant(a_multiplier, shift)
    check_requant(b_multiplier, shift)
    check_bounds(qmin, qmax)
    check_int32(a_zp=a_zp, b_zp=b_zp, out_zp=out_zp)
    y = output_like(a, torch.int8, out)
    launch("qc_qadd", a, b, y, a.numel(), a_zp, a_multiplier, b_zp, b_multiplier, shift,
           out_zp, qmin, qmax, max_blocks=max_blocks)
    return y


def qclamp_emulated(x, qmin, qmax, *, out=None, max_blocks=DEFAULT_MAX_BLOCKS) -> torch.Tensor:
    """reference.qclamp by qc_qclamp."""
    x = int8_input("x", x)
    check_bounds(qmin, qmax)
    y = output_like(x, torch.int8, out)
    launch("qc_qclamp", x, y, x.numel(), qmin, qmax, max_blocks=max_blocks)
    return y


def quantize_emulated(x, scale, zero_point, qmin, qmax, *, out=None,
                      max_blocks=DEFAULT_MAX_BLOCKS) -> torch.Tensor:
    """reference.quantize by qc_quantize: x is converted to float32 first, as there, and
    scale rounded to float32 (ctypes' c_float rounds to nearest, as torch.tensor does)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise KernelConstraintError("quantize needs a floating-point tensor")
    check_scale(scale)
    check_bounds(qmin, qmax)
    check_int32(zero_point=zero_point)
    xf = x.detach().cpu().to(torch.float32).contiguous()
    y = output_like(xf, torch.int8, out)
    launch("qc_quantize", xf, y, xf.numel(), scale, zero_point, qmin, qmax,
           max_blocks=max_blocks)
    return y


def dequantize_emulated(q, scale, zero_point, *, out=None,
                        max_blocks=DEFAULT_MAX_BLOCKS) -> torch.Tensor:
    """reference.dequantize by qc_dequantize."""
    x = int8_input("q", q)
    check_scale(scale)
    check_int32(zero_point=zero_point)
    y = output_like(x, torch.float32, out)
    launch("qc_dequantize", x, y, x.numel(), scale, zero_point, max_blocks=max_blocks)
    return y


# ---- pooling and mean -------------------------------------------------------------------

def _pooled_shape(x: torch.Tensor, pool, *args) -> torch.Size:
    """torch's output shape (and argument checks) for pool(x, *args), on a meta tensor."""
    try:
        return pool(torch.empty(x.shape, device="meta"), *args).shape
    except (RuntimeError, ValueError) as exc:
        raise KernelConstraintError(f"bad pooling arguments: {exc}") from None


def _pool_input(x: torch.Tensor) -> torch.Tensor:
    x = int8_input("x", x)
    if x.dim() not in (3, 4):
        raise KernelConstraintError(f"pooling needs a CHW or NCHW tensor, got {list(x.shape)}")
    return x


def _windows_hit_input(size: int, out: int, k: int, s: int, p: int, d: int) -> bool:
    """Whether every one of the `out` windows along an axis holds an input position."""
    return all(any(0 <= o * s - p + j * d < size for j in range(k)) for o in range(out))


def _geometry(x, y, kernel, stride, padding, dilation) -> torch.Tensor:
    """int32 [planes, in_h, in_w, out_h, out_w, kernel, stride, padding, dilation] (h, w)."""
    h, w, oh, ow = x.shape[-2], x.shape[-1], y.shape[-2], y.shape[-1]
    planes = x.numel() // (h * w) if h * w else 0
    values = [planes, h, w, oh, ow]
    for pair in (kernel, stride, padding, dilation):
        values += list(pair)
    return torch.tensor(values, dtype=torch.int32)


def qmax_pool2d_emulated(x, kernel, stride, padding, dilation, ceil_mode, *,
                         max_blocks=DEFAULT_MAX_BLOCKS) -> torch.Tensor:
    """reference.qmax_pool2d by qc_qmax_pool2d (an empty stride means stride = kernel)."""
    x = _pool_input(x)
    try:
        k = as_pair(kernel, "kernel")
        s, p = as_pair(stride or k, "stride"), as_pair(padding, "padding")
        d = as_pair(dilation, "dilation")
    except ValueError as exc:
        raise KernelConstraintError(str(exc)) from None
    shape = _pooled_shape(x, F.max_pool2d, k, s, p, d, ceil_mode)
    for axis in (0, 1):
        size, out = x.shape[axis - 2], shape[axis - 2]
        if not _windows_hit_input(size, out, k[axis], s[axis], p[axis], d[axis]):
            raise KernelConstraintError("a max-pool window lies wholly in the padding; its "
                                        "int8 value is undefined")
    y = torch.empty(shape, dtype=torch.int8)
    launch("qc_qmax_pool2d", x, y, _geometry(x, y, k, s, p, d), max_blocks=max_blocks)
    return y


def _requant_params(x_zp, multiplier, shift, out_zp, qmin, qmax) -> torch.Tensor:
    check_requant(multiplier, shift)
    check_bounds(qmin, qmax)
    check_int32(x_zp=x_zp, out_zp=out_zp)
    return torch.tensor([x_zp, multiplier, shift, out_zp, qmin, qmax], dtype=torch.int32)


def qavg_pool2d_emulated(x, x_zp, kernel, stride, padding, ceil_mode, multiplier, shift,
                         out_zp, qmin, qmax, *, max_blocks=DEFAULT_MAX_BLOCKS) -> torch.Tensor:
    """reference.qavg_pool2d by qc_qavg_pool2d: window sums of (x - x_zp), divisor in M."""
    x = _pool_input(x)
    requant = _requant_params(x_zp, multiplier, shift, out_zp, qmin, qmax)
    try:
        k = as_pair(kernel, "kernel")
        s, p = as_pair(stride or k, "stride"), as_pair(padding, "padding")
    except ValueError as exc:
        raise KernelConstraintError(str(exc)) from None
    shape = _pooled_shape(x, F.avg_pool2d, k, s, p, ceil_mode, True, 1)
    y = torch.empty(shape, dtype=torch.int8)
    launch("qc_qavg_pool2d", x, y, _geometry(x, y, k, s, p, [1, 1]), requant,
           max_blocks=max_blocks)
    return y


def qmean_emulated(x, x_zp, dims, keepdim, multiplier, shift, out_zp, qmin, qmax, *,
                   max_blocks=DEFAULT_MAX_BLOCKS) -> torch.Tensor:
    """reference.qmean by qc_qmean, for reductions over trailing dims (H, W of NCHW: the
    global average pool; the last dim; every dim)."""
    x = int8_input("x", x)
    requant = _requant_params(x_zp, multiplier, shift, out_zp, qmin, qmax)
    try:
        dims = reduced_dims(x.dim(), dims)
    except ValueError as exc:
        raise KernelConstraintError(str(exc)) from None
    kept = x.dim() - len(dims)
    if dims != list(range(kept, x.dim())):
        raise KernelConstraintError(f"qc_qmean reduces trailing dims only, got dims {dims} of "
                                    f"a {x.dim()}-D tensor")
    rows = x.shape[:kept].numel()
    inner = x.shape[kept:].numel()
    y = torch.empty(rows, dtype=torch.int8)
    launch("qc_qmean", x, y, rows, inner, requant, max_blocks=max_blocks)
    return y.reshape(tuple(x.shape[:kept]) + ((1,) * len(dims) if keepdim else ()))
