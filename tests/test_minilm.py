"""all-MiniLM-L6-v2 with its real weights: capture, compile, and embedding accuracy."""
import pytest
import torch

import qcompile

minilm = pytest.importorskip("qcompile.zoo.minilm")
from qcompile.zoo.sentences import calibration_sentences, evaluation_sentences  # noqa: E402

MAX_LENGTH = 32


@pytest.fixture(scope="module")
def encoder_and_tokenizer():
    model, tokenizer = minilm.load_minilm()
    return minilm.MiniLMEncoder(model).eval(), tokenizer


def _batches(tokenizer, sentences, size=16):
    for start in range(0, len(sentences), size):
        yield minilm.tokenize(tokenizer, sentences[start:start + size], MAX_LENGTH)


def _compile(encoder, tokenizer, recipe):
    example = minilm.tokenize(tokenizer, calibration_sentences()[:2], MAX_LENGTH)
    return qcompile.compile(encoder, example_inputs=example, recipe=recipe,
                            calibration_data=_batches(tokenizer, calibration_sentences()[:48]))


def _cosine(encoder, compiled, tokenizer):
    sentences = evaluation_sentences()[:48]
    reference = minilm.embed(encoder, tokenizer, sentences, max_length=MAX_LENGTH)
    quantized = minilm.embed(compiled, tokenizer, sentences, max_length=MAX_LENGTH)
    return minilm.cosine_to_reference(quantized, reference)


def test_static_w8a8_embeddings_stay_close(encoder_and_tokenizer):
    encoder, tokenizer = encoder_and_tokenizer
    compiled = _compile(encoder, tokenizer, "w8a8")
    assert _cosine(encoder, compiled, tokenizer) >= 0.99
    ops = {n.target for n in compiled.graph.graph.nodes if n.op == "call_function"}
    assert torch.ops.aten.linear.default not in ops
    reasons = {r.op: r.float_reason for r in compiled.report.float_islands}
    assert "no integer kernel" in reasons["aten.softmax.int"]
    assert "no integer kernel" in reasons["aten.layer_norm"]
    assert compiled.report.totals["weight_bytes_after"] < compiled.report.totals["weight_bytes_before"]


def test_dynamic_w8a8_embeddings_stay_closer(encoder_and_tokenizer):
    encoder, tokenizer = encoder_and_tokenizer
    compiled = _compile(encoder, tokenizer, "w8a8-dynamic")
    assert _cosine(encoder, compiled, tokenizer) >= 0.995
    kinds = [n.target for n in compiled.graph.graph.nodes if n.op == "call_function"]
    assert kinds.count(torch.ops.qcompile.qlinear_dynamic.default) == 36


def test_unread_pooler_output_just_works(encoder_and_tokenizer):
    encoder, tokenizer = encoder_and_tokenizer
    hf_model = encoder.model
    ids, mask = minilm.tokenize(tokenizer, ["a b c", "the pooler output is not read"], MAX_LENGTH)
    compiled = qcompile.compile(hf_model, example_inputs=(ids, mask),
                                calibration_data=_batches(tokenizer, calibration_sentences()[:16]))
    out = compiled(ids, mask)
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask)
    assert type(out) is type(ref)
    assert out.pooler_output.shape == ref.pooler_output.shape
    pooled = minilm.mean_pool(out.last_hidden_state, mask)
    expected = minilm.mean_pool(ref.last_hidden_state, mask)
    assert minilm.cosine_to_reference(pooled, expected) > 0.98
