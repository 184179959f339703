"""cast-lowp: fp16/bf16 recipes round operands to half precision, accumulate in float32."""
import warnings

import pytest
import torch

import qcompile
from qcompile.ops.lowp import round_to

from tiny_models import ConvFcOuter

warnings.filterwarnings("ignore", category=qcompile.QCompileWarning)


@pytest.mark.parametrize("recipe,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_recipe_matches_half_precision_operands_with_float32_accumulation(recipe, dtype):
    torch.manual_seed(0)
    model = ConvFcOuter().eval()
    x = torch.randn(2, 3, 8, 8)
    cm = qcompile.compile(model, example_inputs=(x,), recipe=recipe)
    kinds = {str(n.target) for n in cm.graph.graph.nodes if n.op == "call_function"}
    assert {"qcompile.conv2d_lowp.default", "qcompile.linear_lowp.default",
            "qcompile.matmul_lowp.default"} <= kinds
    half = lambda t: t.to(dtype).to(torch.float32)  # noqa: E731
    with torch.no_grad():
        h = torch.nn.functional.conv2d(half(x), half(model.conv.weight), model.conv.bias, 1, 1)
        y = torch.nn.functional.linear(half(torch.relu(h).flatten(1)), half(model.fc.weight),
                                       model.fc.bias)
        want = torch.matmul(half(y.unsqueeze(-1)), half(y.unsqueeze(-2)))
    assert torch.equal(cm(x), want)
    totals = cm.report.totals
    assert totals["weight_bytes_after"] < 0.6 * totals["weight_bytes_before"]


def test_round_to_is_round_to_nearest_even():
    x = torch.tensor([1.0 + 2 ** -11, 1.0 + 3 * 2 ** -11])     # halfway cases for fp16
    assert torch.equal(round_to(x, "fp16"), torch.tensor([1.0, 1.0 + 2 ** -9]))
    with pytest.raises(ValueError, match="fp16, bf16"):
        round_to(x, "fp8")
