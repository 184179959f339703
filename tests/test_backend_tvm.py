"""cpu-int8 (TVM): the same integers as the reference kernels, op by op and on whole models."""
import warnings

import pytest
import torch

import qcompile

pytest.importorskip("tvm")
warnings.filterwarnings("ignore", category=qcompile.QCompileWarning)


class ConvNet(torch.nn.Module):
    """conv, relu, max pool, depthwise conv, residual add + relu, global mean, linear, gelu."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1, stride=1)
        self.depthwise = torch.nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.strided = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
        self.pool = torch.nn.MaxPool2d(2)
        self.avg = torch.nn.AvgPool2d(2)
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 5)

    def forward(self, x):
        y = self.pool(torch.relu(self.conv(x)))
        y = torch.nn.functional.relu6(y + self.depthwise(y))
        z = torch.cat([self.strided(y), self.avg(y)], dim=1)
        z = z.mean(dim=(2, 3))
        return self.fc2(torch.nn.functional.gelu(self.fc1(z)))


class AttentionNet(torch.nn.Module):
    """Linear projections, int8 matmuls and a softmax island."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(16, 16) for _ in range(3))
        self.out = torch.nn.Linear(16, 16)

    def forward(self, x):
        scores = torch.matmul(self.q(x), self.k(x).transpose(-1, -2)) * 0.25
        context = torch.matmul(torch.softmax(scores, dim=-1), self.v(x))
        return self.out(context) + x


def _both(model, x, calibration, recipe="w8a8", options=None):
    kwargs = dict(example_inputs=(x,), calibration_data=calibration, recipe=recipe,
                  options=options)
    return (qcompile.compile(model.eval(), target="reference", **kwargs),
            qcompile.compile(model.eval(), target="cpu-int8", **kwargs))


@pytest.mark.parametrize("scale", [1.0, 1e-5, 3e3])
def test_conv_net_bit_exact_across_scales(scale):
    torch.manual_seed(0)
    calibration = [torch.randn(2, 3, 16, 16) * scale for _ in range(3)]
    ref, cpu = _both(ConvNet(), calibration[0], calibration)
    for batch in (2, 5):
        x = torch.randn(batch, 3, 16, 16) * scale
        assert torch.equal(ref(x), cpu(x))


@pytest.mark.parametrize("shift", [0.0, 50.0, -50.0])
def test_zero_points_at_both_ends_and_clamping(shift):
    torch.manual_seed(1)
    calibration = [torch.rand(2, 3, 16, 16) + shift for _ in range(2)]
    ref, cpu = _both(ConvNet(), calibration[0], calibration)
    x = torch.randn(3, 3, 16, 16) * 100 + shift       # far outside the calibrated range
    assert torch.equal(ref(x), cpu(x))
    zero_points = {n.args[2] for n in cpu.graph.graph.nodes
                   if n.target is torch.ops.qcompile.quantize.default}
    assert zero_points & {-128, 127} or shift == 0.0


def test_attention_matmuls_and_float_islands_match():
    torch.manual_seed(2)
    calibration = [torch.randn(2, 6, 16) for _ in range(3)]
    ref, cpu = _both(AttentionNet(), calibration[0], calibration)
    x = torch.randn(2, 6, 16)
    got, want = cpu(x), ref(x)
    assert torch.allclose(got, want, atol=1e-4)
    kernels = {r.kernel for r in cpu.report.nodes}
    assert any(k.startswith("tvm-") and k.endswith(":qmatmul") for k in kernels)


def _paths():
    from qcompile.backends.tvm.cpu_features import detect
    return detect().paths()


@pytest.mark.parametrize("path", _paths())
def test_every_isa_path_this_cpu_runs_is_bit_exact(path):
    """cpu_path forces each ISA path the machine has: same integers as the reference."""
    torch.manual_seed(5)
    calibration = [torch.randn(2, 3, 16, 16) for _ in range(2)]
    ref, cpu = _both(ConvNet(), calibration[0], calibration, options={"cpu_path": path})
    x = torch.randn(3, 3, 16, 16) * 4
    assert torch.equal(ref(x), cpu(x))
    assert all(r.kernel.startswith(f"tvm-{path}:") for r in cpu.report.nodes if r.kernel)
    attention = [torch.randn(2, 6, 16) for _ in range(2)]
    ref, cpu = _both(AttentionNet(), attention[0], attention, options={"cpu_path": path})
    assert torch.allclose(ref(attention[1]), cpu(attention[1]), atol=1e-4)


