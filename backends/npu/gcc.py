"""Build the generated C with gcc: a shared library for the runner and a standalone harness.

Flags: `gcc -std=c99 -O2 -Wall -Werror` (plus -fPIC -shared for the library), no -lm; the
library's undefined symbols (`nm -u`) must name no libm function. Builds are cached by the
hash of the sources and the compiler: <cache>/npu/<hash>/{model.so, harness, *.c, *.h}.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from qcompile.errors import BackendError

CFLAGS = ("-std=c99", "-O2", "-Wall", "-Werror")
_LIBM = re.compile(r"^(a?(sin|cos|tan)h?|atan2|exp2?|expm1|log(2|10|1p)?|pow|sqrt|cbrt|"
                   r"floor|ceil|trunc|l?l?round|nearbyint|l?l?rint|fmod|remainder|erfc?|"
                   r"tgamma|lgamma|hypot|fabs|fmin|fmax|fma|ldexp|frexp|modf)[fl]?$")


@dataclass(frozen=True)
class Built:
    """Paths of the built library and harness, the build time and whether it was cached."""

    library: Path
    harness: Path
    seconds: float
    cached: bool


def _gcc() -> str:
    path = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("gcc")
    if path is None:
        raise BackendError("npu-int8 needs gcc on PATH to build the generated C")
    return path


def _version(gcc: str) -> str:
    done = subprocess.run([gcc, "--version"], capture_output=True, text=True, check=False)
    return done.stdout


def source_key(files: dict, gcc: str) -> str:
    digest = hashlib.sha256(" ".join(CFLAGS).encode() + _version(gcc).encode())
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return digest.hexdigest()[:24]


def _run(cmd: list, cwd: Path, what: str) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        message = "\n".join((done.stderr or done.stdout).splitlines()[:12])
        raise BackendError(f"gcc failed to build the {what}:\n{message}")


def undefined_symbols(library: Path) -> list:
    """The undefined symbols of `library` (nm -u), [] when nm is not installed."""
    nm = shutil.which("nm")
    if nm is None:
        return []
    out = subprocess.run([nm, "-u", str(library)], capture_output=True, text=True,
                         check=False).stdout
    return [line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()]


def check_no_libm(library: Path) -> None:
    math = [s for s in undefined_symbols(library) if _LIBM.match(s)]
    if math:
        raise BackendError(f"the generated C calls libm ({', '.join(sorted(set(math)))}); "
                           "npu-int8 kernels must be integer-only")


def _compile(files: dict, where: Path, gcc: str) -> None:
    for name, text in files.items():
        (where / name).write_text(text)
    _run([gcc, *CFLAGS, "-fPIC", "-shared", "model.c", "-o", "model.so"], where, "library")
    _run([gcc, *CFLAGS, "model.c", "harness.c", "-o", "harness"], where, "harness")
    check_no_libm(where / "model.so")


def build(files: dict, cache_dir: Path | None) -> Built:
    """Build (or find in the cache) model.so and harness from `files` (name -> text).

    Without a cache directory the build goes to a fresh temporary directory."""
    gcc = _gcc()
    started = time.perf_counter()
    if cache_dir is None:
        where = Path(tempfile.mkdtemp(prefix="qcompile-npu-"))
        _compile(files, where, gcc)
        return Built(where / "model.so", where / "harness", time.perf_counter() - started,
                     False)
    final = Path(cache_dir) / "npu" / source_key(files, gcc)
    if (final / "model.so").exists() and (final / "harness").exists():
        return Built(final / "model.so", final / "harness", 0.0, True)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    try:
        _compile(files, staging, gcc)
        try:
            staging.rename(final)
        except OSError:  # another process stored the same build first
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Built(final / "model.so", final / "harness", time.perf_counter() - started, False)


def run_harness(harness: Path, inputs: list, output_sizes: list) -> list:
    """Run the standalone harness on input byte strings; returns the output byte strings."""
    with tempfile.TemporaryDirectory(prefix="qcompile-npu-run-") as tmp:
        ins = [Path(tmp) / f"in{i}.bin" for i in range(len(inputs))]
        outs = [Path(tmp) / f"out{j}.bin" for j in range(len(output_sizes))]
        for path, data in zip(ins, inputs):
            path.write_bytes(data)
        done = subprocess.run([str(harness), *map(str, ins), *map(str, outs)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BackendError(f"the C harness failed ({done.returncode}): {done.stderr}")
        return [path.read_bytes() for path in outs]
