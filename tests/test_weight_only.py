"""Weight-only int4 (w4a16-rtn): packing, group quantization, the op, the recipe end to end."""
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qcompile
from qcompile.ops.weight_only import (dequantize_int4, pack_int4, qlinear_w4,
                                      quantize_int4_groups, unpack_int4)

warnings.filterwarnings("ignore", category=qcompile.QCompileWarning)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 15), min_size=2, max_size=64).filter(lambda v: len(v) % 2 == 0))
def test_pack_unpack_round_trip(values):
    codes = torch.tensor([values], dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (1, len(values) // 2)
    assert torch.equal(unpack_int4(packed), codes)
    assert packed[0, 0].item() == values[0] | (values[1] << 4)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_group_rounding_error_is_at_most_half_a_step(symmetric, group_size):
    torch.manual_seed(0)
    w = torch.randn(16, 256) * torch.linspace(0.1, 5, 256)
    packed, scales, zeros = quantize_int4_groups(w, group_size, symmetric)
    error = (dequantize_int4(packed, scales, zeros, group_size) - w).abs()
    step = scales.repeat_interleave(group_size, dim=1)
    assert (error <= step / 2 + 1e-6).all()
    if symmetric:
        assert (zeros == 8).all()


def test_extreme_rows_all_zero_and_constant():
    w = torch.zeros(2, 64)
    w[1] = -3.0
    for symmetric in (True, False):
        packed, scales, zeros = quantize_int4_groups(w, 32, symmetric)
        assert torch.allclose(dequantize_int4(packed, scales, zeros, 32), w)


def test_op_equals_float_linear_on_dequantized_weight():
    torch.manual_seed(1)
    w, x, b = torch.randn(12, 64), torch.randn(3, 5, 64), torch.randn(12)
    packed, scales, zeros = quantize_int4_groups(w, 32, False)
    want = torch.nn.functional.linear(x, dequantize_int4(packed, scales, zeros, 32), b)
    assert torch.equal(torch.ops.qcompile.qlinear_w4(x, packed, scales, zeros, 32, b), want)
    assert torch.equal(qlinear_w4(x, packed, scales, zeros, 32, b), want)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 128)
        self.odd = torch.nn.Linear(128, 48)
        self.fc2 = torch.nn.Linear(48, 8)

    def forward(self, x):
        return self.fc2(torch.relu(self.odd(torch.relu(self.fc1(x)))))


def test_recipe_lowers_linears_and_explains_the_rest(tmp_path):
    torch.manual_seed(2)
    model = Net().eval()
    x = torch.randn(4, 64)
    cm = qcompile.compile(model, example_inputs=(x,), recipe="w4a16-rtn",
                          options={"group_size": 64})
    ops = [n.target for n in cm.graph.graph.nodes if n.op == "call_function"]
    assert ops.count(torch.ops.qcompile.qlinear_w4.default) == 2
    reasons = {r.name: r.float_reason for r in cm.report.float_islands}
    assert any("not a multiple of group_size 64" in (v or "") for v in reasons.values())
    with torch.no_grad():
        assert qcompile.instruments.sqnr_db(model(x), cm(x)) > 15
    assert cm.report.totals["weight_bytes_after"] < cm.report.totals["weight_bytes_before"] / 2
    cm.save(str(tmp_path / "w4.qcm"))
    assert torch.equal(qcompile.load(str(tmp_path / "w4.qcm"))(x), cm(x))


def test_targets_without_an_int4_kernel_say_which_layer():
    pytest.importorskip("tvm")
    x = torch.randn(4, 64)
    with pytest.raises(qcompile.BackendError, match="qlinear_w4"):
        qcompile.compile(Net().eval(), target="cpu-int8", example_inputs=(x,),
                         recipe="w4a16-rtn", options={"group_size": 64})
