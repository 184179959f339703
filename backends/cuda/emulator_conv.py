"""The cuda-int8 conv2d kernels (kernels/conv_int8.cuh) run by the CPU emulator.

`conv2d_int8_emulated` takes exactly the arguments of qcompile.ops.reference.qconv2d and
returns the same integers. The layout conversion is the engine's choice and happens on the
host in torch: activations go NCHW -> NHWC (channels contiguous, so an implicit-GEMM k-chunk
is 16 channels of one pixel), weights are packed [O, KH, KW, Cg] for the implicit GEMM and
[KH, KW, C] for the depthwise kernel, and the NHWC result goes back to NCHW.

When C_in per group is not a multiple of 16 (a 3-channel stem), the host pads each group's
channels to the next multiple of 16 with zero weights: a zero weight adds 0 to the raw
product and to sum_k w, so the result is unchanged, at the price of the extra MACs, which
`conv2d_kernel_for` reports in its reason.
"""
from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence

import numpy as np
import torch

from qcompile.ops.reference import as_pair
from qcompile.quant_math import MAX_SHIFT

from .emulator import (EmulatedRunError, KernelConstraintError, _aligned, _vector, load,
                       run_sanitized)

IMPLICIT_KERNEL = "qc_conv2d_int8_implicit"
DEPTHWISE_KERNEL = "qc_depthwise_conv2d_int8"
CONV_SOURCE = '#include "conv_int8.cuh"\n'
CHANNEL_CHUNK = 16          # bytes per cp.async along C
MAX_GROUPS = 65535          # groups ride on grid.z
INDEX_LIMIT = 2**30         # int32 index arithmetic inside the kernels stays below 2^31
DEPTHWISE_MAX_BLOCKS = 8    # emulation grid cap; the kernel's grid-stride loop does the rest


def padded_channels(cg: int) -> int:
    """C_in per group as the implicit-GEMM kernel sees it: the next multiple of 16."""
    return -(-cg // CHANNEL_CHUNK) * CHANNEL_CHUNK


def conv2d_kernel_for(x_shape: Sequence[int], w_shape: Sequence[int],
                      groups: int) -> tuple[str | None, str]:
    """(kernel name, why) for an NCHW x and [O, C/groups, KH, KW] w; (None, why not)."""
    if len(x_shape) != 4 or len(w_shape) != 4:
        return None, f"conv2d kernels need 4-D x and w, got {list(x_shape)} and {list(w_shape)}"
    c, o, cg = x_shape[1], w_shape[0], w_shape[1]
    if groups < 1 or c != cg * groups or o % groups:
        return None, f"channels do not match: x {list(x_shape)}, w {list(w_shape)}, groups={groups}"
    if groups == c == o:
        vec = 4 if c % 4 == 0 else 1
        return DEPTHWISE_KERNEL, (f"depthwise (groups == C_in == C_out == {c}) on CUDA cores, "
                                  f"{vec} channel(s) per thread")
    if groups > MAX_GROUPS:
        return None, f"the implicit-GEMM conv takes at most {MAX_GROUPS} groups, got {groups}"
    k = w_shape[2] * w_shape[3] * padded_channels(cg)
    if k >= INDEX_LIMIT:
        return None, f"K = KH * KW * C_in per group = {k} is too large for the conv kernel"
    why = f"implicit GEMM on tensor cores, K = {k}"
    if cg % CHANNEL_CHUNK:
        why += (f"; C_in per group {cg} padded to {padded_channels(cg)} with zero weights "
                f"({padded_channels(cg) / cg:.1f}x the MACs)")
    return IMPLICIT_KERNEL, why


@functools.cache
def conv_library() -> ctypes.CDLL:
    """The emulation build of kernels/conv_int8.cuh, launchers' argument types set."""
    lib = load(CONV_SOURCE)
    lib.qc_conv2d_int8_implicit_launch.argtypes = [ctypes.c_void_p] * 7
    lib.qc_depthwise_conv2d_int8_launch.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int]
    for launch in (lib.qc_conv2d_int8_implicit_launch, lib.qc_depthwise_conv2d_int8_launch):
        launch.restype = ctypes.c_int
    return lib


def _output_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    if stride < 1 or dilation < 1 or pad < 0:
        raise KernelConstraintError(f"need stride >= 1, dilation >= 1, padding >= 0; got "
                                    f"stride={stride}, dilation={dilation}, padding={pad}")
    if size + 2 * pad >= INDEX_LIMIT or dilation * (kernel - 1) >= INDEX_LIMIT:
        raise KernelConstraintError(f"spatial size {size} + 2 * {pad} or kernel extent too large")
    out = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    if out < 1:
        raise KernelConstraintError(f"the window ({kernel} taps, dilation {dilation}) does not "
                                    f"fit the padded input ({size} + 2 * {pad})")
    return out


