"""Held-out perplexity of the byte-level decoder LM under each quantization method.

    python benchmarks/methods.py [--calibration 32] [--evaluation 64]

The decoder (qcompile.zoo.decoder, trained on the stdlib's Python source on first use) is
compiled on its prefill-through-the-cache forward (sequence length 128) with
`qcompile.compile(target="reference")`; calibration windows and evaluation windows are
disjoint held-out text. Writes benchmarks/results/methods.json and methods.md.
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

import torch

import qcompile
from benchmarks.machine import machine_info
from qcompile.zoo.decoder import PrefillWithCache, load_decoder
from qcompile.zoo.decoder_data import held_out_windows, perplexity

KV_PIPELINE = "canonicalize,quantize-kv-cache"
# (label, recipe, pipeline, options, what is quantized)
METHODS = (
    ("fp32", "w8a8", "canonicalize", None, "nothing (captured graph, float32)"),
    ("fp16", "fp16", None, None, "linear/matmul operands fp16, fp32 accumulation"),
    ("w8a8", "w8a8", None, None, "int8 weights per channel, int8 activations per tensor"),
    ("w8a8-smoothquant", "w8a8-smoothquant", None, None, "w8a8 after SmoothQuant (alpha 0.5)"),
    ("w4a16-rtn", "w4a16-rtn", None, None, "int4 weights, group 128, round to nearest"),
    ("w4a16-gptq", "w4a16-gptq", None, None, "int4 weights, group 128, GPTQ"),
    ("w4a16-awq", "w4a16-awq", None, None, "int4 weights, group 128, AWQ scales"),
    ("kv int8-per-head", "w8a8", KV_PIPELINE, {"kv_cache": "int8-per-head"},
     "KV cache only: int8, static calibrated scale per head"),
    ("kv int8-per-token", "w8a8", KV_PIPELINE, {"kv_cache": "int8-per-token"},
     "KV cache only: int8, scale per token and head at the write"),
    ("kv fp8", "w8a8", KV_PIPELINE, {"kv_cache": "fp8"},
     "KV cache only: fp8 E4M3, static calibrated scale per head"),
    ("w8a8 + kv int8-per-token", "w8a8", None, {"kv_cache": "int8-per-token"},
     "w8a8 and the int8 per-token KV cache"),
)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _batches(windows: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [windows[i:i + size, :-1] for i in range(0, len(windows), size)]


def run_method(net, method: tuple, calibration: list, evaluation: torch.Tensor) -> dict:
    """Compile one method and measure its held-out perplexity."""
    label, recipe, pipeline, options, what = method
    started = time.monotonic()
    options = {**(options or {}), "numerics": False, "progress": False}
    compiled = qcompile.compile(net, target="reference", example_inputs=(calibration[0],),
                                calibration_data=calibration, recipe=recipe,
                                pipeline=pipeline, options=options)
    compile_s = time.monotonic() - started
    ppl = perplexity(compiled, evaluation, batch=16)
    return {"method": label, "recipe": recipe, "pipeline": pipeline or "default",
            "options": {k: v for k, v in options.items() if k not in ("numerics", "progress")},
            "quantized": what, "perplexity": round(ppl, 4), "compile_s": round(compile_s, 1)}


def _markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# Decoder LM perplexity by quantization method", "",
             f"Command: `{m['command']}`  ",
             (f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['versions']['torch']}, "
              f"python {m['versions']['python']}, {m['date']}"),
             "", result["setup"], "",
             f"Eager float32 (`model.prefill`): perplexity {result['eager_fp32_perplexity']}",
             "", "| method | quantized | perplexity | vs fp32 | compile s |",
             "|---|---|---|---|---|"]
    base = result["rows"][0]["perplexity"]
    for row in result["rows"]:
        delta = f"{100 * (row['perplexity'] / base - 1):+.2f}%"
        lines.append(f"| {row['method']} | {row['quantized']} | {row['perplexity']:.4f} | "
                     f"{delta} | {row['compile_s']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calibration", type=int, default=32, help="calibration windows")
    parser.add_argument("--evaluation", type=int, default=64, help="evaluation windows")
    parser.add_argument("--only", nargs="*", help="method labels to run (default: all)")
    args = parser.parse_args(argv)
    model = load_decoder()
    net = PrefillWithCache(model).eval()
    length = model.cfg.context
    calibration = _batches(held_out_windows(args.calibration, length, offset=0), 8)
    evaluation = held_out_windows(args.evaluation, length, offset=512)
    rows = []
    for method in METHODS:
        if args.only and method[0] not in args.only:
            continue
        rows.append(run_method(net, method, calibration, evaluation))
        print(f"{rows[-1]['method']:<26} ppl {rows[-1]['perplexity']:.4f} "
              f"({rows[-1]['compile_s']}s compile)", flush=True)
    result = {"machine": machine_info(sys.argv if argv is None else ["methods.py", *argv]),
              "setup": (f"Byte-level decoder ({model.cfg.n_layers} layers, d_model "
                        f"{model.cfg.d_model}, {model.cfg.n_heads} heads, context {length}) "
                        "trained on the Python stdlib source; held-out files, "
                        f"{args.calibration} calibration windows and {args.evaluation} "
                        f"disjoint evaluation windows of {length} bytes; target reference."),
              "eager_fp32_perplexity": round(perplexity(model.prefill, evaluation), 4),
              "rows": rows}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "methods.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(RESULTS, "methods.md"), "w", encoding="utf-8") as f:
        f.write(_markdown(result))
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
