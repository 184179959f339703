"""Use the hand-written GEMM micro-kernels (qlinear.py) for qlinear/qlinear_f32 in a Relax
module, when the weights and qparams are constants (they always are after lowering)."""
from __future__ import annotations

import torch
import tvm
from tvm import relax

from .cpu_features import choose_path
from .qlinear import build_qlinear, build_qlinear_f32
from .relax_embed import emit_gemm


def _tensor(value) -> torch.Tensor | None:
    if value is None:
        return None
    if isinstance(value, tvm.ir.expr.Constant):
        return torch.from_numpy(value.value.numpy().copy())
    raise TypeError("not a constant")


def _constants(*values):
    try:
        return [_tensor(v) for v in values]
    except TypeError:
        return None


def qlinear(x, x_zp, w, bias, multiplier, shift, out_zp, qmin, qmax, name: str):
    values = _constants(w, bias, multiplier, shift)
    if values is None:
        return None
    w_t, bias_t, m_t, n_t = values
    kernel = build_qlinear(w_t, int(x_zp), bias_t, m_t, n_t, int(out_zp), int(qmin), int(qmax),
                           path=choose_path())
    return emit_gemm(relax.BlockBuilder.current(), kernel, x, f"gemm_{name}")


def qlinear_f32(x, x_zp, w, bias, scale, name: str):
    values = _constants(w, bias, scale)
    if values is None:
        return None
    w_t, bias_t, scale_t = values
    kernel = build_qlinear_f32(w_t, int(x_zp), bias_t, scale_t, path=choose_path())
    return emit_gemm(relax.BlockBuilder.current(), kernel, x, f"gemm_{name}")
