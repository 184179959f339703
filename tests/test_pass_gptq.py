"""GPTQ: equals rounding with an identity Hessian, beats it on correlated inputs."""
import warnings

import pytest
import torch

import qcompile
from qcompile.ops.weight_only import dequantize_int4, pack_int4, quantize_int4_codes
from qcompile.passes.quantize.gptq_solver import GptqSettings, gptq_quantize

warnings.filterwarnings("ignore", category=qcompile.QCompileWarning)


def _dequantized(codes, scales, zeros, group_size):
    return dequantize_int4(pack_int4(codes), scales, zeros, group_size)


def test_identity_hessian_gives_round_to_nearest():
    torch.manual_seed(0)
    w = torch.randn(8, 64)
    codes, scales, zeros = gptq_quantize(w, torch.eye(64), GptqSettings(group_size=32))
    rtn_codes, rtn_scales, rtn_zeros = quantize_int4_codes(w, 32, True)
    assert torch.equal(codes, rtn_codes)
    assert torch.allclose(scales, rtn_scales) and torch.equal(zeros, rtn_zeros)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("symmetric", [True, False])
def test_output_error_below_rounding_on_correlated_inputs(act_order, symmetric):
    torch.manual_seed(1)
    mixing = torch.randn(64, 64) * 0.3 + torch.eye(64)
    x = torch.randn(512, 64) @ mixing
    w = torch.randn(16, 64)
    hessian = 2 * x.T.double() @ x.double() / x.shape[0]
    settings = GptqSettings(group_size=32, symmetric=symmetric, act_order=act_order)
    codes, scales, zeros = gptq_quantize(w, hessian, settings)
    assert int(codes.max()) <= 15
    gptq_error = (x @ (_dequantized(codes, scales, zeros, 32) - w).T).pow(2).mean()
    rtn = quantize_int4_codes(w, 32, symmetric)
    rtn_error = (x @ (_dequantized(*rtn, 32) - w).T).pow(2).mean()
    assert gptq_error < 0.8 * rtn_error


@pytest.mark.parametrize("bits", ["w4", "w8"])
def test_recipe_compiles_and_beats_rtn_end_to_end(bits):
    torch.manual_seed(2 if bits == "w4" else 4)
    mixing = torch.randn(64, 64) * 0.5 + torch.eye(64)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(),
                                torch.nn.Linear(64, 16)).eval()
    batches = [torch.randn(32, 64) @ mixing for _ in range(4)]
    x = torch.randn(64, 64) @ mixing
    options = {"group_size": 32} if bits == "w4" else {"weight_calibration": "minmax"}
    lowered = torch.ops.qcompile.qlinear_w4 if bits == "w4" else torch.ops.qcompile.qlinear_w8
    errors = {}
    for solver in ("rtn", "gptq"):
        cm = qcompile.compile(model, example_inputs=(batches[0],), calibration_data=batches,
                              recipe=f"{bits}a16-{solver}", options=options)
        ops = [n.target for n in cm.graph.graph.nodes]
        assert ops.count(lowered.default) == 2
        with torch.no_grad():
            errors[solver] = qcompile.instruments.sqnr_db(model(x), cm(x))
    assert errors["gptq"] > errors["rtn"]


def test_int8_rows_beat_rounding_and_stay_in_range():
    torch.manual_seed(3)
    mixing = torch.randn(64, 64) * 0.5 + torch.eye(64)
    x = torch.randn(512, 64) @ mixing
    w = torch.randn(16, 64)
    hessian = 2 * x.T.double() @ x.double() / x.shape[0]
    codes, scales, zeros = gptq_quantize(w, hessian, GptqSettings(bits=8))
    assert codes.dtype == torch.int8 and scales.shape == (16, 1) and not zeros.any()
    assert int(codes.abs().max()) <= 127
    rtn_scales = w.abs().amax(dim=1, keepdim=True) / 127
    rtn = torch.clamp(torch.round(w / rtn_scales), -127, 127) * rtn_scales
    gptq_error = (x @ (codes.float() * scales - w).T).pow(2).mean()
    assert gptq_error < 0.8 * (x @ (rtn - w).T).pow(2).mean()
