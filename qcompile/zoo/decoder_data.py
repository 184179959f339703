"""Training data and training loop of the byte-level decoder: the Python standard library.

Files are the `.py` files under `sysconfig.get_paths()["stdlib"]` (site-packages left out),
sorted by relative path; every `HELD_OUT_EVERY`-th file is held out. Text is UTF-8 bytes.
"""
from __future__ import annotations

import math
import os
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HELD_OUT_EVERY = 10
TRAIN_SETTINGS = {"steps": 600, "batch": 32, "lr": 3e-3, "warmup": 50, "seed": 0,
                  "max_train_bytes": 12_000_000, "data": "stdlib-py-v1"}


def stdlib_files() -> list[Path]:
    """The stdlib's .py files in a fixed order (sorted relative paths)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__"}
    files = [p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def split_files(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """(train files, held-out files): every HELD_OUT_EVERY-th file is held out."""
    held = [f for i, f in enumerate(files) if i % HELD_OUT_EVERY == 0]
    train = [f for i, f in enumerate(files) if i % HELD_OUT_EVERY != 0]
    return train, held


def read_bytes(files: list[Path], limit: int | None = None) -> torch.Tensor:
    """The files' bytes joined by a newline, as int64 tokens (at most `limit` bytes)."""
    chunks, total = [], 0
    for path in files:
        data = path.read_bytes() + b"\n"
        chunks.append(data)
        total += len(data)
        if limit is not None and total >= limit:
            break
    blob = b"".join(chunks)[:limit]
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(torch.int64)


def held_out_windows(count: int, length: int = 128, offset: int = 0) -> torch.Tensor:
    """`count` disjoint windows [count, length + 1] of held-out text, evenly spaced.

    Windows `offset .. offset + count - 1` of a fixed grid of 1024 windows, so calibration
    (offset 0) and evaluation (a later offset) never share text.
    """
    data = read_bytes(split_files(stdlib_files())[1])
    grid = 1024
    stride = (len(data) - length - 1) // grid
    if offset + count > grid or stride < length + 1:
        raise ValueError(f"not enough held-out text for windows {offset}..{offset + count}")
    starts = [(offset + i) * stride for i in range(count)]
    return torch.stack([data[s:s + length + 1] for s in starts])


@torch.no_grad()
def perplexity(logits_fn, windows: torch.Tensor, batch: int = 16) -> float:
    """exp(mean next-byte cross entropy) of `logits_fn(tokens [B,T]) -> [B,T,V]`."""
    total, count = 0.0, 0
    for start in range(0, len(windows), batch):
        chunk = windows[start:start + batch]
        logits = logits_fn(chunk[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                               chunk[:, 1:].reshape(-1), reduction="sum")
        total, count = total + float(loss), count + chunk[:, 1:].numel()
    return math.exp(total / count)


def _lr(step: int, settings: dict) -> float:
    if step < settings["warmup"]:
        return settings["lr"] * (step + 1) / settings["warmup"]
    progress = (step - settings["warmup"]) / max(settings["steps"] - settings["warmup"], 1)
    return settings["lr"] * 0.5 * (1 + math.cos(math.pi * progress))


def _progress(step: int, steps: int, loss: float, started: float) -> None:
    elapsed = time.monotonic() - started
    eta = elapsed / (step + 1) * (steps - step - 1)
    print(f"\rtrain decoder: step {step + 1}/{steps} loss {loss:.3f} "
          f"({elapsed:.0f}s, ~{eta:.0f}s left)", end="", file=sys.stderr, flush=True)


def train(model, settings: dict = TRAIN_SETTINGS, log: bool = True):
    """AdamW on random training windows of the model's context; returns the model (eval)."""
    train_files, _ = split_files(stdlib_files())
    data = read_bytes(train_files, settings["max_train_bytes"])
    length = model.cfg.context
    gen = torch.Generator().manual_seed(settings["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=0.01)
    model.train()
    started = time.monotonic()
    for step in range(settings["steps"]):
        starts = torch.randint(0, len(data) - length - 1, (settings["batch"],), generator=gen)
        chunk = torch.stack([data[s:s + length + 1] for s in starts.tolist()])
        for group in opt.param_groups:
            group["lr"] = _lr(step, settings)
        logits = model.prefill(chunk[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log and (step % 10 == 0 or step == settings["steps"] - 1):
            _progress(step, settings["steps"], loss.item(), started)
    if log:
        print(file=sys.stderr)
    return model.eval()


def train_and_save(cfg, path: Path, settings: dict = TRAIN_SETTINGS, log: bool = True):
    """Train a DecoderLM(cfg) from seed, save its state dict atomically at `path`."""
    from .decoder import DecoderLM
    torch.manual_seed(settings["seed"])
    model = train(DecoderLM(cfg), settings, log)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    if log:
        ppl = perplexity(model.prefill, held_out_windows(64, cfg.context, offset=512))
        print(f"held-out perplexity (64 windows of {cfg.context} bytes): {ppl:.3f}",
              file=sys.stderr)
    return model