def conv_params(x_shape, w_shape, stride, padding, dilation, groups, c_pad: int,
                scalars: Sequence[int]) -> torch.Tensor:
    """The kernels' 20 int32 arguments: N, H, W, C, OH, OW, O, KH, KW, stride, padding,
    dilation (h, w each), groups, x_zp, out_zp, qmin, qmax. C is the channel count the
    kernel sees (padded for the implicit GEMM)."""
    (n, _, h, w), (o, _, kh, kw) = x_shape, w_shape
    (sh, sw), (ph, pw), (dh, dw) = (as_pair(v, name) for v, name in (
        (stride, "stride"), (padding, "padding"), (dilation, "dilation")))
    oh, ow = _output_size(h, kh, sh, ph, dh), _output_size(w, kw, sw, pw, dw)
    if n * oh * ow >= INDEX_LIMIT:
        raise KernelConstraintError(f"N * OH * OW = {n * oh * ow} is too large for the conv kernel")
    values = [n, h, w, c_pad, oh, ow, o, kh, kw, sh, sw, ph, pw, dh, dw, groups, *scalars]
    return torch.tensor(values, dtype=torch.int32)


def _channel_params(o: int, bias, multiplier, shift) -> tuple:
    mult, sh = _vector("multiplier", multiplier, o), _vector("shift", shift, o)
    if bool((mult < 0).any()) or bool(((sh < 1) | (sh > MAX_SHIFT)).any()):
        raise KernelConstraintError(f"multipliers must be >= 0 and shifts in [1, {MAX_SHIFT}]")
    return None if bias is None else _vector("bias", bias, o), mult, sh


def _scalars(x_zp: int, out_zp: int, qmin: int, qmax: int) -> tuple[int, ...]:
    if not (-128 <= x_zp <= 127 and -128 <= qmin <= qmax <= 127 and -2**31 <= out_zp < 2**31):
        raise KernelConstraintError(f"bad x_zp={x_zp}, out_zp={out_zp} or [qmin, qmax]=[{qmin}, "
                                    f"{qmax}]")
    return int(x_zp), int(out_zp), int(qmin), int(qmax)


def pack_implicit(x: torch.Tensor, w: torch.Tensor, groups: int) -> tuple[torch.Tensor, ...]:
    """x as NHWC [N, H, W, groups * Cp] and w as [O, KH, KW, Cp], Cp = padded_channels(Cg);
    the padding channels hold 0 in both (any x value would do: their weights are 0)."""
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    cp = padded_channels(cg)
    xs = torch.zeros(n, h, wd, groups, cp, dtype=torch.int8)
    xs[..., :cg] = x.permute(0, 2, 3, 1).reshape(n, h, wd, groups, cg)
    ws = torch.zeros(o, kh, kw, cp, dtype=torch.int8)
    ws[..., :cg] = w.permute(0, 2, 3, 1)
    return _aligned(xs.reshape(n, h, wd, groups * cp)), _aligned(ws)


