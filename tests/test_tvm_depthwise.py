"""The depthwise int8 conv kernel (backends/tvm/depthwise.py) is bit-exact with the reference
kernels, alone and inside whole cpu-int8 models."""
from __future__ import annotations

import pytest
import torch

import qcompile

pytest.importorskip("tvm")

from qcompile.backends.tvm import cpu_features, depthwise

from qcompile.ops.float_out import qconv2d_f32
from qcompile.ops.reference import qconv2d

pytestmark = pytest.mark.filterwarnings("ignore::qcompile.QCompileWarning")
PATHS = cpu_features.detect().paths()


def _layer(g, c, k, bias_range=5000):
    """Random int8 depthwise weights [c, 1, k0, k1] and per-channel requantize constants."""
    w = torch.randint(-128, 128, (c, 1, *k), dtype=torch.int8, generator=g)
    bias = torch.randint(-bias_range, bias_range, (c,), dtype=torch.int32, generator=g)
    mult = torch.randint(2**30, 2**31 - 1, (c,), dtype=torch.int32, generator=g)
    shift = torch.randint(28, 42, (c,), dtype=torch.int32, generator=g)
    return w, bias, mult, shift


def _check(x, w, x_zp, bias, mult, shift, out_zp, qmin, qmax, geometry, path):
    """Both kernels (int8 and float out) against the reference on x [n, C, H, W]."""
    stride, padding, dilation = geometry
    hw, c = x.shape[2:], x.shape[1]
    kern = depthwise.build_depthwise(w, x_zp, bias, mult, shift, out_zp, qmin, qmax, hw,
                                     stride, padding, dilation, path)
    want = qconv2d(x, x_zp, w, bias, mult, shift, out_zp, qmin, qmax, stride, padding,
                   dilation, c)
    assert torch.equal(kern(x), want)
    g = torch.Generator().manual_seed(c)
    scale = torch.rand(c, generator=g) * 1e-3
    fbias = torch.randn(c, generator=g)
    for b in (fbias, None):
        kern = depthwise.build_depthwise_f32(w, x_zp, b, scale, hw, stride, padding, dilation,
                                             path)
        want = qconv2d_f32(x, x_zp, w, b, scale, stride, padding, dilation, c)
        got = kern(x).contiguous()
        assert torch.equal(got.view(torch.int32), want.contiguous().view(torch.int32))


GEOMETRIES = [  # (n, C, H, W, (KH, KW), stride, padding, dilation)
    (2, 32, 12, 12, (3, 3), [1, 1], [1, 1], [1, 1]),
    (1, 21, 7, 5, (3, 3), [2, 2], [1, 1], [1, 1]),      # odd sizes, stride 2, channel tail
    (3, 19, 9, 11, (3, 3), [1, 1], [2, 2], [2, 2]),     # dilation 2, padding 2
    (1, 40, 13, 30, (3, 3), [2, 2], [0, 0], [1, 1]),    # padding 0, long interior
    (2, 5, 6, 7, (5, 3), [2, 1], [2, 0], [1, 2]),       # C below one register, asymmetric
    (1, 6, 3, 2, (3, 3), [1, 1], [1, 1], [1, 1]),       # no interior column
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g[:4])))
def test_random_layers_bit_exact(geometry):
    n, c, h, w_in, k, *conv = geometry
    g = torch.Generator().manual_seed(c)
    x = torch.randint(-128, 128, (n, c, h, w_in), dtype=torch.int8, generator=g)
    w, bias, mult, shift = _layer(g, c, k)
    _check(x, w, 7, bias, mult, shift, -5, -128, 127, conv, cpu_features.choose_path())


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("zps", [(-128, -128, -128, 127), (127, 127, -128, 127),
                                 (127, -20, -20, 40)], ids=["relu", "zp127", "relu6"])
