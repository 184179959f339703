"""The cuda-int8 transformer kernels (kernels/transformer.cuh), run by the CPU emulator.

Each `*_emulated` function takes the arguments of its reference kernel (reference.qmatmul,
integer_only.i_softmax / i_layernorm / i_gelu / i_linear / i_add) and returns the same
tensor, computed by the CUDA source built with g++ (emulator.load). What the kernels do
not take raises KernelConstraintError with the reason; `transformer_kernel_for` gives the
engine planner the same decision from shapes alone.

Host-side preparation, which the engine does the same way: qmatmul and i_linear take the
second operand as [batch, N, K] (b transposed, K contiguous); batch dims broadcast where
one side has a single matrix (batch stride 0), other broadcasts are expanded in memory.
i_softmax over a dim other than the last runs on a copy with that dim moved last; its mask
becomes uint8 rows addressed by (row / mask_div) % mask_mod (see transformer_rows.cuh),
materialized only when its broadcast pattern is not one block of leading dims.
"""
from __future__ import annotations

import ctypes
import functools
import math
from typing import Optional, Sequence

import torch

from qcompile.quant_math import MAX_SHIFT

from . import emulator
from .emulator import EmulatedRunError, KernelConstraintError
from .emulator_ops import DEFAULT_MAX_BLOCKS, check_bounds, check_int32, int8_input, output_like

SOURCE = '#include "transformer.cuh"\n'
MMA_K_ALIGN = 16              # cp.async moves 16-byte rows of K int8
MAX_K = 2**17 - 1             # raw int8 dot products stay inside int32 (K * 2^14 < 2^31)
MAX_GRID_YZ = 65535
MMA_TILE, SIMT_TILE = 64, 16
MAX_NORM_SIZE = 8192          # i_layernorm: sum(c * c) stays inside int64
_P, _L, _I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
_MATMUL = [_I, _P, _P, _P, _I, _I, _I, _L, _L] + [_I] * 7
_LINEAR = [_P] * 6 + [_I] * 4
SIGNATURES = {
    "qc_qmatmul_int8": _MATMUL, "qc_qmatmul_int8_simt": _MATMUL,
    "qc_i_linear": _LINEAR, "qc_i_linear_simt": _LINEAR,
    "qc_i_softmax": [_P, _P, _P, _L, _I, _L, _L, _P, ctypes.c_int],
    "qc_i_layernorm": [_P, _I, _P, _P, _P, _L, _I, _L, _P, ctypes.c_int],
    "qc_i_gelu": [_P, _P, _L, _P, ctypes.c_int],
    "qc_i_add": [_P, _I, _P, _I, _P, _L, _P, ctypes.c_int],
}


@functools.cache
def library() -> ctypes.CDLL:
    """The emulation build of kernels/transformer.cuh, launchers' argument types set."""
    lib = emulator.load(SOURCE)
    for kernel, params in SIGNATURES.items():
        launch = getattr(lib, kernel + "_launch")
        launch.argtypes = params
        launch.restype = ctypes.c_int
    return lib


def launch(kernel: str, *args) -> None:
    """Runs `kernel`'s host launcher; tensors are passed as their data pointers."""
    raw = [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args]
    if getattr(library(), kernel + "_launch")(*raw) != 0:
        raise EmulatedRunError(f"emulated launch of {kernel} failed")


# ---- argument checks ----------------------------------------------------------------------

def _int_input(name: str, t, dtypes=(torch.int8,)) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dtype not in dtypes:
        raise KernelConstraintError(f"{name} must be a tensor of dtype "
                                    f"{' or '.join(str(d) for d in dtypes)}")
    return emulator._aligned(t)


def _check_rescale(**pairs: tuple[int, int]) -> None:
    """Each (multiplier, shift): an int32 multiplier, a shift in [1, MAX_SHIFT]."""
    for name, (mult, shift) in pairs.items():
        check_int32(**{f"{name} multiplier": mult})
        if not 1 <= int(shift) <= MAX_SHIFT:
            raise KernelConstraintError(f"{name} shift must be in [1, {MAX_SHIFT}], got {shift}")