def pack_depthwise(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """x as NHWC [N, H, W, C] and w [C, 1, KH, KW] as [KH, KW, C]."""
    return _aligned(x.permute(0, 2, 3, 1)), _aligned(w[:, 0].permute(1, 2, 0))


def conv_problem(x, x_zp, w, bias, multiplier, shift, out_zp, qmin, qmax, stride, padding,
                 dilation, groups) -> tuple[str, tuple, torch.Tensor]:
    """Checked, packed kernel arguments: (kernel, (x, w, bias, mult, shift), params)."""
    for name, t in (("x", x), ("w", w)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int8:
            raise KernelConstraintError(f"{name} must be an int8 tensor")
    kernel, reason = conv2d_kernel_for(tuple(x.shape), tuple(w.shape), groups)
    if kernel is None:
        raise KernelConstraintError(reason)
    per_channel = _channel_params(w.shape[0], bias, multiplier, shift)
    scalars = _scalars(x_zp, out_zp, qmin, qmax)
    if kernel == DEPTHWISE_KERNEL:
        xs, ws, c_pad = *pack_depthwise(x, w), x.shape[1]
    else:
        xs, ws = pack_implicit(x, w, groups)
        c_pad = groups * padded_channels(w.shape[1])
    params = conv_params(tuple(x.shape), tuple(w.shape), stride, padding, dilation, groups,
                         c_pad, scalars)
    return kernel, (xs, ws, *per_channel), params


def conv2d_int8_emulated(x: torch.Tensor, x_zp: int, w: torch.Tensor,
                         bias: torch.Tensor | None, multiplier: torch.Tensor,
                         shift: torch.Tensor, out_zp: int, qmin: int, qmax: int,
                         stride: list[int], padding: list[int], dilation: list[int],
                         groups: int) -> torch.Tensor:
    """qconv2d (int8 NCHW) by the cuda-int8 conv kernels, emulated; the reference's result.

    Raises KernelConstraintError (a BackendError) with the reason for what the kernels do
    not take. As in the contract, the int32 accumulator must not overflow.
    """
    kernel, tensors, params = conv_problem(x, x_zp, w, bias, multiplier, shift, out_zp, qmin,
                                           qmax, stride, padding, dilation, groups)
    n, oh, ow, o = (int(params[i]) for i in (0, 4, 5, 6))
    y = torch.empty(n, oh, ow, o, dtype=torch.int8)
    ptrs = [t.data_ptr() if t is not None else None for t in (*tensors, y, params)]
    lib = conv_library()
    if kernel == DEPTHWISE_KERNEL:
        rc = lib.qc_depthwise_conv2d_int8_launch(*ptrs, DEPTHWISE_MAX_BLOCKS)
    else:
        rc = lib.qc_conv2d_int8_implicit_launch(*ptrs)
    if rc != 0:
        raise EmulatedRunError(f"emulated launch of {kernel} failed")
    return y.permute(0, 3, 1, 2).contiguous()


CONV_DRIVER = r'''#include "conv_int8.cuh"
#include <fstream>

/* Problem file: int32 kernel (0: implicit GEMM, 1: depthwise), has_bias, x bytes, w bytes,
 * the kernels' 20 int32 arguments, then x, w, bias, multiplier, shift as raw arrays. Writes
 * y (N * OH * OW * O int8, NHWC). Buffers have their exact sizes (rounded up to 16 bytes),
 * so AddressSanitizer sees a read past x or w. */
static void* read_array(std::ifstream& in, size_t bytes) {
  void* p = std::aligned_alloc(16, (bytes + 15) / 16 * 16 + 16 * (bytes == 0));
  in.read(static_cast<char*>(p), static_cast<std::streamsize>(bytes));
  return p;
}

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  std::ifstream in(argv[1], std::ios::binary);
  int32_t h[24];
  in.read(reinterpret_cast<char*>(h), sizeof(h));
  const int32_t* p = h + 4;
  size_t o = p[6], y_bytes = (size_t)p[0] * p[4] * p[5] * o;
  auto x = static_cast<int8_t*>(read_array(in, h[2]));
  auto w = static_cast<int8_t*>(read_array(in, h[3]));
  auto bias = static_cast<int32_t*>(read_array(in, 4 * o));
  auto mult = static_cast<int32_t*>(read_array(in, 4 * o));
  auto shift = static_cast<int32_t*>(read_array(in, 4 * o));
  if (!in) return 3;
  auto y = static_cast<int8_t*>(std::aligned_alloc(16, (y_bytes + 15) / 16 * 16));
  const int32_t* b = h[1] ? bias : nullptr;
  int rc = h[0] ? qc_depthwise_conv2d_int8_launch(x, w, b, mult, shift, y, p, 2)
                : qc_conv2d_int8_implicit_launch(x, w, b, mult, shift, y, p);
  std::ofstream(argv[2], std::ios::binary).write(reinterpret_cast<char*>(y), y_bytes);
  for (void* q : {(void*)x, (void*)w, (void*)bias, (void*)mult, (void*)shift, (void*)y})
    std::free(q);
  return rc;
}
'''


def _problem_bytes(kernel: str, tensors: tuple, params: torch.Tensor) -> bytes:
    xs, ws, bias, mult, sh = tensors
    bias_array = bias if bias is not None else torch.zeros_like(mult)
    header = [kernel == DEPTHWISE_KERNEL, bias is not None, xs.numel(), ws.numel()]
    arrays = [np.array(header, dtype=np.int32), params.numpy()]
    arrays += [t.numpy() for t in (xs, ws, bias_array, mult, sh)]
    return b"".join(a.tobytes() for a in arrays)


def conv2d_int8_sanitized(sanitizer: str, *args, **kwargs) -> torch.Tensor:
    """conv2d_int8_emulated in a separate process built with -fsanitize=`sanitizer`
    ('thread' or 'address'); a sanitizer report raises EmulatedRunError carrying it."""
    kernel, tensors, params = conv_problem(*args, **kwargs)
    out = run_sanitized(CONV_DRIVER, sanitizer, _problem_bytes(kernel, tensors, params), kernel)
    y = torch.frombuffer(bytearray(out), dtype=torch.int8)
    n, oh, ow, o = (int(params[i]) for i in (0, 4, 5, 6))
    return y.reshape(n, oh, ow, o).permute(0, 3, 1, 2).contiguous()
