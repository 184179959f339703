"""Competitor int8 quantizers applied to MiniLM, scored like qcompile.

Every baseline takes the fp32 MiniLMEncoder, its tokenizer, calibration and
evaluation sentences, and returns a result dict:

    {"name", "available", "cosine", "description", "reason", "seconds"}

where cosine is the mean cosine similarity between the baseline's mean-pooled,
L2-normalised embeddings and the fp32 ones on the evaluation sentences.  A
baseline never raises: failures come back with available=False and a reason.
"""

import copy
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
from torch import nn

from qcompile.zoo.minilm import cosine_to_reference, embed, tokenize

MAX_LENGTH = 64
BATCH_SIZE = 16
ONNX_OPSET = 17


def _result(name: str, description: str, cosine: float | None = None,
            reason: str | None = None, seconds: float = 0.0) -> dict:
    return {"name": name, "available": cosine is not None, "cosine": cosine,
            "description": description, "reason": reason, "seconds": round(seconds, 2)}


def _guarded(name: str, description: str, build_and_score) -> dict:
    """Run build_and_score() -> cosine, turning any failure into an unavailable result."""
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cosine = build_and_score()
    except Exception as exc:  # noqa: BLE001 - a competitor must never crash a run
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return _result(name, description, reason=last[:500],
                       seconds=time.perf_counter() - start)
    return _result(name, description, cosine=cosine, seconds=time.perf_counter() - start)


def _score(module, tokenizer, eval_sentences, reference, max_length) -> float:
    emb = embed(module, tokenizer, eval_sentences, batch_size=BATCH_SIZE,
                max_length=max_length)
    return cosine_to_reference(emb, reference)


def reference_embeddings(encoder, tokenizer, eval_sentences, max_length=MAX_LENGTH):
    """fp32 embeddings that every baseline is compared with."""
    return embed(encoder, tokenizer, eval_sentences, batch_size=BATCH_SIZE,
                 max_length=max_length)


def _torch_dynamic(name, description, per_channel, encoder, tokenizer, eval_sentences,
                   reference, max_length) -> dict:
    def build_and_score() -> float:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        spec = {nn.Linear: per_channel_dynamic_qconfig} if per_channel else {nn.Linear}
        quantized = quantize_dynamic(copy.deepcopy(encoder).eval(), spec,
                                     dtype=torch.qint8)
        ref = _ensure_reference(reference, encoder, tokenizer, eval_sentences, max_length)
        return _score(quantized, tokenizer, eval_sentences, ref, max_length)

    return _guarded(name, description, build_and_score)


def torch_dynamic_int8(encoder, tokenizer, calib_sentences, eval_sentences,
                       reference=None, max_length=MAX_LENGTH) -> dict:
    """torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)."""
    description = ("torch.ao quantize_dynamic defaults: int8 per-tensor weights, "
                   "dynamic per-tensor uint8 activations, nn.Linear only")
    return _torch_dynamic("torch_dynamic_int8", description, False, encoder, tokenizer,
                          eval_sentences, reference, max_length)


def torch_dynamic_int8_per_channel(encoder, tokenizer, calib_sentences, eval_sentences,
                                   reference=None, max_length=MAX_LENGTH) -> dict:
    """As torch_dynamic_int8 but with per_channel_dynamic_qconfig for nn.Linear."""
    description = ("torch.ao quantize_dynamic with per_channel_dynamic_qconfig: int8 "
                   "per-channel weights, dynamic per-tensor uint8 activations")
    return _torch_dynamic("torch_dynamic_int8_per_channel", description, True, encoder,
                          tokenizer, eval_sentences, reference, max_length)


def _ensure_reference(reference, encoder, tokenizer, eval_sentences, max_length):
    if reference is not None:
        return reference
    return reference_embeddings(encoder, tokenizer, eval_sentences, max_length)


def _export_for_pt2e(encoder, tokenizer, calib_sentences, max_length):
    """torch.export the encoder with a dynamic batch dimension, minus dead code.

    The unused BERT pooler (linear -> tanh with no users) must be removed:
    X86InductorQuantizer's linear+tanh fusion fails on an output-less partition.
    """
    input_ids, mask = tokenize(tokenizer, calib_sentences[:BATCH_SIZE], max_length)
    batch = torch.export.Dim("batch", min=1, max=1024)
    dynamic_shapes = {"input_ids": {0: batch}, "attention_mask": {0: batch}}
    exported = torch.export.export(copy.deepcopy(encoder).eval(), (input_ids, mask),
                                   dynamic_shapes=dynamic_shapes)
    graph_module = exported.module()
    graph_module.graph.eliminate_dead_code()
    graph_module.recompile()
    return graph_module


def torchao_pt2e_x86_static(encoder, tokenizer, calib_sentences, eval_sentences,
                            reference=None, max_length=MAX_LENGTH) -> dict:
    """torchao PT2E static int8 with X86InductorQuantizer's default config, run eagerly."""
    description = ("torchao PT2E prepare/convert, X86InductorQuantizer default static "
                   "config (int8 per-channel weights, uint8 per-tensor activations)")

    def build_and_score() -> float:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86q

        quantizer = x86q.X86InductorQuantizer()
        quantizer.set_global(x86q.get_default_x86_inductor_quantization_config())
        graph = _export_for_pt2e(encoder, tokenizer, calib_sentences, max_length)
        prepared = prepare_pt2e(graph, quantizer)
        with torch.no_grad():
            embed(prepared, tokenizer, calib_sentences, BATCH_SIZE, max_length)
        converted = convert_pt2e(prepared)
        ref = _ensure_reference(reference, encoder, tokenizer, eval_sentences, max_length)
        return _score(converted, tokenizer, eval_sentences, ref, max_length)

    return _guarded("torchao_pt2e_x86_static", description, build_and_score)


