"""npu-int8 (integer-only C): accuracy, memory, C build time and C run time.

    python benchmarks/npu.py [--runs 20] [--results benchmarks/results/npu]

Rows: the digits CNN (trained, real data) with power-of-two scales, top-1 against fp32;
ResNet-18 and MobileNetV2 (x0.5) at 1x3x32x32, random weights, checked bit-exact against
target="reference"; MiniLM integer-only (real weights) when the backend builds it, mean
embedding cosine to fp32 on 64 sentences. For each: activation arena vs the naive sum of activations,
weight bytes, op count, C build time (gcc, cold), and the C model's run time beside
target="reference" on the same input (ratio; both on this CPU, one thread).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore")

import torch  # noqa: E402

import qcompile  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402


def _time(fn, x, runs: int) -> float:
    fn(*x)
    start = time.perf_counter()
    for _ in range(runs):
        fn(*x)
    return (time.perf_counter() - start) / runs * 1e3


def _compile_pair(model, x, calibration, options, cache):
    x = x if isinstance(x, tuple) else (x,)
    npu = qcompile.compile(model, target="npu-int8", example_inputs=x,
                           calibration_data=calibration,
                           options={**options, "cache_dir": cache, "progress": False})
    ref = qcompile.compile(model, target="reference", example_inputs=x,
                           calibration_data=calibration,
                           options={**options, "integer_only": True, "progress": False})
    return npu, ref


def _row(name, model, x, calibration, options, runs, extra=None) -> dict:
    x = x if isinstance(x, tuple) else (x,)
    with tempfile.TemporaryDirectory() as cache:
        npu, ref = _compile_pair(model, x, calibration, options, cache)
        info = npu._runner.build_info
        row = {"model": name, "bit_exact": bool(torch.equal(npu(*x), ref(*x))),
               "arena_bytes": info["arena_bytes"],
               "naive_activation_bytes": info["naive_activation_bytes"],
               "weight_bytes": info["weight_bytes"], "ops": info["op_count"],
               "c_build_s": round(info["c_build_seconds"], 2),
               "c_ms": round(_time(npu, x, runs), 3), "reference_ms": round(_time(ref, x, runs), 3)}
        row["reference / c"] = round(row["reference_ms"] / row["c_ms"], 1)
        row.update(extra(npu, ref) if extra else {})
    return row


def digits_row(runs: int) -> dict:
    from qcompile.zoo.digits import accuracy, train_digits_cnn
    model, (x_train, _, x_test, y_test) = train_digits_cnn()
    calibration = [(x_train[i:i + 64],) for i in range(0, 512, 64)]

    def top1(npu, _ref):
        fp32 = accuracy(model, x_test, y_test)
        chunks = [x_test[i:i + 64] for i in range(0, len(x_test) - 63, 64)]
        labels = torch.cat([y_test[i:i + 64] for i in range(0, len(x_test) - 63, 64)])
        preds = torch.cat([npu(c).argmax(dim=1) for c in chunks])
        return {"fp32_top1": round(fp32, 2),
                "npu_top1": round(100.0 * float((preds == labels).float().mean()), 2)}
    return _row("digits CNN (pow2 scales)", model, x_test[:64], calibration,
                {"pow2_scales": True}, runs, top1)


def zoo_rows(runs: int) -> list[dict]:
    from qcompile.zoo import mobilenet, resnet
    torch.manual_seed(5)
    calibration = [(torch.randn(1, 3, 32, 32),) for _ in range(4)]
    x = torch.randn(1, 3, 32, 32)
    return [_row("ResNet-18 1x3x32x32", resnet.resnet18(num_classes=10).eval(), x,
                 calibration, {}, runs),
            _row("MobileNetV2 x0.5 1x3x32x32",
                 mobilenet.mobilenet_v2(num_classes=10, width_mult=0.5).eval(), x,
                 calibration, {}, runs)]


def minilm_row(runs: int) -> dict:
    """MiniLM integer-only (real weights), 8 x 32 tokens: bit-exact with reference and the
    mean embedding cosine to fp32 over 64 held-out sentences."""
    from qcompile.zoo import minilm
    from qcompile.zoo.sentences import calibration_sentences, evaluation_sentences
    model, tokenizer = minilm.load_minilm()
    encoder = minilm.MiniLMEncoder(model).eval()
    calibration = calibration_sentences()[:48]
    batches = [minilm.tokenize(tokenizer, calibration[i:i + 8], 32) for i in range(0, 48, 8)]
    sentences = evaluation_sentences()[:64]

    def cosine(npu, _ref):
        reference = minilm.embed(encoder, tokenizer, sentences, batch_size=8, max_length=32)
        got = minilm.embed(npu, tokenizer, sentences, batch_size=8, max_length=32)
        return {"cosine_to_fp32": round(minilm.cosine_to_reference(got, reference), 4)}
    return _row("MiniLM integer-only 8x32", encoder, batches[0], batches, {}, runs, cosine)


def _markdown(result: dict) -> str:
    rows = result["rows"]
    keys = sorted({k for r in rows for k in r if k != "model"})
    lines = [f"# npu-int8 ({result['machine']['date']})", "",
             f"Command: `{result['machine']['command']}`; CPU {result['machine']['cpu']}.", "",
             "| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += ["| " + r["model"] + " | " + " | ".join(str(r.get(k, "")) for k in keys) + " |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--results", default="benchmarks/results/npu")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [digits_row(args.runs)] + zoo_rows(args.runs) + [minilm_row(args.runs)]
    result = {"machine": machine_info(argv if argv is not None else sys.argv), "rows": rows}
    with open(args.results + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(args.results + ".md", "w") as f:
        f.write(_markdown(result))
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
