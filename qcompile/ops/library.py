"""The `qcompile::` torch ops: reference kernels plus fake (shape-only) implementations."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from qcompile.ops import float_out, fp8, integer_only, lowp, reference, weight_only

Tensor = torch.Tensor

OP_NAMES = (
    "quantize", "dequantize", "quantize_per_channel", "dequantize_per_channel", "requantize",
    "qlinear", "qconv2d", "qmatmul", "qadd", "qmax_pool2d", "qavg_pool2d", "qmean", "qcat",
    "qclamp", "qlinear_dynamic",
)
FLOAT_OUT_OP_NAMES = ("qlinear_f32", "qconv2d_f32", "qmatmul_f32")

FP8_OP_NAMES = ("quantize_fp8", "linear_fp8", "matmul_fp8", "conv2d_fp8")
INTEGER_ONLY_OP_NAMES = ("i_softmax", "i_layernorm", "i_gelu", "i_add", "i_linear")
# module -> the names of its reference kernels registered as qcompile::<name>
_KERNELS = (
    (reference, OP_NAMES),
    (float_out, FLOAT_OUT_OP_NAMES),
    (weight_only, ("qlinear_w4", "qlinear_w8", "dequantize_w8", "dequantize_int4")),
    (lowp, ("linear_lowp", "matmul_lowp", "conv2d_lowp")),
    (fp8, FP8_OP_NAMES),
    (integer_only, INTEGER_ONLY_OP_NAMES),
)
OPS = {
    name: torch.library.custom_op(f"qcompile::{name}", getattr(module, name), mutates_args=())
    for module, names in _KERNELS for name in names
}


def _like(t: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.empty_like(t, dtype=dtype, memory_format=torch.contiguous_format)


@OPS["quantize"].register_fake
def _quantize_fake(x, scale, zero_point, qmin, qmax):
    return _like(x, torch.int8)


@OPS["dequantize"].register_fake
def _dequantize_fake(q, scale, zero_point):
    return _like(q, torch.float32)


@OPS["quantize_per_channel"].register_fake
def _quantize_per_channel_fake(x, scales, axis, qmin, qmax):
    return _like(x, torch.int8)


@OPS["dequantize_per_channel"].register_fake
def _dequantize_per_channel_fake(q, scales, axis):
    return _like(q, torch.float32)


@OPS["requantize"].register_fake
def _requantize_fake(q, in_zp, multiplier, shift, out_zp, qmin, qmax):
    return _like(q, torch.int8)


@OPS["qlinear"].register_fake
def _qlinear_fake(x, x_zp, w, bias, multiplier, shift, out_zp, qmin, qmax):
    return x.new_empty((*x.shape[:-1], w.shape[0]), dtype=torch.int8)


def conv2d_output_size(size, kernel: int, stride: int, padding: int, dilation: int):
    """Output length of a convolution along one spatial dim."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@OPS["qconv2d"].register_fake
def _qconv2d_fake(x, x_zp, w, bias, multiplier, shift, out_zp, qmin, qmax, stride, padding,
                  dilation, groups):
    stride, padding = reference.as_pair(stride, "stride"), reference.as_pair(padding, "padding")
    dilation = reference.as_pair(dilation, "dilation")
    spatial = [conv2d_output_size(x.shape[2 + i], w.shape[2 + i], stride[i], padding[i],
                                  dilation[i]) for i in range(2)]
    return x.new_empty((x.shape[0], w.shape[0], *spatial), dtype=torch.int8)


@OPS["qmatmul"].register_fake
def _qmatmul_fake(a, a_zp, b, b_zp, multiplier, shift, out_zp, qmin, qmax):
    return torch.matmul(a.to(torch.float32), b.to(torch.float32)).to(torch.int8)


@OPS["qadd"].register_fake
def _qadd_fake(a, a_zp, a_multiplier, b, b_zp, b_multiplier, shift, out_zp, qmin, qmax):
    return a.new_empty(torch.broadcast_shapes(a.shape, b.shape), dtype=torch.int8)


@OPS["qmax_pool2d"].register_fake
def _qmax_pool2d_fake(x, kernel, stride, padding, dilation, ceil_mode):
    y = F.max_pool2d(x.to(torch.float32), kernel, stride or kernel, padding, dilation, ceil_mode)
    return y.to(torch.int8)


@OPS["qavg_pool2d"].register_fake
def _qavg_pool2d_fake(x, x_zp, kernel, stride, padding, ceil_mode, multiplier, shift, out_zp,
                      qmin, qmax):
    y = F.avg_pool2d(x.to(torch.float32), kernel, stride or kernel, padding, ceil_mode)
    return y.to(torch.int8)


@OPS["qmean"].register_fake
def _qmean_fake(x, x_zp, dims, keepdim, multiplier, shift, out_zp, qmin, qmax):
    reduced = set(reference.reduced_dims(x.dim(), dims))
    shape = [1 if d in reduced else size for d, size in enumerate(x.shape)
             if keepdim or d not in reduced]
    return x.new_empty(shape, dtype=torch.int8)