def export_onnx(encoder, tokenizer, path: Path, max_length=MAX_LENGTH) -> Path:
    """Export to ONNX (TorchScript exporter first, dynamo exporter as fallback)."""
    input_ids, mask = tokenize(tokenizer, ["An example sentence for export."], max_length)
    kwargs = {"input_names": ["input_ids", "attention_mask"],
              "output_names": ["last_hidden_state"],
              "dynamic_axes": {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"},
                               "last_hidden_state": {0: "batch"}},
              "opset_version": ONNX_OPSET}
    model = copy.deepcopy(encoder).eval()
    try:
        torch.onnx.export(model, (input_ids, mask), str(path), dynamo=False, **kwargs)
    except Exception:  # noqa: BLE001 - fall back to the dynamo exporter
        torch.onnx.export(model, (input_ids, mask), str(path), dynamo=True,
                          external_data=False, **kwargs)
    return path


class _OrtModule:
    """Callable (input_ids, attention_mask) -> last_hidden_state via onnxruntime."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        return torch.from_numpy(self.session.run(None, feeds)[0])


def _calibration_reader(tokenizer, calib_sentences, max_length):
    from onnxruntime.quantization import CalibrationDataReader

    class SentenceReader(CalibrationDataReader):
        """Feeds calibration sentences to ORT in batches of BATCH_SIZE."""

        def __init__(self):
            batches = [calib_sentences[i:i + BATCH_SIZE]
                       for i in range(0, len(calib_sentences), BATCH_SIZE)]
            self._feeds = iter(self._to_feed(b) for b in batches)

        @staticmethod
        def _to_feed(batch):
            ids, mask = tokenize(tokenizer, batch, max_length)
            return {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}

        def get_next(self):
            return next(self._feeds, None)

    return SentenceReader()


def ort_dynamic_int8(encoder, tokenizer, calib_sentences, eval_sentences,
                     reference=None, max_length=MAX_LENGTH) -> dict:
    """onnxruntime quantize_dynamic, per-channel QInt8 weights."""
    description = ("onnxruntime quantize_dynamic: int8 per-channel weights, dynamic "
                   "uint8 activations (MatMul/Gemm/Attention)")

    def build_and_score() -> float:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export_onnx(encoder, tokenizer, Path(tmp) / "fp32.onnx", max_length)
            int8 = Path(tmp) / "int8_dynamic.onnx"
            quantize_dynamic(str(fp32), str(int8), per_channel=True,
                             weight_type=QuantType.QInt8)
            ref = _ensure_reference(reference, encoder, tokenizer, eval_sentences,
                                    max_length)
            return _score(_OrtModule(int8), tokenizer, eval_sentences, ref, max_length)

    return _guarded("ort_dynamic_int8", description, build_and_score)


def ort_static_qdq_int8(encoder, tokenizer, calib_sentences, eval_sentences,
                        reference=None, max_length=MAX_LENGTH) -> dict:
    """onnxruntime quantize_static in QDQ format with default settings (MinMax)."""
    description = ("onnxruntime quantize_static QDQ, defaults: MinMax calibration, "
                   "int8 per-tensor weights and activations")

    def build_and_score() -> float:
        from onnxruntime.quantization import QuantFormat, quantize_static

        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export_onnx(encoder, tokenizer, Path(tmp) / "fp32.onnx", max_length)
            int8 = Path(tmp) / "int8_static.onnx"
            reader = _calibration_reader(tokenizer, calib_sentences, max_length)
            quantize_static(str(fp32), str(int8), reader, quant_format=QuantFormat.QDQ)
            ref = _ensure_reference(reference, encoder, tokenizer, eval_sentences,
                                    max_length)
            return _score(_OrtModule(int8), tokenizer, eval_sentences, ref, max_length)

    return _guarded("ort_static_qdq_int8", description, build_and_score)


BASELINES = (torch_dynamic_int8, torch_dynamic_int8_per_channel, torchao_pt2e_x86_static,
             ort_dynamic_int8, ort_static_qdq_int8)


def run_all(encoder=None, tokenizer=None, calib_sentences=None, eval_sentences=None,
            max_length=MAX_LENGTH, baselines=BASELINES) -> list[dict]:
    """Run every baseline; defaults load MiniLM and the zoo's sentence splits."""
    if encoder is None or tokenizer is None:
        from qcompile.zoo.minilm import MiniLMEncoder, load_minilm

        model, tokenizer = load_minilm()
        encoder = MiniLMEncoder(model)
    if calib_sentences is None or eval_sentences is None:
        from qcompile.zoo.sentences import calibration_sentences, evaluation_sentences

        calib_sentences = calibration_sentences()
        eval_sentences = evaluation_sentences()
    reference = reference_embeddings(encoder, tokenizer, eval_sentences, max_length)
    return [fn(encoder, tokenizer, calib_sentences, eval_sentences, reference, max_length)
            for fn in baselines]


def format_results(results: list[dict]) -> str:
    """A small plain-text table of baseline results."""
    lines = [f"{'baseline':<32} {'cosine':>8} {'secs':>7}  notes"]
    for r in results:
        score = f"{r['cosine']:.4f}" if r["available"] else "n/a"
        notes = r["description"] if r["available"] else f"UNAVAILABLE: {r['reason']}"
        lines.append(f"{r['name']:<32} {score:>8} {r['seconds']:>7.1f}  {notes}")
    return "\n".join(lines)


if __name__ == "__main__":
    _start = time.perf_counter()
    print(format_results(run_all()))
    print(f"total {time.perf_counter() - _start:.1f} s")
