"""On-disk cache of compiled cpu-int8 libraries, keyed by what the generated code depends on.

    <cache root>/tvm/lib/<key>.so    the Relax executable, exported as a shared library
    <cache root>/tvm/lib/<key>.json  its SHA-256, size and the versions that built it

The key hashes the lowered graph (code and every constant), the example input shapes, the ISA
path, the LLVM target, the tile table from tuning, and the versions of qcompile, torch, TVM and
its FFI. An entry whose checksum does not match (a corrupt or half-written file) is never
loaded: it is deleted with a warning and the library is rebuilt.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch
import torch.fx as fx

from qcompile.errors import QCompileWarning
from qcompile.graph_edit import constant_value

ENV_VAR = "QCOMPILE_CACHE_DIR"


def cache_root(cache_dir: str | None = None) -> Path:
    """The cache directory: the option, else $QCOMPILE_CACHE_DIR, else ~/.cache/qcompile."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "qcompile"


def toolchain_versions() -> dict:
    """The versions a cached library or tuning record depends on."""
    import tvm
    import tvm_ffi

    from qcompile import __version__
    return {"qcompile": __version__, "torch": torch.__version__, "tvm": tvm.__version__,
            "tvm_ffi": getattr(tvm_ffi, "__version__", "?")}


@functools.lru_cache(maxsize=1)
def lowering_digest() -> str:
    """SHA-256 of this backend's own sources: a library built by other converters or
    schedules (a development tree, a patched install) is not served from the cache."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _hash_constants(digest, gm: fx.GraphModule) -> None:
    for node in gm.graph.find_nodes(op="get_attr"):
        value = constant_value(gm, node)
        digest.update(node.target.encode())
        if isinstance(value, torch.Tensor):
            value = value.detach().contiguous().cpu()
            digest.update(f"{value.dtype}{list(value.shape)}".encode())
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())


def library_key(gm: fx.GraphModule, example_inputs: tuple, path: str, target, tiles: dict) -> str:
    """SHA-256 of everything the compiled library depends on."""
    digest = hashlib.sha256()
    digest.update(gm.code.encode())
    _hash_constants(digest, gm)
    shapes = [(str(a.dtype), list(a.shape)) if isinstance(a, torch.Tensor) else repr(a)
              for a in example_inputs]
    meta = {"inputs": shapes, "path": path, "target": str(target), "tiles": tiles,
            "versions": toolchain_versions(), "lowering": lowering_digest()}
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_bytes(executable) -> bytes:
    """The executable as shared-library bytes (links with the system C compiler)."""
    fd, tmp = tempfile.mkstemp(suffix=".so", prefix="qcompile-")
    os.close(fd)
    try:
        executable.export_library(tmp)
        return Path(tmp).read_bytes()
    finally:
        Path(tmp).unlink(missing_ok=True)


class LibraryCache:
    """Compiled libraries under `<root>/tvm/lib`, checked by SHA-256 before every load."""

    def __init__(self, root: Path):
        self.dir = Path(root) / "tvm" / "lib"

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.dir / f"{key}.so", self.dir / f"{key}.json"

    def lookup(self, key: str) -> Path | None:
        """The library file for `key` if present and intact; a damaged entry is dropped."""
        lib, meta = self._paths(key)
        if not lib.exists() and not meta.exists():
            return None
        try:
            expected = json.loads(meta.read_text())["sha256"]
            intact = lib.exists() and _file_sha256(lib) == expected
        except (OSError, ValueError, KeyError, TypeError):
            intact = False
        if intact:
            return lib
        warnings.warn(f"qcompile: cached library {lib.name} in {self.dir} is corrupt or "
                      "incomplete; it is removed and rebuilt", QCompileWarning, stacklevel=3)
        self.drop(key)
        return None

    def drop(self, key: str) -> None:
        for p in self._paths(key):
            p.unlink(missing_ok=True)

    def store(self, key: str, data: bytes) -> Path:
        """Write the library bytes (atomically) and record their checksum."""
        self.dir.mkdir(parents=True, exist_ok=True)
        lib, meta = self._paths(key)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, lib)
        finally:
            Path(tmp).unlink(missing_ok=True)
        record = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                  "versions": toolchain_versions()}
        meta.write_text(json.dumps(record, sort_keys=True))
        return lib