@OPS["qcat"].register_fake
def _qcat_fake(tensors, dim):
    return torch.cat(list(tensors), dim)


@OPS["qclamp"].register_fake
def _qclamp_fake(x, qmin, qmax):
    return _like(x, torch.int8)


@OPS["i_softmax"].register_fake
def _i_softmax_fake(q, in_zp, in_multiplier, in_shift, out_multiplier, out_shift, out_zp, qmin,
                    qmax, dim=-1, mask: Optional[Tensor] = None):
    return _like(q, torch.int8)


@OPS["i_gelu"].register_fake
def _i_gelu_fake(q, in_zp, in_multiplier, in_shift, out_multiplier, out_shift, out_zp, qmin,
                 qmax):
    return _like(q, torch.int8)


@OPS["i_layernorm"].register_fake
def _i_layernorm_fake(x, in_zp, gamma, beta, eps, multiplier, shift, out_zp, qmin, qmax):
    return _like(x, torch.int8)


@OPS["i_linear"].register_fake
def _i_linear_fake(x, x_zp, w, bias: Optional[Tensor], multiplier, shift):
    return x.new_empty((*x.shape[:-1], w.shape[0]), dtype=torch.int32)


@OPS["i_add"].register_fake
def _i_add_fake(a, a_zp, a_multiplier, b, b_zp, b_multiplier, shift):
    return a.new_empty(torch.broadcast_shapes(a.shape, b.shape), dtype=torch.int32)


@OPS["qlinear_dynamic"].register_fake
def _qlinear_dynamic_fake(x, w, w_scale, bias: Optional[Tensor]):
    return x.new_empty((*x.shape[:-1], w.shape[0]), dtype=torch.float32)


@OPS["qlinear_f32"].register_fake
def _qlinear_f32_fake(x, x_zp, w, bias: Optional[Tensor], scale):
    return x.new_empty((*x.shape[:-1], w.shape[0]), dtype=torch.float32)


@OPS["qconv2d_f32"].register_fake
def _qconv2d_f32_fake(x, x_zp, w, bias: Optional[Tensor], scale, stride, padding, dilation,
                      groups):
    out = _qconv2d_fake(x, x_zp, w, None, scale, scale, 0, -128, 127, stride, padding,
                        dilation, groups)
    return out.to(torch.float32)


@OPS["qmatmul_f32"].register_fake
def _qmatmul_f32_fake(a, a_zp, b, b_zp, scale):
    return torch.matmul(a.to(torch.float32), b.to(torch.float32))


@OPS["qlinear_w4"].register_fake
def _qlinear_w4_fake(x, packed, scales, zeros, group_size, bias: Optional[Tensor]):
    return x.new_empty((*x.shape[:-1], packed.shape[0]), dtype=torch.float32)


@OPS["dequantize_int4"].register_fake
def _dequantize_int4_fake(packed, scales, zeros, group_size):
    return packed.new_empty((packed.shape[0], packed.shape[1] * 2), dtype=torch.float32)


@OPS["qlinear_w8"].register_fake
def _qlinear_w8_fake(x, w, scales, bias: Optional[Tensor]):
    return x.new_empty((*x.shape[:-1], w.shape[0]), dtype=torch.float32)


@OPS["dequantize_w8"].register_fake
def _dequantize_w8_fake(w, scales):
    return _like(w, torch.float32)


@OPS["linear_lowp"].register_fake
def _linear_lowp_fake(x, w, bias: Optional[Tensor], dtype):
    return x.new_empty((*x.shape[:-1], w.shape[0]), dtype=torch.float32)


@OPS["matmul_lowp"].register_fake
def _matmul_lowp_fake(a, b, dtype):
    return torch.matmul(a, b)


@OPS["conv2d_lowp"].register_fake
def _conv2d_lowp_fake(x, w, bias: Optional[Tensor], stride, padding, dilation, groups, dtype):
    return torch.nn.functional.conv2d(x, w.to(torch.float32), None, stride, padding, dilation,
                                      groups)


@OPS["quantize_fp8"].register_fake
def _quantize_fp8_fake(x, scale, format):
    return _like(x, fp8.fp8_format(format).dtype)


@OPS["linear_fp8"].register_fake
def _linear_fp8_fake(x, x_scale, w, w_scale, bias: Optional[Tensor]):
    return x.new_empty((*x.shape[:-1], w.shape[0]), dtype=torch.float32)


@OPS["matmul_fp8"].register_fake
def _matmul_fp8_fake(a, a_scale, b, b_scale):
    return torch.matmul(a.to(torch.float32), b.to(torch.float32))


@OPS["conv2d_fp8"].register_fake
def _conv2d_fp8_fake(x, x_scale, w, w_scale, bias: Optional[Tensor], stride, padding, dilation,
                     groups):
    return _qconv2d_f32_fake(x, 0, w, None, w_scale, stride, padding, dilation, groups)
