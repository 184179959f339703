"""Workloads (rows) and contenders (columns) of benchmarks/cpu.py.

A builder is `build(workload, threads) -> (fn, notes)`; `fn(*inputs) -> Tensor` runs the
model at the static shape of `workload.inputs`. `build_contender` turns any failure into
`Built(reason=...)`: a competitor must never crash a run. The recipes follow
benchmarks/baselines.py (MiniLM accuracy baselines), generalised to any model and shape.
"""
from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from benchmarks.baselines import ONNX_OPSET
from benchmarks.tvm_fp32 import tvm_fp32


@dataclass
class Workload:
    """One benchmark row: a float model and the batches it is timed and scored on."""
    name: str
    model: nn.Module
    inputs: tuple                    # the timed batch
    input_names: tuple[str, ...]
    calibration: list[tuple]         # batches shaped like `inputs`
    eval_batches: list[tuple]        # accuracy batches shaped like `inputs` (first is `inputs`)
    metric: str                      # "cosine" (MiniLM embeddings) or "sqnr" (CNN logits)


@dataclass
class Built:
    name: str
    fn: Callable | None = None
    notes: str = ""
    build_s: float = 0.0
    reason: str | None = None

    @property
    def available(self) -> bool:
        return self.fn is not None


FULL = {"minilm": [(8, 128), (1, 128)], "resnet": [1, 8], "mobilenet": [1], "image": 224}
QUICK = {"minilm": [(2, 32)], "resnet": [1], "mobilenet": [1], "image": 64}