def test_extremes_bit_exact(path, zps):
    """x at -128 / 127, zero points at both ends, w at -128 / 127, M up to 2^31 - 1, shifts
    1..62, ReLU / ReLU6 clamps; C = one register + 3 (full and overlapping blocks); the
    ReLU6 case with stride, padding and dilation 2."""
    x_zp, out_zp, qmin, qmax = zps
    g = torch.Generator().manual_seed(out_zp & 0xFF)
    c = depthwise.LANES[path] + 3
    x = torch.where(torch.rand(2, c, 7, 5, generator=g) < 0.5, -128, 127).to(torch.int8)
    w = torch.where(torch.rand(c, 1, 3, 3, generator=g) < 0.5, -128, 127).to(torch.int8)
    w[0] = 127 if x_zp == -128 else -128     # the largest |acc| of one sign
    w[1] = -w[0] - 1
    mult = torch.tensor([2**31 - 1, 2**30] * c, dtype=torch.int32)[:c]
    shift = torch.linspace(1, 62, c).round().to(torch.int32)
    bias = torch.randint(-2**20, 2**20, (c,), dtype=torch.int32, generator=g)
    geometry = ([2, 2], [2, 2], [2, 2]) if qmax < 127 else ([1, 1], [1, 1], [1, 1])
    _check(x, w, x_zp, bias, mult, shift, out_zp, qmin, qmax, geometry, path)


def test_bias_near_int32_limits_uses_wide_epilogue():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-128, 128, (1, 17, 6, 6), dtype=torch.int8, generator=g)
    w, _, mult, _ = _layer(g, 17, (3, 3))
    bias = torch.tensor([2**31 - 1, -2**31] * 9, dtype=torch.int32)[:17]
    shift = torch.full((17,), 40, dtype=torch.int32)
    kern = depthwise.build_depthwise(w, 3, bias, mult, shift, 0, -128, 127, (6, 6), [1, 1],
                                     [1, 1], [1, 1], cpu_features.choose_path())
    assert kern.spec.wide
    want = qconv2d(x, 3, w, bias, mult, shift, 0, -128, 127, [1, 1], [1, 1], [1, 1], 17)
    assert torch.equal(kern(x), want)


class Bottleneck(torch.nn.Module):
    """MobileNetV2's inverted residual (expand, depthwise, project, add), then two depthwise
    convs (stride 1 with bias, stride 2 without) whose outputs are model outputs (float), and
    a grouped conv that is not depthwise (Relax conv2d)."""

    def __init__(self, c=8, hidden=24):
        super().__init__()
        self.expand = torch.nn.Sequential(torch.nn.Conv2d(c, hidden, 1),
                                          torch.nn.BatchNorm2d(hidden), torch.nn.ReLU6())
        self.depthwise = torch.nn.Sequential(
            torch.nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden),
            torch.nn.BatchNorm2d(hidden), torch.nn.ReLU6())
        self.project = torch.nn.Conv2d(hidden, c, 1)
        self.head = torch.nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.strided = torch.nn.Conv2d(c, c, 3, 2, 1, groups=c, bias=False)
        self.grouped = torch.nn.Conv2d(c, c, 3, padding=1, groups=2)

    def forward(self, x):
        y = x + self.project(self.depthwise(self.expand(x)))
        return self.head(y), self.strided(y), self.grouped(y)


def _compiled_pair(model, x, calibration):
    kwargs = {"example_inputs": (x,), "calibration_data": calibration}
    return (qcompile.compile(model.eval(), target="reference", **kwargs),
            qcompile.compile(model.eval(), target="cpu-int8", **kwargs))


def test_bottleneck_model_uses_kernel_and_is_bit_exact(monkeypatch):
    emitted, real_emit = [], depthwise.emit_depthwise

    def recording_emit(bb, kern, x, name):
        emitted.append(kern.spec.mode)
        return real_emit(bb, kern, x, name)

    monkeypatch.setattr(depthwise, "emit_depthwise", recording_emit)
    torch.manual_seed(0)
    model = Bottleneck().eval()
    with torch.no_grad():
        for bn in (model.expand[1], model.depthwise[1]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    calibration = [torch.randn(2, 8, 11, 9) for _ in range(3)]
    ref, cpu = _compiled_pair(model, calibration[0], calibration)
    assert sorted(emitted) == ["f32", "f32", "int8"]
    for batch in (1, 3):
        x = torch.randn(batch, 8, 11, 9) * 3
        for got, want in zip(cpu(x), ref(x)):
            assert torch.equal(got, want)


@pytest.mark.slow
def test_mobilenet_v2_cpu_int8_matches_reference():
    from qcompile.zoo import mobilenet_v2
    torch.manual_seed(0)
    calibration = [torch.randn(2, 3, 64, 64) for _ in range(3)]
    ref, cpu = _compiled_pair(mobilenet_v2(), calibration[0], calibration)
    for batch in (1, 2):
        x = torch.randn(batch, 3, 64, 64)
        assert torch.equal(cpu(x), ref(x))