def test_dynamic_linear_bit_exact():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.Linear(40, 7))
    x = torch.randn(4, 24)
    ref, cpu = _both(model, x, [x], recipe="w8a8-dynamic")
    x = torch.randn(9, 24) * 7
    assert torch.equal(ref(x), cpu(x))


def test_report_names_tvm_kernels():
    torch.manual_seed(4)
    x = torch.randn(2, 3, 16, 16)
    cpu = qcompile.compile(ConvNet().eval(), target="cpu-int8", example_inputs=(x,),
                           calibration_data=[x])
    qconv = [r for r in cpu.report.nodes if r.op == "qcompile.qconv2d"]
    assert qconv and all(r.kernel.startswith("tvm-") for r in qconv)
    info = {t.name: t for t in qcompile.targets()}
    assert info["cpu-int8"].available


@pytest.mark.slow
def test_minilm_cpu_int8_matches_reference_within_float_island_tolerance():
    minilm = pytest.importorskip("qcompile.zoo.minilm")
    from qcompile.zoo.sentences import calibration_sentences, evaluation_sentences
    model, tokenizer = minilm.load_minilm()
    encoder = minilm.MiniLMEncoder(model).eval()
    example = minilm.tokenize(tokenizer, calibration_sentences()[:2], 32)
    batches = [minilm.tokenize(tokenizer, calibration_sentences()[i:i + 16], 32)
               for i in range(0, 32, 16)]
    ref = qcompile.compile(encoder, target="reference", example_inputs=example,
                           calibration_data=batches)
    cpu = qcompile.compile(encoder, target="cpu-int8", example_inputs=example,
                           calibration_data=batches)
    sentences = evaluation_sentences()[:16]
    want = minilm.embed(ref, tokenizer, sentences, max_length=32)
    got = minilm.embed(cpu, tokenizer, sentences, max_length=32)
    assert minilm.cosine_to_reference(got, want) > 0.999


class FloatOutConv(torch.nn.Module):
    """Convs whose outputs are model outputs (float): qconv2d_f32 on the TVM im2col path."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.strided = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)

    def forward(self, x):
        return self.conv(x), self.strided(x)


@pytest.mark.parametrize("scale", [1.0, 1e-4, 2e3])
def test_float_output_convs_bit_exact(scale):
    torch.manual_seed(5)
    calibration = [torch.randn(2, 3, 12, 12) * scale for _ in range(2)]
    ref, cpu = _both(FloatOutConv(), calibration[0], calibration)
    conv_f32 = [n for n in cpu.graph.graph.nodes
                if n.target is torch.ops.qcompile.qconv2d_f32.default]
    assert len(conv_f32) == 2
    x = torch.randn(3, 3, 12, 12) * scale * 50                    # clamps at both ends
    for got, want in zip(cpu(x), ref(x)):
        assert torch.equal(got, want)


class AddNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (torch.nn.Linear(8, 8) for _ in range(3))

    def forward(self, x):
        return self.c(self.a(x) + self.b(x))


def test_tvm_failure_inside_an_op_names_the_node_and_source_line(monkeypatch, tmp_path):
    from qcompile.backends.tvm import relax_convert

    def broken(node, importer):
        raise RuntimeError("simulated TVM failure")
    monkeypatch.setitem(relax_convert.CONVERTERS, "qadd.default",
                        relax_convert._naming_failures("qadd.default", broken))
    x = torch.randn(4, 8)
    with pytest.raises(qcompile.BackendError) as info:
        qcompile.compile(AddNet().eval(), target="cpu-int8", example_inputs=(x,),
                         calibration_data=[x], options={"cache_dir": str(tmp_path)})
    text = str(info.value)
    assert "TVM failed to build qadd" in text and "simulated TVM failure" in text
    assert "test_backend_tvm.py" in text and "self.c(self.a(x) + self.b(x))" in text


def test_op_without_tvm_lowering_is_named(monkeypatch):
    from qcompile.backends.tvm import relax_convert
    monkeypatch.delitem(relax_convert.CONVERTERS, "qadd.default")
    x = torch.randn(4, 8)
    with pytest.raises(qcompile.BackendError, match="no TVM lowering for qcompile.qadd"):
        qcompile.compile(AddNet().eval(), target="cpu-int8", example_inputs=(x,),
                         calibration_data=[x])


def test_fp8_on_cpu_int8_is_a_typed_error_naming_layer_and_target():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    x = torch.randn(4, 8)
    with pytest.raises(qcompile.BackendError, match="on target cpu-int8") as info:
        qcompile.compile(model.eval(), target="cpu-int8", example_inputs=(x,),
                         calibration_data=[x], recipe="fp8")
    assert "fp8" in str(info.value)
