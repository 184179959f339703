"""integer-only (with integer-only-observe): softmax, layer_norm and GELU islands become
I-BERT integer ops; a transformer block and MiniLM keep no float island."""

import pytest
import torch
import torch.nn.functional as F

import qcompile
from qcompile.dump import format_graph
from qcompile.errors import LoweringError
from qcompile.facts import facts_of
from qcompile.pipelines import QUANTIZE

from tiny_models import EncoderBlock as Block
from tiny_models import encoder_calibration as _calibration
from tiny_models import encoder_inputs as _inputs

pytestmark = pytest.mark.usefixtures("one_thread")
Q, aten = torch.ops.qcompile, torch.ops.aten
INTEGER_OPS = {Q.i_softmax.default, Q.i_layernorm.default, Q.i_gelu.default,
               Q.i_add.default, Q.i_linear.default}
FLOAT_ISLAND_OPS = {aten.softmax.int, aten._softmax.default, aten.layer_norm.default,
                    aten.gelu.default}


def _run(qc, model, integer_only=True):
    torch.manual_seed(0)
    return qc.run(model.eval(), _inputs(), QUANTIZE, calibration=_calibration(),
                  options={"integer_only": integer_only})[0]


def float_islands(gm) -> list:
    """Float compute nodes with an int8 op upstream and one downstream."""
    int_ops = {n for n in gm.graph.nodes if n.op == "call_function"
               and getattr(n.target, "namespace", "") == "qcompile"
               and n.target is not Q.dequantize.default}
    after, before = set(), set()
    for n in gm.graph.nodes:
        if any(a in int_ops or a in after for a in n.all_input_nodes):
            after.add(n)
    for n in reversed(list(gm.graph.nodes)):
        if any(u in int_ops or u in before for u in n.users):
            before.add(n)
    return [n for n in after & before if n.op == "call_function" and n not in int_ops
            and facts_of(n).tensor is not None and facts_of(n).tensor.dtype == "f32"]


def test_block_has_no_float_island_left(qc):
    gm = _run(qc, Block())
    assert not qc.targets(gm) & FLOAT_ISLAND_OPS
    counts = {t: len(qc.calls(gm, t)) for t in INTEGER_OPS}
    assert counts == {Q.i_softmax.default: 1, Q.i_layernorm.default: 2, Q.i_gelu.default: 1,
                      Q.i_add.default: 2, Q.i_linear.default: 2}
    assert float_islands(gm) == []
    (softmax,) = qc.calls(gm, Q.i_softmax.default)
    assert softmax.args[-1] is not None            # the attention mask became a bool mask


def test_without_the_option_nothing_changes(qc):
    gm = _run(qc, Block(), integer_only=False)
    assert not qc.targets(gm) & INTEGER_OPS
    assert aten.softmax.int in qc.targets(gm) and aten.layer_norm.default in qc.targets(gm)
    assert float_islands(gm)


def test_block_output_stays_close_to_float():
    model, x = Block().eval(), _inputs(7)
    cm = qcompile.compile(model, example_inputs=x, calibration_data=_calibration(8),
                          target="reference", options={"integer_only": True})
    with torch.no_grad():
        ref = model(*x)
    got = cm(*x)
    assert F.cosine_similarity(got.flatten(), ref.flatten(), dim=0) > 0.99
    assert not {row.op for row in cm.report.float_islands} & {"aten.softmax.int",
                                                                "aten.layer_norm", "aten.gelu"}


def test_dump_shows_integer_ops_with_qparams(qc):
    text = format_graph(_run(qc, Block()))
    line = next(ln for ln in text.splitlines() if "qcompile.i_softmax" in ln)
    assert line.split(" : ")[1].startswith("i8[") and "in=(" in line and "out=(" in line
    assert "qcompile.i_add" in text and "qcompile.i_layernorm" in text


def test_unsupported_forms_stay_float_with_their_reason(qc):
    gm = _run(qc, Block(gelu="tanh"))
    (gelu,) = qc.calls(gm, aten.gelu.default)
    assert facts_of(gelu).float_reason == "no integer kernel for aten.gelu"
    assert len(qc.calls(gm, Q.i_softmax.default)) == 1


def test_unrepresentable_constants_raise_a_lowering_error_naming_the_node(qc):
    with pytest.raises(LoweringError, match="softmax") as err:
        _run(qc, Block(scale_factor=1e12))
    assert "softmax" in str(err.value)


# ---- MiniLM with its real weights ---------------------------------------------------------

MAX_LENGTH = 32


@pytest.fixture(scope="module")
def minilm_setup():
    minilm = pytest.importorskip("qcompile.zoo.minilm")
    from qcompile.zoo.sentences import calibration_sentences, evaluation_sentences
    model, tokenizer = minilm.load_minilm()
    encoder = minilm.MiniLMEncoder(model).eval()
    sentences = evaluation_sentences()[:64]
    reference = minilm.embed(encoder, tokenizer, sentences, max_length=MAX_LENGTH)
    return minilm, encoder, tokenizer, calibration_sentences()[:48], sentences, reference


def _minilm_cosine(setup, integer_only):
    minilm, encoder, tokenizer, calibration, sentences, reference = setup
    batches = (minilm.tokenize(tokenizer, calibration[i:i + 16], MAX_LENGTH)
               for i in range(0, len(calibration), 16))
    example = minilm.tokenize(tokenizer, calibration[:2], MAX_LENGTH)
    cm = qcompile.compile(encoder, example_inputs=example, calibration_data=batches,
                          target="reference", options={"integer_only": integer_only})
    embeddings = minilm.embed(cm, tokenizer, sentences, max_length=MAX_LENGTH)
    return cm, minilm.cosine_to_reference(embeddings, reference)


@pytest.mark.slow
def test_minilm_integer_only_has_no_float_island_and_keeps_accuracy(minilm_setup):
    cm, cosine = _minilm_cosine(minilm_setup, True)
    _, baseline = _minilm_cosine(minilm_setup, False)
    print(f"MiniLM cosine to fp32 on 64 sentences: integer_only {cosine:.4f}, "
          f"float islands {baseline:.4f}")
    assert cosine >= 0.98
    gm = cm.graph
    targets = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert not targets & FLOAT_ISLAND_OPS
    assert float_islands(gm) == []
    assert len([n for n in gm.graph.nodes if n.target is Q.i_softmax.default]) == 6
    assert len([n for n in gm.graph.nodes if n.target is Q.i_layernorm.default]) == 13
    assert len([n for n in gm.graph.nodes if n.target is Q.i_gelu.default]) == 6
    reasons = {row.op for row in cm.report.float_islands}
    assert not reasons & {"aten.softmax.int", "aten.layer_norm", "aten.gelu"}
