"""The whole-compile cache (option compile_cache): a compile whose inputs were all seen before
loads the saved artifact instead of calibrating, quantizing and building again.

The key covers everything the result depends on: the captured graph's code, every parameter
and buffer (bytes), the input specs, the calibration batches (bytes), the target, the
pipeline text, the recipe with its options, the torch/qcompile versions and the source of
qcompile itself and of every registered pass (so editing a pass, or registering another
function under the same name, misses). Compiles it cannot key (non-tensor calibration
inputs, dumps requested, callables in the options) are not cached.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import os
from pathlib import Path

import torch

from .registry import list_passes

ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def _package_digest() -> str:
    """sha256 of qcompile's own sources (core, passes, backends, kernels)."""
    digest = hashlib.sha256()
    for folder in ("qcompile", "passes", "backends"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".py", ".cuh", ".h", ".c") and path.is_file():
                digest.update(str(path.relative_to(ROOT)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def _pass_sources() -> str:
    parts = []
    for info in list_passes():
        name, fn = info.name, info.fn
        try:
            parts.append(f"{name}:{inspect.getsource(fn)}")
        except (OSError, TypeError):
            parts.append(f"{name}:{getattr(fn, '__qualname__', repr(fn))}")
    return "\n".join(parts)


def _tensor_bytes(digest, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _batches(digest, calibration) -> bool:
    for batch in calibration:
        for value in batch if isinstance(batch, (tuple, list)) else (batch,):
            if not isinstance(value, torch.Tensor):
                return False
            _tensor_bytes(digest, value)
    return True


def compile_key(captured, target: str, resolved, pipeline: str, calibration) -> str | None:
    """The cache key of this compile, or None when it cannot be keyed."""
    options_text = repr(resolved)
    if " at 0x" in options_text:                    # a callable or object without a stable repr
        return None
    digest = hashlib.sha256()
    import qcompile
    for text in (qcompile.__version__, torch.__version__, _package_digest(), _pass_sources(),
                 target, pipeline, options_text, repr(captured.input_specs),
                 captured.graph_module.code):
        digest.update(text.encode())
    for name, value in sorted(captured.graph_module.state_dict(keep_vars=False).items()):
        digest.update(name.encode())
        _tensor_bytes(digest, value)
    if not _batches(digest, calibration):
        return None
    return digest.hexdigest()


def cache_dir(options) -> Path:
    base = options.cache_dir or os.environ.get("QCOMPILE_CACHE_DIR") or \
        os.path.join(os.path.expanduser("~"), ".cache", "qcompile")
    return Path(base) / "compiled"


def lookup(options, key: str):
    """The cached CompiledModel for `key`, or None (a missing or unreadable entry)."""
    path = cache_dir(options) / f"{key}.qcm"
    if not path.is_file():
        return None
    from .artifact import load_compiled
    from .errors import QCompileError
    try:
        return load_compiled(str(path))
    except QCompileError:
        return None


def store(options, key: str, compiled) -> None:
    """Save `compiled` under `key`; an unwritable cache or an unsavable model is skipped."""
    from .errors import QCompileError
    directory = cache_dir(options)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f"{key}.tmp-{os.getpid()}"
        compiled.save(str(tmp))
        os.replace(tmp, directory / f"{key}.qcm")
    except (OSError, QCompileError):
        pass
