"""Whole compiles on the zoo models with target="reference": every conv/linear runs in
int8, outputs stay close to fp32, and the compiled model is its lowered graph."""
import warnings

import pytest
import torch
from torch import nn

import qcompile
from qcompile.facts import facts_of
from qcompile.instruments import sqnr_db
from qcompile.zoo import accuracy, mobilenet_v2, resnet18, small_vit, train_digits_cnn

pytestmark = pytest.mark.usefixtures("one_thread")

aten = torch.ops.aten
Q = torch.ops.qcompile
FLOAT_COMPUTE = {aten.conv2d.default, aten.linear.default, aten.matmul.default,
                 aten.bmm.default, aten.addmm.default, aten.mm.default}
FLOAT_COMPUTE_NAMES = {"aten.conv2d", "aten.linear", "aten.matmul", "aten.bmm", "aten.addmm",
                       "aten.mm"}
MODELS = {"resnet": (1, 3, 32, 32), "mobilenet": (1, 3, 32, 32), "vit": (2, 3, 32, 32)}


def randn(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def compile_model(model, shape, batches=4, **kwargs):
    model = model.eval()
    x = randn(shape, 100)
    calibration = [(randn(shape, seed),) for seed in range(batches)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = qcompile.compile(model, target="reference", example_inputs=(x,),
                              calibration_data=calibration, **kwargs)
    return model, cm


@pytest.fixture(scope="module")
def resnet():
    return compile_model(resnet18(num_classes=10), MODELS["resnet"])


@pytest.fixture(scope="module")
def mobilenet():
    return compile_model(mobilenet_v2(num_classes=10), MODELS["mobilenet"])


@pytest.fixture(scope="module")
def vit():
    return compile_model(small_vit(), MODELS["vit"])


@pytest.fixture(scope="module")
def digits():
    model, (x_train, _, x_test, y_test) = train_digits_cnn()
    calibration = [(x_train[i:i + 64],) for i in range(0, 512, 64)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = qcompile.compile(model.eval(), target="reference", example_inputs=(x_test[:8],),
                              calibration_data=calibration)
    return model, cm, x_test, y_test


def compiled(request, name):
    return request.getfixturevalue(name)


def assert_no_float_compute(cm):
    islands = {row.op for row in cm.report.float_islands}
    assert not islands & FLOAT_COMPUTE_NAMES, cm.report.float_islands
    targets = {n.target for n in cm.graph.graph.nodes if n.op == "call_function"}
    assert not targets & FLOAT_COMPUTE, targets & FLOAT_COMPUTE


@pytest.mark.parametrize("name", list(MODELS))
def test_no_conv_or_linear_left_in_float(request, name):
    _, cm = compiled(request, name)
    assert_no_float_compute(cm)
    lowered = [n for n in cm.graph.graph.nodes if n.op == "call_function"
               and n.target in (Q.qconv2d.default, Q.qconv2d_f32.default, Q.qlinear.default,
                                Q.qlinear_f32.default)]
    assert lowered
    assert cm.report.totals["ops_quantized"] >= len(lowered)


@pytest.mark.parametrize("name", list(MODELS))
def test_output_sqnr_against_fp32(request, name):
    model, cm = compiled(request, name)
    x = randn(MODELS[name], 7)
    with torch.no_grad():
        want = model(x)
    got = cm(x)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert sqnr_db(want, got) >= 20.0


@pytest.mark.parametrize("name", list(MODELS))
def test_compiled_model_is_its_graph(request, name):
    _, cm = compiled(request, name)
    x = randn(MODELS[name], 11)
    with torch.no_grad():
        direct = cm.graph(x)
    assert torch.equal(cm(x), direct)


def test_vit_attention_matmuls_are_integer(vit):
    _, cm = vit
    targets = [n.target for n in cm.graph.graph.nodes if n.op == "call_function"]
    assert targets.count(Q.qmatmul.default) + targets.count(Q.qmatmul_f32.default) == 4
    reasons = {row.op: row.float_reason for row in cm.report.float_islands}
    assert "aten.softmax.int" in reasons and "aten.layer_norm" in reasons


def test_resnet_reused_relu_module_fuses_at_every_call_site(resnet):
    model, cm = resnet
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 9                          # stem + one per BasicBlock, each reused
    fused = [n for n in cm.graph.graph.nodes if facts_of(n).activation == "relu"
             and n.target in (Q.qconv2d.default, Q.qadd.default)]
    assert len(fused) == 17                         # stem conv + (conv, add) in 8 blocks
    assert sum(n.target is Q.qadd.default for n in fused) == 8
    names = {n.target for n in cm.graph.graph.nodes if n.op == "call_function"}
    assert aten.relu.default not in names and aten.relu_.default not in names


def test_mobilenet_relu6_is_clamped_in_int8(mobilenet):
    _, cm = mobilenet
    convs = [n for n in cm.graph.graph.nodes if n.target is Q.qconv2d.default]
    relu6 = [n for n in convs if facts_of(n).activation == "relu6"]
    assert len(relu6) == 35                         # stem, 17 blocks' expand/depthwise, last
    assert sum(n.args[12] > 1 for n in convs) == 17  # one depthwise conv per block, integer
    assert aten.hardtanh.default not in {n.target for n in cm.graph.graph.nodes}


def test_digits_cnn_int8_accuracy_within_half_a_point(digits):
    model, cm, x_test, y_test = digits
    assert_no_float_compute(cm)
    fp32 = accuracy(model, x_test, y_test)
    int8 = accuracy(cm, x_test, y_test)
    assert fp32 > 90.0
    assert abs(fp32 - int8) <= 0.5, (fp32, int8)


class UnreadOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(8 * 8 * 8, 10))
        self.unused_linear = nn.Linear(8, 4)
        self.dead = nn.Linear(8, 4)

    def forward(self, x):
        out = self.main(x)
        self.dead(x.mean((1, 2)))                   # computed, never read
        return out, self.unused_linear(x.mean((1, 2)))


def test_model_with_an_output_nobody_reads_compiles():
    model, cm = compile_model(UnreadOutput(), (2, 3, 8, 8))
    x = randn((2, 3, 8, 8), 5)
    with torch.no_grad():
        want = model(x)
    got = cm(x)
    assert isinstance(got, tuple) and len(got) == 2
    for g, w in zip(got, want):
        assert g.shape == w.shape and sqnr_db(w, g) >= 20.0
    assert_no_float_compute(cm)
    params = {n for n, _ in cm.graph.named_parameters()} | {n for n, _ in cm.graph.named_buffers()}
    assert not any(p.startswith("dead") for p in params)
