"""Compile all-MiniLM-L6-v2 (real weights, offline) to int8 and print what the compiler did.

    python examples/minilm.py [--target reference] [--recipe w8a8] [--dump dumps/minilm]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import qcompile  # noqa: E402
from qcompile.zoo import minilm  # noqa: E402
from qcompile.zoo.sentences import calibration_sentences, evaluation_sentences  # noqa: E402


def batches(tokenizer, sentences, batch_size=16, max_length=64):
    for start in range(0, len(sentences), batch_size):
        yield minilm.tokenize(tokenizer, sentences[start:start + batch_size], max_length)


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="reference")
    parser.add_argument("--recipe", default="w8a8")
    parser.add_argument("--calibration", default="mse")
    parser.add_argument("--dump", default=None, help="directory for per-pass graph dumps")
    parser.add_argument("--sentences", type=int, default=64, help="evaluation sentences")
    args = parser.parse_args(argv)

    model, tokenizer = minilm.load_minilm()
    encoder = minilm.MiniLMEncoder(model).eval()
    example = minilm.tokenize(tokenizer, calibration_sentences()[:2], max_length=64)
    start = time.perf_counter()
    compiled = qcompile.compile(encoder, target=args.target, example_inputs=example,
                                calibration_data=batches(tokenizer, calibration_sentences()),
                                recipe=args.recipe, dump_dir=args.dump,
                                options={"calibration": args.calibration})
    seconds = time.perf_counter() - start
    print(compiled.report)
    evaluation = evaluation_sentences()[:args.sentences]
    with torch.no_grad():
        reference = minilm.embed(encoder, tokenizer, evaluation)
        quantized = minilm.embed(compiled, tokenizer, evaluation)
    cosine = minilm.cosine_to_reference(quantized, reference)
    print(f"compiled in {seconds:.1f}s; mean cosine to fp32 over {len(evaluation)} sentences: "
          f"{cosine:.4f}")
    return cosine


if __name__ == "__main__":
    main()
