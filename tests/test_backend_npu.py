"""npu-int8 (C99 from TVM's C codegen): the same integers as the reference kernels."""
import re
import shutil
import subprocess
import warnings

import pytest
import torch

import qcompile
from qcompile.recipes import QuantOptions

pytest.importorskip("tvm")
if shutil.which("gcc") is None:
    pytest.skip("npu-int8 needs gcc", allow_module_level=True)

from qcompile.backends.npu import gcc
from qcompile.backends.npu.backend import build
from tiny_models import MLP

warnings.filterwarnings("ignore", category=qcompile.QCompileWarning)


class SmallCNN(torch.nn.Module):
    """conv+bn+relu, max pool, depthwise conv, residual add, avg pool, linear."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.depthwise = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pool, self.avg = torch.nn.MaxPool2d(2), torch.nn.AvgPool2d(2)
        self.fc = torch.nn.Linear(8 * 2 * 2, 5)

    def forward(self, x):
        y = self.pool(torch.relu(self.bn(self.conv(x))))
        y = torch.relu(y + self.depthwise(y))
        return self.fc(self.avg(y).flatten(1))


@pytest.fixture(scope="module")
def options(tmp_path_factory):
    return QuantOptions(cache_dir=str(tmp_path_factory.mktemp("npu-cache")))


def _reference(model, x, calibration):
    return qcompile.compile(model.eval(), target="reference", example_inputs=(x,),
                            calibration_data=calibration)


def _segment_inputs(runner, *args):
    """The int tensors the C model receives for `args` (captured on the way in)."""
    seen = []
    hook = runner.c_model.register_forward_pre_hook(lambda _m, a: seen.append(a))
    try:
        runner(*args)
    finally:
        hook.remove()
    return seen[0]


def _assert_same(ref, runner, x):
    ints = _segment_inputs(runner, x)
    c_out, spec_out = runner.c_model(*ints), runner.segment(*ints)
    assert len(c_out) == len(spec_out)
    for c, s in zip(c_out, spec_out):
        assert c.dtype == s.dtype and not c.dtype.is_floating_point
        assert torch.equal(c, s)
    assert torch.equal(runner(x), ref(x))


@pytest.fixture(scope="module")
def cnn(options):
    torch.manual_seed(0)
    calibration = [torch.randn(2, 3, 8, 8) for _ in range(3)]
    ref = _reference(SmallCNN(), calibration[0], calibration)
    return ref, build(ref.graph, options, (calibration[0],))


def test_mlp_matches_reference(options):
    torch.manual_seed(1)
    calibration = [torch.randn(4, 16) for _ in range(3)]
    ref = _reference(MLP(), calibration[0], calibration)
    runner = build(ref.graph, options, (calibration[0],))
    for _ in range(3):
        _assert_same(ref, runner, torch.randn(4, 16))
    assert runner.build_info["host_ops"] == ["x_q", "scale_bias"]


def test_cnn_matches_reference(cnn):
    ref, runner = cnn
    for seed in range(3):
        torch.manual_seed(seed)
        _assert_same(ref, runner, torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize("scale", [1e3, -1e3])
def test_saturating_inputs(cnn, scale):
    ref, runner = cnn
    torch.manual_seed(3)
    x = torch.randn(2, 3, 8, 8) * scale
    (q,) = _segment_inputs(runner, x)
    assert int(q.min()) == -128 and int(q.max()) == 127
    _assert_same(ref, runner, x)


def test_digits_cnn_matches_reference(options):
    from qcompile.zoo.digits import train_digits_cnn
    model, (x_train, _, x_test, _) = train_digits_cnn()
    ref = _reference(model, x_test[:8], [x_train[i:i + 32] for i in range(0, 96, 32)])
    runner = build(ref.graph, options, (x_test[:8],))
    _assert_same(ref, runner, x_test[8:16])


def test_generated_c_is_plain(cnn):
    _, runner = cnn
    source = runner.c_source["model.c"]
    code = re.sub(r"/\*.*?\*/", "", source, flags=re.DOTALL)
    assert not re.search(r"tvm|TVM|DLTensor", code)
    assert "#include <math.h>" not in source and "float" not in source
    assert re.search(r"static void qc_k_0\(int8_t\* ", source)
    assert "int model_run(const int8_t* in, int8_t* out, uint8_t* arena)" in source
    assert "static const int8_t qc_c" in source
    math = [s for s in gcc.undefined_symbols(runner.build_info["library"]) if gcc._LIBM.match(s)]
    assert math == []
    assert gcc.CFLAGS == ("-std=c99", "-O2", "-Wall", "-Werror")


def test_build_facts_and_cache(cnn, options):
    ref, runner = cnn
    info = runner.build_info
    assert 0 < info["arena_bytes"] < info["naive_activation_bytes"]
    assert info["weight_bytes"] > 0 and info["op_count"] >= info["kernel_count"] > 0
    assert f"#define QC_ARENA_BYTES {info['arena_bytes']}" in runner.c_source["model.h"]
    again = build(ref.graph, options, (torch.randn(2, 3, 8, 8),))
    assert again.build_info["cached"] and again.c_source == runner.c_source


def test_harness_runs_without_python(cnn):
    _, runner = cnn
    x = torch.randn(2, 3, 8, 8)
    ints = _segment_inputs(runner, x)
    (expected,) = runner.c_model(*ints)
    (data,) = gcc.run_harness(runner.harness_path, [t.numpy().tobytes() for t in ints],
                              [expected.numel() * expected.element_size()])
    assert data == expected.numpy().tobytes()
    usage = subprocess.run([runner.harness_path], capture_output=True, text=True, check=False)
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_arena_limit_too_small(cnn):
    ref, _ = cnn
    with pytest.raises(qcompile.BackendError, match=r"needs \d+ bytes"):
        build(ref.graph, QuantOptions(arena_limit=64, cache=False), (torch.randn(2, 3, 8, 8),))


def test_wrong_shape_is_an_input_error(cnn):
    _, runner = cnn
    with pytest.raises(qcompile.QCompileError, match="static"):
        runner(torch.randn(3, 3, 8, 8))


def test_float_island_is_rejected(options):
    torch.manual_seed(4)
    model = MLP(16, 32, 32, 8, act=torch.nn.functional.gelu)
    calibration = [torch.randn(4, 16) for _ in range(2)]
    ref = _reference(model, calibration[0], calibration)
    with pytest.raises(qcompile.BackendError, match="integer ops only"):
        build(ref.graph, options, (calibration[0],))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_zoo_models_match_reference(options, name):
    from qcompile.zoo import mobilenet, resnet
    model = resnet.resnet18(num_classes=10) if name == "resnet18" \
        else mobilenet.mobilenet_v2(num_classes=10, width_mult=0.5)
    torch.manual_seed(5)
    calibration = [torch.randn(1, 3, 32, 32) for _ in range(2)]
    ref = _reference(model, calibration[0], calibration)
    runner = build(ref.graph, options, (calibration[0],))
    _assert_same(ref, runner, torch.randn(1, 3, 32, 32))
    assert runner.build_info["arena_bytes"] < runner.build_info["naive_activation_bytes"]


class TwoInTwoOut(torch.nn.Module):
    """Two inputs, two outputs: the model_run_multi convention."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (torch.nn.Linear(8, 8) for _ in range(3))

    def forward(self, x, y):
        h = torch.relu(self.a(x) + self.b(y))
        return self.c(h), torch.relu(self.a(y))