def _check_int8_zp(**zps: int) -> None:
    for name, zp in zps.items():
        if not -128 <= int(zp) <= 127:
            raise KernelConstraintError(f"{name}={zp} outside [-128, 127]: the kernel's exact "
                                        "int64 bounds assume int8 zero points")


def _args(*values: int) -> torch.Tensor:
    return torch.tensor([int(v) for v in values], dtype=torch.int32)


# ---- qmatmul and i_linear -----------------------------------------------------------------

def matmul_geometry(a_shape: Sequence[int], b_shape: Sequence[int]) -> tuple:
    """(batch shape, M, N, K) of torch.matmul(a, b) for a [..., M, K], b [..., K, N]."""
    if len(a_shape) < 2 or len(b_shape) < 2:
        raise KernelConstraintError(f"the matmul kernels take operands of >= 2 dims, got "
                                    f"{list(a_shape)} and {list(b_shape)}")
    (m, k), (k2, n) = a_shape[-2:], b_shape[-2:]
    if k != k2:
        raise KernelConstraintError(f"inner dims differ: {list(a_shape)} x {list(b_shape)}")
    try:
        batch = tuple(torch.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2])))
    except RuntimeError:
        raise KernelConstraintError(f"batch dims do not broadcast: {list(a_shape)} x "
                                    f"{list(b_shape)}") from None
    _check_grid(math.prod(batch), m, n, k)
    return batch, m, n, k


