"""Which x86 integer-GEMM path this CPU can run, and the LLVM target that compiles it.

TVM 0.27's LLVM does not take `-mcpu=native` with its own triple (it silently falls back to a
generic CPU), so the features are read from /proc/cpuinfo at run time and the target names
them explicitly. Paths, best first:

- "avx512-vnni": `vpdpbusd` (u8 x s8 -> s32, non-saturating), needs avx512bw + avx512_vnni.
- "avx2": int16-widened operands and `vpmaddwd` (exact: |x*w| <= 2^14, two terms per lane).
- "generic": plain TIR vector arithmetic, any CPU LLVM targets.

`QCOMPILE_CPU_PATH=avx2` (or `choose_path(limit="avx2")`) forces a lower path; asking for a path
the CPU lacks is an error, never a silent fallback upwards.
"""
from __future__ import annotations

import os
import platform
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache

PATHS = ("avx512-vnni", "avx2", "generic")  # best first
ENV_VAR = "QCOMPILE_CPU_PATH"
_LIMIT: ContextVar[str | None] = ContextVar("qcompile_cpu_path_limit", default=None)

# cpuinfo flags each path needs
_NEEDS = {
    "avx512-vnni": ("avx512f", "avx512bw", "avx512_vnni"),
    "avx2": ("avx2",),
    "generic": (),
}

# explicit LLVM CPU + features per path (x86-64 micro-architecture levels)
_LLVM_CPU = {
    "avx512-vnni": ("x86-64-v4", ("+avx512vnni",)),
    "avx2": ("x86-64-v3", ()),
}


@dataclass(frozen=True)
class CpuFeatures:
    """ISA flags of this machine (cpuinfo spelling) and the paths they allow."""

    machine: str
    flags: frozenset

    def has(self, *names: str) -> bool:
        return all(n in self.flags for n in names)

    def supports(self, path: str) -> bool:
        if path not in _NEEDS:
            raise ValueError(f"unknown cpu path {path!r}; known: {', '.join(PATHS)}")
        if path == "generic":
            return True
        return self.machine in ("x86_64", "amd64") and self.has(*_NEEDS[path])

    def paths(self) -> list:
        """The paths this CPU runs, best first."""
        return [p for p in PATHS if self.supports(p)]

    @property
    def amx(self) -> bool:
        return self.has("amx_tile", "amx_int8")


def _read_flags(cpuinfo: str) -> frozenset:
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@lru_cache(maxsize=1)
def detect() -> CpuFeatures:
    """Features of the CPU this process runs on (empty on a machine without /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = _read_flags(f.read())
    except OSError:
        flags = frozenset()
    return CpuFeatures(platform.machine().lower(), flags)


def choose_path(limit: str | None = None, features: CpuFeatures | None = None) -> str:
    """The best path at or below `limit` (default: the `limited()` block's, else
    $QCOMPILE_CPU_PATH, else no limit)."""
    features = features or detect()
    limit = limit or _LIMIT.get() or os.environ.get(ENV_VAR) or PATHS[0]
    if limit not in PATHS:
        raise ValueError(f"unknown cpu path {limit!r}; known: {', '.join(PATHS)}")
    for path in PATHS[PATHS.index(limit):]:
        if features.supports(path):
            return path
    return "generic"


@contextmanager
def limited(path: str | None):
    """Within this block, choose_path() picks nothing above `path` (None or "auto": no limit)."""
    if path not in (None, "auto") and path not in PATHS:
        raise ValueError(f"unknown cpu path {path!r}; known: auto, {', '.join(PATHS)}")
    token = _LIMIT.set(None if path == "auto" else path)
    try:
        yield
    finally:
        _LIMIT.reset(token)


def require(path: str, features: CpuFeatures | None = None) -> None:
    """Raise if this CPU cannot run `path` (forcing a path is only ever downwards)."""
    features = features or detect()
    if not features.supports(path):
        missing = [n for n in _NEEDS[path] if n not in features.flags]
        raise RuntimeError(f"cpu path {path!r} needs {', '.join(missing) or 'an x86-64 CPU'}")


def llvm_target(path: str):
    """The tvm.target.Target compiling `path`: explicit mcpu/mattr, never -mcpu=native."""
    import tvm

    if path == "generic":
        return tvm.target.Target({"kind": "llvm"})
    if path not in _LLVM_CPU:
        raise ValueError(f"unknown cpu path {path!r}; known: {', '.join(PATHS)}")
    mcpu, mattr = _LLVM_CPU[path]
    config = {"kind": "llvm", "mcpu": mcpu}
    if mattr:
        config["mattr"] = list(mattr)
    return tvm.target.Target(config)


def cpu_identity() -> str:
    """CPU model, core count and ISA flags: what tuning measurements are valid for."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    paths = ",".join(detect().paths())
    return f"{model} x{os.cpu_count()} [{paths}]"