def test_several_inputs_and_outputs(options):
    torch.manual_seed(6)
    batches = [(torch.randn(3, 8), torch.randn(3, 8)) for _ in range(3)]
    ref = qcompile.compile(TwoInTwoOut().eval(), target="reference", example_inputs=batches[0],
                           calibration_data=batches)
    runner = build(ref.graph, options, batches[0])
    header = runner.c_source["model.h"]
    assert "#define QC_NUM_INPUTS 2" in header and "int model_run(" not in header
    x, y = torch.randn(3, 8), torch.randn(3, 8)
    for got, want in zip(runner(x, y), ref(x, y)):
        assert torch.equal(got, want)


def test_float_kernel_is_a_typed_error():
    from qcompile.backends.npu.c_kernels import lower_kernel
    from tvm import te
    x = te.placeholder((4,), "float32", name="x")
    y = te.compute((4,), lambda i: x[i] * 2.0, name="y")
    func = te.create_prim_func([x, y])
    with pytest.raises(qcompile.BackendError, match="kernel scale_f32 computes in float32"):
        lower_kernel(func, [((4,), "float32"), ((4,), "float32")], "qc_k_0", "scale_f32")


def test_compile_target_saves_c_and_loads_without_tvm(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model, x = SmallCNN().eval(), torch.randn(2, 3, 8, 8)
    calibration = [(torch.randn(2, 3, 8, 8),) for _ in range(3)]
    cm = qcompile.compile(model, target="npu-int8", example_inputs=(x,),
                          calibration_data=calibration,
                          options={"cache_dir": str(tmp_path), "pow2_scales": True})
    ref = qcompile.compile(model, target="reference", example_inputs=(x,),
                           calibration_data=calibration,
                           options={"pow2_scales": True, "integer_only": True})
    assert torch.equal(cm(x), ref(x))
    build = cm.report.build
    assert build["arena"]["arena_bytes"] < build["arena"]["naive_activation_bytes"]
    path = tmp_path / "m.qcm"
    cm.save(str(path))
    import qcompile.backends.tvm.relax_convert as rc

    def no_tvm(*args, **kwargs):
        raise AssertionError("loading an npu-int8 artifact must not run TVM")
    monkeypatch.setattr(rc, "to_relax", no_tvm)
    loaded = qcompile.load(str(path))
    assert torch.equal(loaded(x), cm(x))
    assert loaded._runner.c_source["model.c"] == cm._runner.c_source["model.c"]


@pytest.mark.slow
def test_integer_only_minilm_runs_as_c_bit_exact(tmp_path, monkeypatch):
    """Real MiniLM weights: the float prefix (embeddings, mask) stays on the host, every
    transformer op runs in C, identical to reference with integer_only."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from qcompile.zoo import minilm
    from qcompile.zoo.sentences import calibration_sentences, evaluation_sentences
    model, tokenizer = minilm.load_minilm()
    encoder = minilm.MiniLMEncoder(model).eval()
    calibration = [minilm.tokenize(tokenizer, calibration_sentences()[i:i + 2], 16)
                   for i in range(0, 6, 2)]
    x = minilm.tokenize(tokenizer, evaluation_sentences()[:2], 16)
    cm = qcompile.compile(encoder, target="npu-int8", example_inputs=calibration[0],
                          calibration_data=calibration, options={"cache_dir": str(tmp_path)})
    ref = qcompile.compile(encoder, target="reference", example_inputs=calibration[0],
                           calibration_data=calibration, options={"integer_only": True})
    assert torch.equal(cm(*x), ref(*x))
    source = cm._runner.c_source["model.c"]
    assert "float" not in source and "double" not in source
    arena = cm.report.build["arena"]
    assert arena["arena_bytes"] < arena["naive_activation_bytes"] / 4
