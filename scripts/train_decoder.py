"""Train the byte-level decoder LM on the stdlib's Python source and cache its weights.

    python scripts/train_decoder.py [--force] [--steps N]

Weights go to $QCOMPILE_CACHE_DIR (else ~/.cache/qcompile); `qcompile.zoo.decoder.load_decoder`
loads them (and runs this training on first use). Prints a progress line and the held-out
perplexity.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from qcompile.zoo.decoder import DecoderConfig, weights_path
from qcompile.zoo.decoder_data import TRAIN_SETTINGS, train_and_save


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="retrain even when cached")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = DecoderConfig()
    path = weights_path(cfg, TRAIN_SETTINGS)
    if path.exists() and not args.force:
        print(f"cached: {path} (use --force to retrain)")
        return 0
    started = time.monotonic()
    train_and_save(cfg, path)
    print(f"saved {path} after {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