def minilm_workloads(shapes, quick: bool) -> list[Workload]:
    from qcompile.zoo import minilm
    from qcompile.zoo.sentences import calibration_sentences, evaluation_sentences

    model, tokenizer = minilm.load_minilm()
    encoder = minilm.MiniLMEncoder(model).eval()
    calib, evaluation = calibration_sentences()[:16 if quick else 64], evaluation_sentences()
    workloads = []
    for batch, length in shapes:
        def batches(sentences, count):
            return [minilm.tokenize(tokenizer, sentences[i:i + batch], length)
                    for i in range(0, batch * count, batch)]
        eval_count = 1 if quick else max(1, 16 // batch)
        workloads.append(Workload(
            f"all-MiniLM-L6-v2 {batch}x{length}", encoder, batches(evaluation, 1)[0],
            ("input_ids", "attention_mask"), batches(calib, len(calib) // batch),
            batches(evaluation, eval_count), "cosine"))
    return workloads


def cnn_workloads(name: str, factory, batches, size: int, quick: bool) -> list[Workload]:
    model = factory().eval()
    workloads = []
    for batch in batches:
        shape = (batch, 3, size, size)
        gen = torch.Generator().manual_seed(batch)
        calib = [(torch.randn(*shape, generator=gen),)
                 for _ in range(2 if quick else max(2, 16 // batch))]
        evals = [(torch.randn(*shape, generator=gen),)
                 for _ in range(1 if quick else max(1, 8 // batch))]
        workloads.append(Workload(f"{name} {batch}x3x{size}x{size}", model, evals[0], ("x",),
                                  calib, evals, "sqnr"))
    return workloads


def workloads(quick: bool, only: str | None = None) -> list[Workload]:
    """Full: MiniLM 8x128, 1x128; ResNet-18 1, 8 x 3x224x224; MobileNetV2 1 x 3x224x224."""
    from qcompile.zoo import mobilenet_v2, resnet18

    plan = QUICK if quick else FULL
    makers = {"minilm": lambda: minilm_workloads(plan["minilm"], quick),
              "resnet": lambda: cnn_workloads("ResNet-18", resnet18, plan["resnet"],
                                              plan["image"], quick),
              "mobilenet": lambda: cnn_workloads("MobileNetV2", mobilenet_v2, plan["mobilenet"],
                                                 plan["image"], quick)}
    return [w for key, make in makers.items() if only in (None, key) for w in make()]


def build_contender(name: str, builder, workload: Workload, threads: int) -> Built:
    """Run a builder with warnings silenced, timing it; any failure becomes `reason`."""
    start = time.perf_counter()
    logging.disable(logging.WARNING)  # onnxruntime.quantization warns per tensor on the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn, notes = builder(workload, threads)
            with torch.no_grad():
                fn(*workload.inputs)  # first call: lazy compilation happens here
    except Exception as exc:  # noqa: BLE001 - a contender must never crash the run
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return Built(name, reason=last.splitlines()[0][:300],
                     build_s=time.perf_counter() - start)
    finally:
        logging.disable(logging.NOTSET)
    return Built(name, fn, notes, time.perf_counter() - start)


def _fresh(workload: Workload) -> nn.Module:
    return copy.deepcopy(workload.model).eval()


def _no_grad(fn):
    def run(*inputs):
        with torch.no_grad():
            return fn(*inputs)
    return run


def torch_eager(w: Workload, threads: int):
    return _no_grad(w.model.eval()), "reference for every ratio"


def _inductor(module: nn.Module, w: Workload):
    """torch.compile (inductor, static shapes, weights frozen); compiles on the first call."""
    compiled = torch.compile(module, dynamic=False)
    with torch._inductor.config.patch(freezing=True), torch.no_grad():
        compiled(*w.inputs)
    return _no_grad(compiled)


def torch_compile_fp32(w: Workload, threads: int):
    return _inductor(_fresh(w), w), "inductor, dynamic=False, freezing=True"


def torch_dynamic_int8(w: Workload, threads: int):
    from torch.ao.quantization import quantize_dynamic

    quantized = quantize_dynamic(_fresh(w), {nn.Linear}, dtype=torch.qint8)
    convs = any(isinstance(m, nn.Conv2d) for m in w.model.modules())
    note = "quantize_dynamic {nn.Linear}, per-tensor qint8" + ("; convs stay fp32" if convs else "")
    return _no_grad(quantized), note


def _export_static(w: Workload):
    """torch.export at the benchmark shape minus dead code (see baselines._export_for_pt2e).
    strict first: non-strict export records no source_fn_stack, so ResNet's twice-called ReLU
    becomes one two-output partition ("Input partition has more than one output node")."""
    try:
        graph_module = torch.export.export(_fresh(w), w.inputs, strict=True).module()
        mode = "strict"
    except Exception:  # noqa: BLE001 - dynamo could not trace it: non-strict export
        graph_module, mode = torch.export.export(_fresh(w), w.inputs).module(), "non-strict"
    graph_module.graph.eliminate_dead_code()
    graph_module.recompile()
    return graph_module, mode


def torchao_pt2e_int8(w: Workload, threads: int):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86q

    quantizer = x86q.X86InductorQuantizer()
    quantizer.set_global(x86q.get_default_x86_inductor_quantization_config())
    exported, mode = _export_static(w)
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for batch in w.calibration:
            prepared(*batch)
    converted = convert_pt2e(prepared)
    return _inductor(converted, w), ("X86InductorQuantizer default static (u8 per-tensor act, "
                                      f"s8 per-channel w), {len(w.calibration)} calib batches, "
                                      f"{mode} export, torch.compile freezing=True")


class OrtRunner:
    """Callable (*tensors) -> first output, one onnxruntime CPU session with `threads` threads."""

    def __init__(self, path: Path, names: tuple[str, ...], threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        self.names = names

    def __call__(self, *inputs):
        feeds = {n: t.numpy() for n, t in zip(self.names, inputs)}
        return torch.from_numpy(self.session.run(None, feeds)[0])


def export_onnx(w: Workload, path: Path) -> Path:
    """Static-shape ONNX export (TorchScript exporter first, dynamo exporter as fallback)."""
    kwargs = {"input_names": list(w.input_names), "output_names": ["output"],
              "opset_version": ONNX_OPSET}
    try:
        torch.onnx.export(_fresh(w), w.inputs, str(path), dynamo=False, **kwargs)
    except Exception:  # noqa: BLE001 - fall back to the dynamo exporter
        torch.onnx.export(_fresh(w), w.inputs, str(path), dynamo=True, external_data=False,
                          **kwargs)
    return path


def _with_onnx(w: Workload, threads: int, transform):
    """Export, let `transform(fp32_path, tmp_dir) -> path` quantize, load into a session."""
    tmp = Path(tempfile.mkdtemp(prefix="qcompile-cpu-bench-"))
    try:
        path = transform(export_onnx(w, tmp / "fp32.onnx"), tmp)
        return OrtRunner(path, w.input_names, threads)  # the session holds the model in memory
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ort_fp32(w: Workload, threads: int):
    return _with_onnx(w, threads, lambda fp32, tmp: fp32), "graph optimisations: all (default)"


def ort_dynamic_int8(w: Workload, threads: int):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def transform(fp32: Path, tmp: Path) -> Path:
        quantize_dynamic(str(fp32), str(tmp / "dyn.onnx"), per_channel=True,
                         weight_type=QuantType.QInt8)
        return tmp / "dyn.onnx"

    return _with_onnx(w, threads, transform), "quantize_dynamic, s8 per-channel weights"


def _reader(w: Workload):
    from onnxruntime.quantization import CalibrationDataReader

    feeds = iter([{n: t.numpy() for n, t in zip(w.input_names, batch)}
                  for batch in w.calibration])

    class BatchReader(CalibrationDataReader):
        def get_next(self):
            return next(feeds, None)

    return BatchReader()


def ort_static_qdq_int8(w: Workload, threads: int):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    def transform(fp32: Path, tmp: Path) -> Path:
        quant_pre_process(str(fp32), str(tmp / "pre.onnx"))  # onnxruntime's recommended step
        quantize_static(str(tmp / "pre.onnx"), str(tmp / "qdq.onnx"), _reader(w),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True)
        return tmp / "qdq.onnx"

    return _with_onnx(w, threads, transform), (
        f"QDQ, MinMax over {len(w.calibration)} batches, u8 act, s8 per-channel w, "
        "quant_pre_process")


TUNE_TRIALS = 24  # GEMM tile candidates measured per model (heaviest shapes first)


def _cpu_path() -> str:
    try:
        from qcompile.backends.tvm.cpu_features import choose_path
        return choose_path()
    except Exception as exc:  # noqa: BLE001 - only for the note
        return f"? ({type(exc).__name__})"


def _compile_timed(w: Workload, target: str, options: dict):
    import qcompile
    start = time.perf_counter()
    compiled = qcompile.compile(_fresh(w), target=target, example_inputs=w.inputs,
                                calibration_data=list(w.calibration), recipe="w8a8",
                                options={"progress": False, **options})
    return compiled, time.perf_counter() - start


def qcompile_target(target: str, tune_trials: int = 0):
    """qcompile on `target`; cpu-int8 compiles three times into a fresh cache: cold, warm
    (library and tuning caches), and warm with the whole-compile cache (option compile_cache)."""
    def build(w: Workload, threads: int):
        note = f"w8a8 static, {len(w.calibration)} calib batches"
        if target != "cpu-int8":
            return _no_grad(_compile_timed(w, target, {})[0]), note
        with tempfile.TemporaryDirectory(prefix="qcompile-cache-") as cache:
            options = {"cache_dir": cache, "tune_trials": tune_trials}
            _, cold = _compile_timed(w, target, {**options, "compile_cache": True})
            compiled, warm = _compile_timed(w, target, options)
            _, whole = _compile_timed(w, target, {**options, "compile_cache": True})
        tuning = f"tuned ({tune_trials} trials)" if tune_trials else "untuned"
        note += (f", {tuning}, isa path {_cpu_path()}; compile cold {cold:.1f} s, warm "
                 f"{warm:.1f} s ({cold / warm:.1f}x), whole-compile cache {whole:.1f} s "
                 f"({cold / whole:.1f}x)")
        return _no_grad(compiled), note
    return build


CONTENDERS: dict[str, Callable] = {
    "torch fp32 eager": torch_eager,
    "torch.compile fp32": torch_compile_fp32,
    "torch dynamic int8": torch_dynamic_int8,
    "torchao PT2E int8 + compile": torchao_pt2e_int8,
    "onnxruntime fp32": ort_fp32,
    "onnxruntime dynamic int8": ort_dynamic_int8,
    "onnxruntime static QDQ int8": ort_static_qdq_int8,
    "TVM fp32": tvm_fp32,
    "qcompile reference": qcompile_target("reference"),
    "qcompile cpu-int8": qcompile_target("cpu-int8"),
    "qcompile cpu-int8 tuned": qcompile_target("cpu-int8", tune_trials=TUNE_TRIALS),
}
