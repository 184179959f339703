"""Compile-time constants of the integer-only ops (all float math lives here) and their
stated error bounds.

Each `*_params` function takes the float qparams around the op and returns the integer
arguments of its kernel in `integer_only.py`, in call order after the input tensor. They
raise ValueError when a rescale factor has no integer multiplier; the lowering pass turns
that into a LoweringError naming the node.

Error bounds, in real units, of dequantize(op(q)) against the float op applied to
dequantize(q) and clamped to the output's representable range:

  softmax    out_scale / 2 + SOFTMAX_ABS_ERR    (0.0065: twice the I-BERT exp polynomial's
             relative error 0.003 on [-ln2, 0], plus input rounding)
  gelu       out_scale / 2 + GELU_ABS_ERR       (0.019: the I-BERT erf polynomial gives
             |x|/2 * |erf error| <= 0.0182, plus input rounding)
  layernorm  out_scale / 2 + max|gamma| * (2**-(NORM_BITS+1) + 2**-(MEAN_BITS+1)
             + sqrt(N - 1) * 2**-(VAR_SHIFT+MEAN_BITS)) + sqrt(N - 1) * gamma_scale / 2
             + acc_scale / 2, for rows whose standard deviation is at least one input step
  add, linear  exact up to rounding to the 16-bit output scale (wide_scale) and its clamp
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qcompile.quant_math import quantize_multiplier, quantize_multipliers, shared_shift_multipliers

from .integer_only import (ERF_BITS, ERF_ONE, EXP_BITS, MEAN_BITS, NORM_BITS, PROB_BITS, VAR_SHIFT,
                           WIDE_MAX)

SOFTMAX_ABS_ERR = 0.0065
GELU_ABS_ERR = 0.019
GAMMA_LEVELS = 4095           # gamma quantized to 12 bits of its largest magnitude
ACC_LIMIT = 2 ** 31
EPS_LIMIT = 2 ** 62
MAX_NORM_SIZE = 8192         # sum(c * c) stays inside int64

EXP_UNIT = math.log(2) / 2 ** EXP_BITS     # S_T of the softmax kernel
ERF_UNIT = 2.0 ** -ERF_BITS                # S_U of the GELU kernel


@dataclass(frozen=True)
class OutQ:
    """Output qparams of an op: scale, zero point and clamp bounds."""
    scale: float
    zero_point: int
    qmin: int = -128
    qmax: int = 127


def softmax_params(in_scale: float, in_zp: int, out: OutQ, factor: float = 1.0) -> tuple:
    """i_softmax arguments for softmax(factor * dequantize(q)); `factor` > 0 folds a
    preceding multiplication by a constant (attention's 1/sqrt(d))."""
    if not factor > 0:
        raise ValueError(f"softmax input factor must be positive, got {factor}")
    m_in, n_in = quantize_multiplier(in_scale * factor / EXP_UNIT)
    m_out, n_out = quantize_multiplier(2.0 ** -PROB_BITS / out.scale)
    return (in_zp, m_in, n_in, m_out, n_out, out.zero_point, out.qmin, out.qmax)


def gelu_params(in_scale: float, in_zp: int, out: OutQ) -> tuple:
    """i_gelu arguments: u = x / sqrt(2) in units ERF_UNIT; (1 + erf) in units 1/ERF_ONE."""
    m_in, n_in = quantize_multiplier(in_scale / (math.sqrt(2.0) * ERF_UNIT))
    m_out, n_out = quantize_multiplier(in_scale / (2.0 * ERF_ONE * out.scale))
    return (in_zp, m_in, n_in, m_out, n_out, out.zero_point, out.qmin, out.qmax)


@dataclass(frozen=True)
class LayerNormConstants:
    """i_layernorm arguments after q, and the scales that the error bound needs."""
    in_zp: int
    gamma: torch.Tensor          # int32 [N], units gamma_scale
    beta: torch.Tensor           # int32 [N], units acc_scale
    eps: int
    multiplier: int
    shift: int
    out_zp: int
    qmin: int
    qmax: int
    gamma_scale: float
    acc_scale: float

    def args(self) -> tuple:
        return (self.in_zp, self.gamma, self.beta, self.eps, self.multiplier, self.shift,
                self.out_zp, self.qmin, self.qmax)


def _gamma_scale(gamma: torch.Tensor, beta: torch.Tensor) -> float:
    g = float(gamma.abs().max()) / GAMMA_LEVELS
    b = float(beta.abs().max()) * 2 ** NORM_BITS / 2 ** 30
    return max(g, b, 1e-30)


def layernorm_params(in_scale: float, in_zp: int, gamma: torch.Tensor | None,
                     beta: torch.Tensor | None, eps: float, out: OutQ,
                     n: int) -> LayerNormConstants:
    """i_layernorm arguments for layer_norm over a last dim of size n (gamma 1, beta 0 when
    absent). Raises ValueError when the int32 accumulator could overflow."""
    if not 1 <= n <= MAX_NORM_SIZE:
        raise ValueError(f"layernorm size {n} outside [1, {MAX_NORM_SIZE}]")
    gamma = torch.ones(n) if gamma is None else gamma.detach().double().flatten()
    beta = torch.zeros(n) if beta is None else beta.detach().double().flatten()
    g_scale = _gamma_scale(gamma, beta)
    acc_scale = g_scale * 2.0 ** -NORM_BITS
    gamma_q = torch.round(gamma.double() / g_scale).to(torch.int32)
    beta_q = torch.round(beta.double() / acc_scale).to(torch.int32)
    bound = (math.sqrt(max(n - 1, 1)) * 1.01 + 1) * 2 ** NORM_BITS * int(gamma_q.abs().max())
    if bound + int(beta_q.abs().max()) >= ACC_LIMIT:
        raise ValueError(f"layernorm accumulator could leave int32 (N={n})")
    eps_q = min(round(eps * 4.0 ** (VAR_SHIFT + MEAN_BITS) / in_scale ** 2), EPS_LIMIT)
    m, shift = quantize_multiplier(acc_scale / out.scale)
    return LayerNormConstants(in_zp, gamma_q, beta_q, eps_q, m, shift, out.zero_point,
                              out.qmin, out.qmax, g_scale, acc_scale)


def wide_scale(lo: float, hi: float) -> float:
    """Scale of a 16-bit residual value calibrated to [lo, hi], with 2x headroom."""
    return max(2.0 * max(abs(lo), abs(hi)) / WIDE_MAX, 1e-30)


def add_params(a_scale: float, a_zp: int, b_scale: float, b_zp: int,
               out_scale: float) -> tuple:
    """i_add arguments without the tensors: (a_zp, Ma, b_zp, Mb, shift)."""
    (m_a, m_b), shift = shared_shift_multipliers([a_scale / out_scale, b_scale / out_scale])
    return (a_zp, m_a, b_zp, m_b, shift)


def wide_linear_params(in_scale: float, w_scales: torch.Tensor, bias: torch.Tensor | None,
                       out_scale: float) -> tuple:
    """i_linear (bias int32 or None, multiplier int32 [N], shift int32 [N])."""
    acc_scales = in_scale * w_scales.detach().double()
    bias_q = None
    if bias is not None:
        bias_q = torch.round(bias.detach().double() / acc_scales)
        if float(bias_q.abs().max()) >= ACC_LIMIT:
            raise ValueError("bias does not fit int32 at scale s_x * s_w")
        bias_q = bias_q.to(torch.int32)
    m, n = quantize_multipliers(acc_scales / out_scale)
    return bias_q, m, n


def softmax_error_bound(out: OutQ) -> float:
    return out.scale / 2 + SOFTMAX_ABS_ERR


def gelu_error_bound(out: OutQ) -> float:
    return out.scale / 2 + GELU_ABS_ERR


def layernorm_error_bound(consts: LayerNormConstants, out: OutQ, gamma_max: float,
                          n: int) -> float:
    norm_err = (2.0 ** -(NORM_BITS + 1) + 2.0 ** -(MEAN_BITS + 1)
                + math.sqrt(max(n - 1, 1)) * 2.0 ** -(VAR_SHIFT + MEAN_BITS))
    return (out.scale / 2 + gamma_max * norm_err
            + math.sqrt(max(n - 1, 1)) * consts.gamma_scale / 2 + consts.acc_scale / 2)
