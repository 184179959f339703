"""Accuracy of qcompile int8 against fp32 and against other int8 quantizers.

    python benchmarks/accuracy.py [--sentences 267] [--skip-baselines]

Writes benchmarks/results/accuracy.json and accuracy.md (machine, versions, command).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore")

import torch  # noqa: E402

import qcompile  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402
from qcompile.instruments import sqnr_db  # noqa: E402
from qcompile.zoo import digits, mobilenet_v2, resnet18, small_vit  # noqa: E402

QCOMPILE_RECIPES = (("w8a8", None), ("w8a8-smoothquant", None),
                    ("w8a8-smoothquant", {"alpha": 0.75}), ("w8a8-dynamic", None),
                    ("w8a16-rtn", None), ("w4a16-rtn", None), ("w4a16-gptq", None), ("w4a16-awq", None),
                    ("fp16", None), ("fp8", None), ("fp8", {"fp8_format": "e5m2"}))
CLE_BC = {"equalize": True, "bias_correction": True}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def digits_result() -> dict:
    model, (x_train, _, x_test, y_test) = digits.train_digits_cnn()
    calibration = [x_train[i:i + 64] for i in range(0, 512, 64)]
    compiled = qcompile.compile(model, example_inputs=(x_test[:8],), calibration_data=calibration)
    corrected = qcompile.compile(model, example_inputs=(x_test[:8],),
                                 calibration_data=calibration, options=CLE_BC)
    fp32, int8 = digits.accuracy(model, x_test, y_test), digits.accuracy(compiled, x_test, y_test)
    return {"model": "digits CNN (sklearn load_digits, held-out 20%)", "metric": "top-1 %",
            "fp32": round(fp32, 2), "qcompile_w8a8": round(int8, 2),
            "drop_points": round(fp32 - int8, 2),
            "qcompile_w8a8_equalize_bias_correction": round(
                digits.accuracy(corrected, x_test, y_test), 2)}


def structure_result(name: str, model: torch.nn.Module, shape: tuple, options=None) -> dict:
    torch.manual_seed(0)
    calibration = [torch.randn(*shape) for _ in range(4)]
    x = torch.randn(*shape)
    compiled = qcompile.compile(model.eval(), example_inputs=(x,), calibration_data=calibration,
                                options=options)
    with torch.no_grad():
        db = sqnr_db(model(x), compiled(x))
    floats = [r.op for r in compiled.report.float_islands]
    label = "qcompile_w8a8" + "".join(f"_{k}" for k, v in sorted((options or {}).items()) if v)
    return {"model": name, "input": list(shape), "metric": "output SQNR dB vs fp32",
            label: round(db, 2),
            "conv_or_linear_left_float": sum(("conv" in op or "linear" in op) for op in floats)}


def minilm_results(eval_count: int, with_baselines: bool) -> list[dict]:
    from qcompile.zoo import minilm
    from qcompile.zoo.sentences import calibration_sentences, evaluation_sentences
    model, tokenizer = minilm.load_minilm()
    encoder = minilm.MiniLMEncoder(model).eval()
    calib, evaluation = calibration_sentences(), evaluation_sentences()[:eval_count]
    reference = minilm.embed(encoder, tokenizer, evaluation)
    rows = []
    for recipe, options in QCOMPILE_RECIPES:
        start = time.perf_counter()
        batches = (minilm.tokenize(tokenizer, calib[i:i + 16]) for i in range(0, len(calib), 16))
        compiled = qcompile.compile(encoder, example_inputs=minilm.tokenize(tokenizer, calib[:2]),
                                    calibration_data=batches, recipe=recipe, options=options)
        cosine = minilm.cosine_to_reference(minilm.embed(compiled, tokenizer, evaluation),
                                            reference)
        label = f"qcompile {recipe}" + (f" {options}" if options else "")
        rows.append({"name": label, "available": True, "cosine": round(cosine, 4),
                     "seconds": round(time.perf_counter() - start, 1)})
    if with_baselines:
        from benchmarks.baselines import run_all
        for r in run_all(encoder, tokenizer, calib, evaluation):
            rows.append({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    return rows


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# Accuracy", "", f"Command: `{m['command']}`  ", f"Date: {m['date']}  ",
             f"CPU: {m['cpu']} ({m['cores']} cores; {', '.join(m['simd'])})  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), "",
             f"## all-MiniLM-L6-v2: mean cosine of sentence embeddings to fp32 "
             f"({report['minilm_sentences']} sentences)", "", "| quantizer | cosine |", "|---|---|"]
    for r in report["minilm"]:
        value = r["cosine"] if r.get("available") else f"unavailable: {r.get('reason')}"
        lines.append(f"| {r['name']} | {value} |")
    lines += ["", "## Other models", "", "| model | metric | result |", "|---|---|---|"]
    for r in report["models"]:
        result = {k: v for k, v in r.items() if k not in ("model", "metric")}
        lines.append(f"| {r['model']} | {r['metric']} | {json.dumps(result)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sentences", type=int, default=267)
    parser.add_argument("--skip-baselines", action="store_true")
    args = parser.parse_args(argv)
    report = {"machine": machine_info(["python", "benchmarks/accuracy.py"] + (argv or sys.argv[1:])),
              "models": [digits_result(),
                         structure_result("ResNet-18 (random weights)", resnet18(), (2, 3, 64, 64)),
                         structure_result("MobileNetV2 (random weights)", mobilenet_v2(),
                                          (2, 3, 64, 64)),
                         structure_result("MobileNetV2 (random weights)", mobilenet_v2(),
                                          (2, 3, 64, 64), CLE_BC),
                         structure_result("small ViT (random weights)", small_vit(), (2, 3, 32, 32))],
              "minilm_sentences": args.sentences,
              "minilm": minilm_results(args.sentences, not args.skip_baselines)}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "accuracy.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(RESULTS, "accuracy.md"), "w", encoding="utf-8") as f:
        f.write(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
