"""bias-correction: only the bias changes, by the mean output error of int8 weight rounding."""
import warnings

import torch
from torch import nn

import qcompile
from qcompile.ops import reference
from qcompile.weight_ranges import weight_scales

warnings.filterwarnings("ignore", category=qcompile.QCompileWarning)
PIPELINE = "canonicalize,fuse,bias-correction"


class Convs(nn.Module):
    """An ordinary conv then a depthwise conv, both without padding, then a linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3)
        self.depthwise = nn.Conv2d(8, 8, 3, groups=8, bias=False)
        self.fc = nn.Linear(8, 6)

    def forward(self, x):
        return self.fc(self.depthwise(self.conv(x)).mean(dim=(2, 3)))


def _offset_batches(shape, count=4, seed=1):
    """Inputs whose channels have means far from 0 (so rounding error shifts the output)."""
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.linspace(-3, 5, shape[1]).reshape(1, -1, *[1] * (len(shape) - 2))
    return [torch.randn(*shape, generator=gen) + offsets for _ in range(count)]


def _rounding_error(weight, method="mse"):
    scales = weight_scales(weight, method)
    wq = reference.quantize_per_channel(weight, scales, 0, -127, 127).float()
    return wq * scales.reshape(-1, *[1] * (weight.dim() - 1)) - weight


def _biases(qc, gm):
    return [qc.const(gm, n.args[2]) if len(n.args) > 2 and n.args[2] is not None else None
            for n in qc.calls(gm) if n.target in (qc.aten.conv2d.default, qc.aten.linear.default)]


def test_only_biases_change_by_the_mean_rounding_error(qc):
    """Spatially constant images: every output position sees the same channel means, so the
    mean output error is exactly (W_q - W) @ E[x] with the taps summed."""
    torch.manual_seed(0)
    model = Convs().eval()
    batches = [b.expand(-1, -1, 10, 10).contiguous() for b in _offset_batches((2, 4, 1, 1))]
    gm, ctx = qc.context(model, batches[0], calibration=batches,
                         options={"bias_correction": True})
    plain, _ = qc.apply(*qc.context(model, batches[0], calibration=batches), "canonicalize,fuse")
    gm, records = qc.apply(gm, ctx, PIPELINE)
    assert records[-1].stats == {"corrected": 3}
    x = torch.cat(batches)
    with torch.no_grad():
        conv_in = x
        expected_conv = nn.functional.conv2d(conv_in, _rounding_error(model.conv.weight))
        dw_in = model.conv(x)
        expected_dw = nn.functional.conv2d(dw_in, _rounding_error(model.depthwise.weight),
                                           groups=8)
    before, after = _biases(qc, plain), _biases(qc, gm)
    shift_conv = before[0] - after[0]
    shift_dw = -after[1]                                   # it had no bias
    assert torch.allclose(shift_conv, expected_conv.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(shift_dw, expected_dw.mean(dim=(0, 2, 3)), atol=1e-5)
    weights = [n.args[1] for n in qc.calls(gm) if n.target is qc.aten.conv2d.default]
    assert torch.equal(qc.const(gm, weights[0]), model.conv.weight.detach())


class Offset(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 32)

    def forward(self, x):
        return self.fc(x)


def _mean_output_error(recipe, options, model, batches, x):
    cm = qcompile.compile(model, target="reference", example_inputs=(batches[0],),
                          calibration_data=batches, recipe=recipe, options=options)
    with torch.no_grad():
        return (cm(x) - model(x)).reshape(-1, 32).mean(dim=0).abs().mean().item()


def test_mean_output_error_of_the_quantized_layer_shrinks():
    torch.manual_seed(0)
    model, batches = Offset().eval(), _offset_batches((16, 64))
    x = torch.cat(_offset_batches((16, 64), seed=7))
    for recipe in ("w8a8", "w8a8-dynamic"):
        plain = _mean_output_error(recipe, None, model, batches, x)
        corrected = _mean_output_error(recipe, {"bias_correction": True}, model, batches, x)
        assert corrected < plain / 2, recipe


def test_off_by_default_and_for_int4_recipes(qc):
    model, batches = Offset().eval(), _offset_batches((16, 64))
    _, records = qc.apply(*qc.context(model, batches[0], calibration=batches), PIPELINE)
    assert records[-1].changed is False
    gm, ctx = qc.context(model, batches[0], calibration=batches, recipe="w4a16-rtn",
                         options={"bias_correction": True, "group_size": 32})
    _, records = qc.apply(gm, ctx, PIPELINE)
    assert records[-1].changed is False
