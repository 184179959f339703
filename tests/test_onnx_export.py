"""cm.export_onnx: the ONNX QDQ model runs in onnxruntime and agrees with the compiled model.

Agreement is measured in quantization steps: every int8 value the compiled graph computes
that the ONNX model also names (an integer op's output keeps its fx node name) is compared
code by code, and float outputs are compared in steps of (max - min) / 255 of the output.
A requantize rounds in integers in qcompile and in float in ONNX, so a few elements may
differ by one step; the tests print how many did.
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import qcompile
from qcompile.graph_run import flat_inputs, run_recording

from tiny_models import MLP

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")


class ResidualCNN(nn.Module):
    """conv + ReLU, residual add (grouped conv), max pool, depthwise conv + ReLU6,
    average pool, concatenation, global mean, linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.depthwise = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.pointwise = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        y = F.relu(self.conv1(x))
        y = F.max_pool2d(F.relu(y + self.conv2(y)), 2)
        z = self.pointwise(F.relu6(self.depthwise(y)))
        y = torch.cat([F.avg_pool2d(y, 2), z], dim=1)
        return self.fc(y.mean(dim=(2, 3)))


class AttentionBlock(nn.Module):
    """Pre-norm self-attention (4 heads) and a GELU MLP, both residual; the projection
    runs on (batch * tokens) rows, a size computed from the dynamic batch."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b * t, d)).reshape(b, t, d)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def _batches(shape, count=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(count)]


def _compile(model, batches, recipe="w8a8", **options):
    torch.manual_seed(0)
    return qcompile.compile(model.eval(), target="reference", example_inputs=(batches[0],),
                            calibration_data=batches, recipe=recipe,
                            options={"progress": False, **options})


def _session(model):
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _run(session, cm, args) -> list[np.ndarray]:
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), flat_inputs(cm.graph, args))}
    return session.run(None, feeds)


@dataclass
class Agreement:
    """How many elements differ, and by how many steps at most."""
    elements: int = 0
    differing: int = 0
    max_steps: float = 0.0

    def add(self, expected: np.ndarray, actual: np.ndarray, step: float = 1.0) -> None:
        steps = np.abs(expected.astype(np.float64) - actual.astype(np.float64)) / step
        self.elements += steps.size
        self.differing += int((steps > 1e-3).sum())
        self.max_steps = max(self.max_steps, float(steps.max(initial=0.0)))

    def __str__(self) -> str:
        return (f"{self.differing}/{self.elements} elements differ, "
                f"max {self.max_steps:.3g} steps")


def int8_agreement(cm, path: str, args) -> Agreement:
    """Compare every int8 value of the compiled graph with the ONNX tensor of the same name."""
    model = onnx.load(path)
    _, interp = run_recording(cm.graph, args, keep_values=True)
    produced = {name for node in model.graph.node for name in node.output}
    names = [n for n, v in interp.values.items() if v.dtype == torch.int8 and n in produced]
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(
            name, onnx.TensorProto.INT8, None))
    values = _run(_session(model), cm, args)[-len(names):] if names else []
    agreement = Agreement()
    for name, value in zip(names, values):
        agreement.add(interp.values[name].numpy(), value)
    return agreement


def output_agreement(expected: torch.Tensor, actual: np.ndarray) -> Agreement:
    """Float outputs in steps of an 8-bit quantization of the expected output's range."""
    step = float(expected.max() - expected.min()) / 255 or 1.0
    agreement = Agreement()
    agreement.add(expected.numpy(), actual, step)
    return agreement


def _export_and_compare(cm, tmp_path, args, name="m"):
    path = str(tmp_path / f"{name}.onnx")
    cm.export_onnx(path)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    (actual,) = _run(_session(path), cm, args)
    with torch.no_grad():
        expected = cm(*args)
    return path, int8_agreement(cm, path, args), output_agreement(expected, actual)


TINY_MODELS = {
    "mlp": (lambda: MLP(16, 64, 32, 10), (8, 16), (33, 16)),
    "cnn": (ResidualCNN, (2, 3, 16, 16), (5, 3, 16, 16)),
    "attention": (AttentionBlock, (2, 8, 32), (3, 8, 32)),
}


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_tiny_models_agree_within_one_step(name, tmp_path):
    build, calib_shape, run_shape = TINY_MODELS[name]
    cm = _compile(build(), _batches(calib_shape))
    x = _batches(run_shape, count=1, seed=7)[0]
    _, ints, outs = _export_and_compare(cm, tmp_path, (x,), name)
    print(f"{name}: int8 values: {ints}; outputs: {outs}")
    assert ints.elements > 0
    assert ints.max_steps <= 1 and ints.differing <= 0.01 * ints.elements
    assert outs.max_steps <= 1 and outs.differing <= 0.01 * outs.elements


def test_integer_ops_are_qdq_with_int8_weights(tmp_path):
    cm = _compile(ResidualCNN(), _batches((2, 3, 16, 16)))
    path = str(tmp_path / "cnn.onnx")
    cm.export_onnx(path)
    model = onnx.load(path)
    ops = [node.op_type for node in model.graph.node]
    assert model.opset_import[0].version == 21
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "MaxPool", "AveragePool", "Concat",
            "ReduceMean", "Add", "MatMulInteger"} <= set(ops)
    weights = [t for t in model.graph.initializer if "weight" in t.name]
    assert weights and all(t.data_type == onnx.TensorProto.INT8 for t in weights)
    per_channel = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                   and any(a.name == "axis" for a in n.attribute)]
    assert len(per_channel) >= 4          # conv weights (and int32 biases) per channel