def _check_grid(batch: int, m: int, n: int, k: int) -> None:
    if k > MAX_K:
        raise KernelConstraintError(f"K={k} > {MAX_K}: raw int8 dot products would leave int32")
    if batch > MAX_GRID_YZ or -(-m // SIMT_TILE) > MAX_GRID_YZ:
        raise KernelConstraintError(f"batch {batch} or M={m} exceeds the grid's y/z limit")


def mma_takes(k: int) -> bool:
    return k > 0 and k % MMA_K_ALIGN == 0


def _batched(t: torch.Tensor, batch: tuple) -> tuple[torch.Tensor, int]:
    """t as [count, rows, cols] contiguous, and its batch stride (0: one matrix for all)."""
    rows, cols = t.shape[-2:]
    if math.prod(t.shape[:-2]) == 1:
        return emulator._aligned(t.reshape(rows, cols)), 0
    full = t.expand(*batch, rows, cols)
    return emulator._aligned(full.reshape(-1, rows, cols)), rows * cols


def _pick(kernel: str, k: int, path: Optional[str]) -> str:
    if path not in (None, "mma", "simt"):
        raise KernelConstraintError(f"path must be 'mma', 'simt' or None, got {path!r}")
    if path == "mma" and not mma_takes(k):
        raise KernelConstraintError(f"the tensor-core kernel needs K % {MMA_K_ALIGN} == 0, "
                                    f"got K={k}")
    use_mma = path == "mma" or (path is None and mma_takes(k))
    return kernel if use_mma else kernel + "_simt"


def qmatmul_emulated(a, a_zp, b, b_zp, multiplier, shift, out_zp, qmin, qmax, *,
                     path: Optional[str] = None) -> torch.Tensor:
    """reference.qmatmul by qc_qmatmul_int8 (K % 16 == 0) or qc_qmatmul_int8_simt;
    `path` ('mma' or 'simt') forces one."""
    a, b = _int_input("a", a), _int_input("b", b)
    _check_qmatmul_requant(multiplier, shift, qmin, qmax)
    _check_int8_zp(a_zp=a_zp, b_zp=b_zp)
    check_int32(out_zp=out_zp)
    batch, m, n, k = matmul_geometry(a.shape, b.shape)
    a3, a_stride = _batched(a, batch)
    bt, b_stride = _batched(b.transpose(-1, -2), batch)
    count = math.prod(batch)
    y = torch.empty(count, m, n, dtype=torch.int8)
    launch(_pick("qc_qmatmul_int8", k, path), count, a3, bt, y, m, n, k, a_stride, b_stride,
           a_zp, b_zp, multiplier, shift, out_zp, qmin, qmax)
    return y.reshape(*batch, m, n)


def _check_qmatmul_requant(multiplier: int, shift: int, qmin: int, qmax: int) -> None:
    """reference.qmatmul's own checks: multiplier in [0, 2^31), shift in [1, 62], bounds."""
    if not 0 <= int(multiplier) < 2**31:
        raise KernelConstraintError(f"multiplier must be in [0, 2**31), got {multiplier}")
    _check_rescale(output=(multiplier, shift))
    check_bounds(qmin, qmax)


def i_linear_emulated(x, x_zp, w, bias, multiplier, shift, *,
                      path: Optional[str] = None) -> torch.Tensor:
    """integer_only.i_linear by qc_i_linear (K % 16 == 0) or qc_i_linear_simt."""
    x, w = _int_input("x", x), _int_input("w", w)
    if w.dim() != 2 or x.dim() < 1 or x.shape[-1] != w.shape[1]:
        raise KernelConstraintError(f"shapes do not match: x {list(x.shape)}, w {list(w.shape)}")
    n, k = w.shape
    m = x.numel() // k if k else math.prod(x.shape[:-1])
    _check_grid(1, m, n, k)
    _check_int8_zp(x_zp=x_zp)
    mult, sh = emulator._vector("multiplier", multiplier, n), emulator._vector("shift", shift, n)
    if bool(((sh < 1) | (sh > MAX_SHIFT)).any()):
        raise KernelConstraintError(f"shifts must be in [1, {MAX_SHIFT}]")
    b = None if bias is None else emulator._vector("bias", bias, n)
    y = torch.empty(m, n, dtype=torch.int32)
    launch(_pick("qc_i_linear", k, path), x.reshape(m, k), w, b, mult, sh, y, m, n, k, x_zp)
    return y.reshape(*x.shape[:-1], n)


# ---- i_softmax ----------------------------------------------------------------------------

def mask_rows(mask_shape: Sequence[int], shape: Sequence[int]) -> tuple[int, int, bool]:
    """(mask_div, mask_mod, materialize) for a mask broadcast to `shape` (softmax dim last):
    row r of the flattened scores reads mask row (r // div) % mod; `materialize` when the
    mask's non-1 leading dims are not one contiguous block (then it is expanded in memory)."""
    if len(mask_shape) > len(shape):
        raise KernelConstraintError(f"mask {list(mask_shape)} has more dims than {list(shape)}")
    padded = [1] * (len(shape) - len(mask_shape)) + list(mask_shape)
    if any(md not in (1, d) for md, d in zip(padded, shape)):
        raise KernelConstraintError(f"mask {list(mask_shape)} does not broadcast to "
                                    f"{list(shape)}")
    lead = list(shape[:-1])
    full = [i for i, md in enumerate(padded[:-1]) if md != 1]
    if not full:
        return 1, 1, False
    lo, hi = full[0], full[-1] + 1
    if full != list(range(lo, hi)):
        return 1, math.prod(lead), True
    return math.prod(lead[hi:]), math.prod(lead[lo:hi]), False


def _softmax_mask(mask, shape: tuple, dim: int) -> tuple[Optional[torch.Tensor], int, int]:
    """The kernel's uint8 mask rows and (div, mod) for scores of `shape` (dim moved last)."""
    if mask is None:
        return None, 1, 1
    if not isinstance(mask, torch.Tensor):
        raise KernelConstraintError("mask must be a tensor")
    m = mask.to(torch.bool).reshape((1,) * (len(shape) - mask.dim()) + tuple(mask.shape))
    m = m.movedim(dim, -1)
    div, mod, materialize = mask_rows(m.shape, shape)
    lead = shape[:-1] if materialize else m.shape[:-1]
    rows = m.expand(*lead, shape[-1]).reshape(mod, shape[-1])
    return emulator._aligned(rows.to(torch.uint8)), div, mod


def i_softmax_emulated(q, in_zp, in_multiplier, in_shift, out_multiplier, out_shift, out_zp,
                       qmin, qmax, dim: int = -1, mask=None, *,
                       max_blocks: int = DEFAULT_MAX_BLOCKS) -> torch.Tensor:
    """integer_only.i_softmax by qc_i_softmax (one block per row of the softmax dim)."""
    q = _int_input("q", q)
    if q.dim() == 0 or not -q.dim() <= dim < q.dim():
        raise KernelConstraintError(f"dim {dim} is not a dim of a {q.dim()}-D tensor")
    _check_int8_zp(in_zp=in_zp)
    _check_rescale(input=(in_multiplier, in_shift), output=(out_multiplier, out_shift))
    check_int32(out_zp=out_zp)
    check_bounds(qmin, qmax)
    rows_q = emulator._aligned(q.movedim(dim, -1))
    keep, div, mod = _softmax_mask(mask, tuple(rows_q.shape), dim % q.dim())
    n = rows_q.shape[-1]
    y = torch.empty(rows_q.shape, dtype=torch.int8)
    args = _args(in_zp, in_multiplier, in_shift, out_multiplier, out_shift, out_zp, qmin, qmax)
    launch("qc_i_softmax", rows_q, keep, y, rows_q.numel() // max(n, 1), n, div, mod, args,
           max(1, max_blocks))
    return y.movedim(-1, dim)


# ---- i_layernorm, i_gelu, i_add -----------------------------------------------------------

def i_layernorm_emulated(x, in_zp, gamma, beta, eps, multiplier, shift, out_zp, qmin, qmax, *,
                         max_blocks: int = DEFAULT_MAX_BLOCKS) -> torch.Tensor:
    """integer_only.i_layernorm by qc_i_layernorm, int8 or int32 (16-bit) input."""
    x = _int_input("x", x, (torch.int8, torch.int32))
    if x.dim() == 0 or not 1 <= x.shape[-1] <= MAX_NORM_SIZE:
        raise KernelConstraintError(f"the normalized dim must have 1 to {MAX_NORM_SIZE} "
                                    f"elements, got shape {list(x.shape)}")
    n = x.shape[-1]
    g, b = emulator._vector("gamma", gamma, n), emulator._vector("beta", beta, n)
    if not 0 <= int(eps) <= 2**62:
        raise KernelConstraintError(f"eps must be in [0, 2**62], got {eps}")
    _check_rescale(output=(multiplier, shift))
    check_int32(in_zp=in_zp, out_zp=out_zp)
    check_bounds(qmin, qmax)
    y = torch.empty(x.shape, dtype=torch.int8)
    launch("qc_i_layernorm", x, int(x.dtype == torch.int32), g, b, y, x.numel() // n, n,
           int(eps), _args(in_zp, multiplier, shift, out_zp, qmin, qmax), max(1, max_blocks))
    return y


def i_gelu_emulated(q, in_zp, in_multiplier, in_shift, out_multiplier, out_shift, out_zp, qmin,
                    qmax, *, max_blocks: int = DEFAULT_MAX_BLOCKS) -> torch.Tensor:
    """integer_only.i_gelu by qc_i_gelu (elementwise, vector path where aligned)."""
    q = int8_input("q", q)
    _check_rescale(input=(in_multiplier, in_shift), output=(out_multiplier, out_shift))
    check_int32(in_zp=in_zp, out_zp=out_zp)
    check_bounds(qmin, qmax)
    y = output_like(q, torch.int8, None)
    args = _args(in_zp, in_multiplier, in_shift, out_multiplier, out_shift, out_zp, qmin, qmax)
    launch("qc_i_gelu", q, y, q.numel(), args, max(1, max_blocks))
    return y


def i_add_emulated(a, a_zp, a_multiplier, b, b_zp, b_multiplier, shift, *,
                   max_blocks: int = DEFAULT_MAX_BLOCKS) -> torch.Tensor:
    """integer_only.i_add by qc_i_add, for same-shape int8 or int32 inputs."""
    wide = (torch.int8, torch.int32)
    a, b = _int_input("a", a, wide), _int_input("b", b, wide)
    if a.shape != b.shape:
        raise KernelConstraintError(f"qc_i_add needs same-shape inputs, got {list(a.shape)} "
                                    f"and {list(b.shape)}; broadcasting is left to torch")
    _check_rescale(a=(a_multiplier, shift), b=(b_multiplier, shift))
    check_int32(a_zp=a_zp, b_zp=b_zp)
    y = torch.empty(a.shape, dtype=torch.int32)
    launch("qc_i_add", a, int(a.dtype == torch.int32), b, int(b.dtype == torch.int32), y,
           a.numel(), _args(a_zp, a_multiplier, b_zp, b_multiplier, shift), max(1, max_blocks))
    return y


# ---- the planner's view -------------------------------------------------------------------

def _matmul_choice(kernel: str, k: int, what: str) -> tuple[str, str]:
    if mma_takes(k):
        return kernel, f"{what} on tensor cores (second operand pre-transposed to [N, K])"
    return kernel + "_simt", (f"{what} on CUDA cores: K={k} is not a positive multiple of "
                              f"{MMA_K_ALIGN}")


def _plan(op: str, shapes: list, dim: int) -> tuple[str, str]:
    if op == "qmatmul":
        batch, _, _, k = matmul_geometry(shapes[0], shapes[1])
        return _matmul_choice("qc_qmatmul_int8", k, f"batched matmul over {list(batch)}")
    if op == "i_linear":
        x, w = shapes[0], shapes[1]
        if len(w) != 2 or len(x) < 1 or x[-1] != w[1]:
            raise KernelConstraintError(f"shapes do not match: x {list(x)}, w {list(w)}")
        _check_grid(1, math.prod(x[:-1]), w[0], w[1])
        return _matmul_choice("qc_i_linear", w[1], "16-bit linear")
    if op == "i_softmax":
        moved = shapes[0][:dim] + shapes[0][dim + 1:] + [shapes[0][dim]] if shapes[0] else []
        if not moved:
            raise KernelConstraintError("softmax of a 0-d tensor")
        why = "one block per row" + ("" if dim in (-1, len(shapes[0]) - 1) else ", dim moved last")
        if len(shapes) > 1 and shapes[1] is not None:
            m = [1] * (len(moved) - len(shapes[1])) + list(shapes[1])
            div, mod, materialize = mask_rows(m[:dim] + m[dim + 1:] + [m[dim]], moved)
            why += (", mask expanded in memory" if materialize
                    else f", mask rows (r / {div}) % {mod}")
        return "qc_i_softmax", why
    if op == "i_layernorm":
        if not shapes[0] or not 1 <= shapes[0][-1] <= MAX_NORM_SIZE:
            raise KernelConstraintError(f"normalized dim outside [1, {MAX_NORM_SIZE}]")
        return "qc_i_layernorm", "one block per row"
    if op == "i_add" and list(shapes[0]) != list(shapes[1]):
        raise KernelConstraintError(f"i_add of shapes {list(shapes[0])} and {list(shapes[1])} "
                                    "broadcasts; the kernel adds same-shape tensors")
    if op in ("i_add", "i_gelu"):
        return f"qc_{op}", "elementwise"
    raise KernelConstraintError(f"no transformer kernel for {op}")


def transformer_kernel_for(op_name: str, arg_shapes: Sequence, dim: int = -1
                           ) -> tuple[Optional[str], str]:
    """(kernel, how it takes the op) for the tensor arguments' shapes in call order (mask
    shape or None second for i_softmax, `dim` its softmax dim); (None, why not)."""
    shapes = [None if s is None else list(s) for s in arg_shapes]
    try:
        if op_name == "i_softmax" and shapes and shapes[0] is not None:
            dim = dim % max(len(shapes[0]), 1)
        return _plan(op_name, shapes, dim)
    except (KernelConstraintError, IndexError, TypeError) as exc:
        return None, str(exc) or f"bad argument shapes for {op_name}: {arg_shapes}"
