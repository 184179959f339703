"""Tests for the qcompile.zoo test models and data."""

import pytest
import torch
from torch import nn

from qcompile.zoo import (
    SENTENCES, accuracy, calibration_sentences, evaluation_sentences, mobilenet_v2,
    resnet18, small_vit, train_digits_cnn,
)


@torch.no_grad()
def test_resnet18_output_shape():
    model = resnet18(num_classes=10).eval()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_resnet18_reuses_one_relu_at_several_sites():
    model = resnet18().eval()
    block = model.layer1[0]
    calls = []
    block.relu.register_forward_hook(lambda *args: calls.append(1))
    relus = [m for m in block.modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        block(torch.randn(1, 64, 8, 8))
    assert len(relus) == 1
    assert len(calls) == 2


def test_resnet18_is_deterministic_per_seed():
    a, b, c = resnet18(seed=0), resnet18(seed=0), resnet18(seed=1)
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


@torch.no_grad()
def test_mobilenet_v2_output_shape_and_structure():
    model = mobilenet_v2(num_classes=7, width_mult=0.5).eval()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    depthwise = [m for m in model.modules()
                 if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels]
    assert depthwise
    assert any(isinstance(m, nn.ReLU6) for m in model.modules())
    assert sum(p.numel() for p in mobilenet_v2().parameters()) == 3_504_872


@torch.no_grad()
def test_small_vit_output_shape_and_layers():
    model = small_vit().eval()
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 10)
    attn = model.blocks[0].attn
    assert all(isinstance(getattr(attn, n), nn.Linear) for n in ("q", "k", "v"))
    assert any(isinstance(m, nn.GELU) for m in model.modules())


def test_digits_cnn_accuracy(tmp_path, monkeypatch):
    monkeypatch.setenv("QCOMPILE_CACHE_DIR", str(tmp_path))
    model, (x_train, _, x_test, y_test) = train_digits_cnn(seed=0)
    assert x_train.shape[1:] == (1, 8, 8) and x_test.dtype == torch.float32
    assert 0.0 <= float(x_train.min()) and float(x_train.max()) <= 1.0
    assert accuracy(model, x_test, y_test) >= 95.0
    assert list(tmp_path.glob("*.pt"))
    cached, _ = train_digits_cnn(seed=0)
    for key, value in model.state_dict().items():
        assert torch.equal(value, cached.state_dict()[key])


def test_sentence_sets_are_disjoint_and_large():
    calib, evaluation = calibration_sentences(), evaluation_sentences()
    assert len(SENTENCES) >= 320 and len(set(SENTENCES)) == len(SENTENCES)
    assert len(calib) >= 64 and len(evaluation) >= 256
    assert not set(calib) & set(evaluation)
    lengths = [len(s.split()) for s in SENTENCES]
    assert min(lengths) >= 3 and max(lengths) <= 40
    assert sum(s.endswith("?") for s in SENTENCES) >= 20


@pytest.fixture(scope="module")
def minilm():
    from qcompile.zoo.minilm import MiniLMEncoder, load_minilm

    model, tokenizer = load_minilm()
    return MiniLMEncoder(model), tokenizer


def test_minilm_encoder_shapes(minilm):
    from qcompile.zoo.minilm import tokenize

    encoder, tokenizer = minilm
    input_ids, mask = tokenize(tokenizer, ["Hello there.", "A longer second sentence."], 16)
    assert input_ids.shape == mask.shape == (2, 16)
    with torch.no_grad():
        hidden = encoder(input_ids, mask)
    assert type(hidden) is torch.Tensor and hidden.shape == (2, 16, 384)


def test_minilm_paraphrases_are_closer_than_unrelated(minilm):
    from qcompile.zoo.minilm import cosine_to_reference, embed

    encoder, tokenizer = minilm
    emb = embed(encoder, tokenizer, [
        "A man is playing a guitar on stage.",
        "Someone performs a song with a guitar in front of an audience.",
        "The central bank raised interest rates again.",
    ])
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    paraphrase = float(emb[0] @ emb[1])
    unrelated = float(emb[0] @ emb[2])
    assert paraphrase > unrelated + 0.3
    assert cosine_to_reference(emb, emb) == pytest.approx(1.0, abs=1e-5)