def test_batch_size_stays_dynamic(tmp_path):
    cm = _compile(AttentionBlock(), _batches((2, 8, 32)))
    path = str(tmp_path / "attn.onnx")
    cm.export_onnx(path)
    session = _session(path)
    for batch in (1, 9):
        x = torch.randn(batch, 8, 32)
        (y,) = _run(session, cm, (x,))
        assert y.shape == (batch, 8, 32)
        assert output_agreement(cm(x), y).max_steps <= 1


@pytest.mark.parametrize("recipe", ["w8a8-dynamic", "w4a16-rtn", "fp16", "bf16"])
def test_dynamic_weight_only_and_half_recipes(recipe, tmp_path):
    cm = _compile(MLP(64, 64, 32), _batches((8, 64)), recipe=recipe, group_size=32)
    x = _batches((17, 64), count=1, seed=3)[0]
    _, _, outs = _export_and_compare(cm, tmp_path, (x,), recipe)
    print(f"{recipe}: outputs: {outs}")
    assert outs.max_steps <= 0.01


def test_loaded_artifact_exports_the_same_model(tmp_path):
    cm = _compile(MLP(), _batches((8, 16)))
    cm.save(str(tmp_path / "m.qcm"))
    cm.export_onnx(str(tmp_path / "a.onnx"))
    qcompile.load(str(tmp_path / "m.qcm")).export_onnx(str(tmp_path / "b.onnx"))
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_digits_cnn(tmp_path):
    from qcompile.zoo import train_digits_cnn
    model, (x_train, _, x_test, y_test) = train_digits_cnn(epochs=5)
    calibration = [x_train[i:i + 64] for i in range(0, 512, 64)]
    cm = _compile(model, calibration)
    _, ints, outs = _export_and_compare(cm, tmp_path, (x_test,), "digits")
    print(f"digits: int8 values: {ints}; outputs: {outs}")
    assert ints.max_steps <= 1 and ints.differing <= 0.001 * ints.elements
    (logits,) = _run(_session(str(tmp_path / "digits.onnx")), cm, (x_test,))
    onnx_accuracy = float((logits.argmax(1) == y_test.numpy()).mean())
    compiled_accuracy = float((cm(x_test).argmax(1) == y_test).float().mean())
    assert abs(onnx_accuracy - compiled_accuracy) <= 0.005


@pytest.mark.slow
def test_minilm_embeddings_match_the_compiled_model(tmp_path):
    minilm = pytest.importorskip("qcompile.zoo.minilm")
    from qcompile.zoo.sentences import calibration_sentences, evaluation_sentences
    model, tokenizer = minilm.load_minilm()
    encoder = minilm.MiniLMEncoder(model).eval()
    batches = [minilm.tokenize(tokenizer, calibration_sentences()[i:i + 16], 32)
               for i in range(0, 48, 16)]
    cm = qcompile.compile(encoder, example_inputs=batches[0], calibration_data=batches,
                          options={"progress": False})
    path = str(tmp_path / "minilm.onnx")
    cm.export_onnx(path)
    sentences = evaluation_sentences()[:48]
    onnx_model = _OnnxCallable(_session(path))
    from_onnx = minilm.embed(onnx_model, tokenizer, sentences, max_length=32)
    from_cm = minilm.embed(cm, tokenizer, sentences, max_length=32)
    from_float = minilm.embed(encoder, tokenizer, sentences, max_length=32)
    cosine = minilm.cosine_to_reference(from_onnx, from_cm)
    print(f"minilm: cosine onnx vs compiled {cosine:.5f}, onnx vs float "
          f"{minilm.cosine_to_reference(from_onnx, from_float):.5f}")
    assert cosine >= 0.999
    assert minilm.cosine_to_reference(from_onnx, from_float) >= 0.99


class _OnnxCallable:
    def __init__(self, session):
        self.session = session

    def __call__(self, input_ids, attention_mask):
        (hidden,) = self.session.run(None, {"input_ids": input_ids.numpy(),
                                            "attention_mask": attention_mask.numpy()})
        return torch.from_numpy(hidden)


class Flipper(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return torch.flip(self.fc(x), dims=[1])


def test_unsupported_op_names_the_node(tmp_path):
    cm = _compile(Flipper(), _batches((4, 8)))
    path = tmp_path / "flip.onnx"
    with pytest.raises(qcompile.BackendError, match=r"%flip \(flip.default\): no ONNX mapping "
                                                    r"for op aten.flip") as info:
        cm.export_onnx(str(path))
    assert "test_onnx_export.py" in str(info.value)       # the user's source line
    assert not path.exists()


def test_missing_onnx_says_how_to_install(monkeypatch, tmp_path):
    cm = _compile(MLP(), _batches((8, 16)))
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(qcompile.BackendError, match="pip install onnx"):
        cm.export_onnx(str(tmp_path / "m.onnx"))


def test_importing_qcompile_does_not_import_onnx():
    script = "import sys, qcompile; print('onnx' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout.strip() == "False"
