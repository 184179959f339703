"""Scale profiles (pow2_scales, per_tensor_weights): chosen in calibrate and insert-qdq."""
import functools
import math
import warnings

import pytest
import torch
from torch import nn

import qcompile
from qcompile.errors import QCompileWarning, TargetError
from qcompile.op_kinds import is_qcompile_op
from qcompile.passes.quantize.scale_profile import (constrain_activation,
                                                     constrain_weight_scales, pow2_ceil,
                                                     weight_sqnr_db)
from qcompile.recipes import QuantOptions

pytestmark = pytest.mark.usefixtures("one_thread")

POW2 = QuantOptions(pow2_scales=True)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        y = y + self.conv2(y)
        return self.fc(y.mean(dim=(2, 3)))


def _compile(options, net=None):
    torch.manual_seed(1)
    data = [(torch.randn(2, 3, 8, 8),) for _ in range(3)]
    return qcompile.compile((net or Net()).eval(), example_inputs=data[0], calibration_data=data,
                            options=options), data


def _int_args(gm, node):
    """Every integer (or integer tensor) argument of a qcompile op, by name."""
    schema = node.target._schema
    values = {}
    for arg, value in zip(schema.arguments, node.args):
        if isinstance(value, torch.fx.Node) and value.op == "get_attr":
            value = functools.reduce(getattr, value.target.split("."), gm)
        values[arg.name] = value
    return values


def _is_power_of_two(value) -> bool:
    values = value.flatten().tolist() if isinstance(value, torch.Tensor) else [value]
    return all(v > 0 and math.log2(v).is_integer() for v in values)


def test_pow2_ceil_never_shrinks():
    for scale in (1e-9, 0.013, 0.5, 1.0, 3.0, 1e6):
        p = pow2_ceil(scale)
        assert scale <= p < 2 * scale and math.log2(p).is_integer()


@pytest.mark.parametrize("zero_point", [-128, -3, 0, 127])
def test_activation_keeps_low_end_and_range(zero_point):
    scale = 0.0173
    new_scale, new_zp = constrain_activation(scale, zero_point, POW2)
    assert math.log2(new_scale).is_integer()
    low, new_low = (-128 - zero_point) * scale, (-128 - new_zp) * new_scale
    high, new_high = (127 - zero_point) * scale, (127 - new_zp) * new_scale
    if zero_point == 0:                          # symmetric stays symmetric, range grows
        assert new_zp == 0 and new_low <= low and new_high >= high
    else:                                        # the low end stays (within half a step)
        assert abs(new_low - low) <= new_scale / 2 + 1e-12
        assert new_high >= high - new_scale


def test_unconstrained_options_leave_scales_alone():
    assert constrain_activation(0.0173, 5, QuantOptions()) == (0.0173, 5)
    scales = torch.tensor([0.1, 0.3])
    assert torch.equal(constrain_weight_scales(scales, QuantOptions()), scales)


def test_per_tensor_weights_take_the_largest_scale():
    scales = torch.tensor([0.1, 0.3, 0.2])
    out = constrain_weight_scales(scales, QuantOptions(per_tensor_weights=True))
    assert torch.equal(out, torch.full((3,), 0.3))


def test_pow2_compile_requantizes_by_shifts_only():
    cm, data = _compile({"pow2_scales": True})
    seen = 0
    for node in cm.graph.graph.nodes:
        if not is_qcompile_op(node):
            continue
        for name, value in _int_args(cm.graph, node).items():
            if "multiplier" in name:
                assert _is_power_of_two(value), (node.name, name, value)
                seen += 1
            if name == "scale":
                assert _is_power_of_two(value), (node.name, value)
    assert seen >= 4
    float_out = Net()(data[0][0])
    assert torch.nn.functional.cosine_similarity(cm(*data[0]).flatten(), float_out.flatten(),
                                                 dim=0) > 0.95


def test_weight_sqnr_warning_names_the_layer():
    net = Net()
    with torch.no_grad():                       # one channel 1000x the others: per-tensor hurts
        net.conv2.weight[0].mul_(1000.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _compile({"per_tensor_weights": True, "pow2_scales": True}, net)
    texts = [str(w.message) for w in caught if issubclass(w.category, QCompileWarning)]
    assert any("layer conv2" in t and "dB SQNR" in t for t in texts), texts


def test_weight_sqnr_is_infinite_for_exact_weights():
    w = torch.tensor([[1.0, -2.0], [4.0, 0.0]])
    assert weight_sqnr_db(w, torch.tensor([1.0, 1.0])) == math.inf


def test_npu_target_refuses_weight_only_recipes():
    if not qcompile.targets()[[t.name for t in qcompile.targets()].index("npu-int8")].available:
        pytest.skip("npu-int8 is not available here")
    with pytest.raises(TargetError, match="integer-only int8 recipes"):
        qcompile.compile(nn.Linear(4, 4), target="npu-int8", example_inputs=torch.randn(2, 4),
                         recipe="w4a16-rtn")
