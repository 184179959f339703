"""Compiling CUDA C++ kernels with NVRTC (no nvcc), with a disk cache.

`compile_kernel` turns a source into a cubin for one real arch (sm_80, sm_86, sm_89,
sm_90) and keeps ptxas's verbose report, parsed per function; `compile_ptx` produces
PTX for a virtual arch (compute_80) that newer GPUs JIT-compile. Every compile gets
`-std=c++17` and the CUDA runtime and CCCL include directories; NVRTC has no C++
standard library, so kernels use their own typedefs or `<cuda/std/cstdint>`.

Results are cached on disk under a sha256 of everything that changes the output:
source, in-memory headers, the files of the caller's include directories, options,
arch and the NVRTC/CCCL versions. `compile_count()` says how many times NVRTC ran.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field

from qcompile.backends.cuda import toolchain
from qcompile.backends.cuda.toolchain import KernelCompileError
from qcompile.errors import BackendError

CUBIN_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")
PTX_ARCHS = ("compute_80",)

_calls = {"nvrtc": 0}


@dataclass(frozen=True)
class CompiledKernel:
    """One compiled program. `resources` maps each function ptxas compiled to its
    registers, barriers, shared (static smem bytes), stack_frame, spill_stores and
    spill_loads; it is empty for PTX-only results."""

    name: str
    arch: str
    key: str
    cubin: bytes | None
    ptx: str | None
    ptxas_log: str
    resources: dict[str, dict[str, int]] = field(default_factory=dict)


def compile_count() -> int:
    """How many times NVRTC has compiled a program in this process (cache hits excluded)."""
    return _calls["nvrtc"]


def compile_kernel(source: str, name: str, arch: str, *, options=(),
                   headers: dict[str, str] | None = None, include_dirs=(),
                   ptx: bool = False, cache_dir=None, use_cache: bool = True) -> CompiledKernel:
    """Compile `source` to a cubin for `arch`; `ptx=True` also keeps the PTX text.

    `headers` maps include names to header text (NVRTC's in-memory headers);
    `include_dirs` are searched before the toolchain's; `options` are extra NVRTC
    flags such as '--maxrregcount=64' or '-DTILE=128'. Raises KernelCompileError.
    """
    if arch not in CUBIN_ARCHS:
        raise BackendError(f"kernel '{name}': unsupported arch '{arch}' "
                                     f"(cubin archs: {', '.join(CUBIN_ARCHS)})")
    return _build(source, name, arch, tuple(options), headers or {}, tuple(include_dirs),
                  want_ptx=ptx, cache_dir=cache_dir, use_cache=use_cache)


def compile_ptx(source: str, name: str, arch: str = "compute_80", *, options=(),
                headers: dict[str, str] | None = None, include_dirs=(),
                cache_dir=None, use_cache: bool = True) -> CompiledKernel:
    """Compile `source` to PTX for the virtual `arch`, for forward compatibility."""
    if arch not in PTX_ARCHS:
        raise BackendError(f"kernel '{name}': unsupported PTX arch '{arch}' "
                                     f"(PTX archs: {', '.join(PTX_ARCHS)})")
    return _build(source, name, arch, tuple(options), headers or {}, tuple(include_dirs),
                  want_ptx=True, cache_dir=cache_dir, use_cache=use_cache)


def nvrtc_version() -> tuple[int, int]:
    """NVRTC's (major, minor)."""
    _, major, minor = toolchain.nvrtc_module().nvrtcVersion()
    return int(major), int(minor)


def _flags(arch: str, options: tuple, include_dirs: tuple) -> list[str]:
    flags = [f"--gpu-architecture={arch}", "-std=c++17"]
    if arch.startswith("sm_"):
        flags.append("--ptxas-options=-v")
    flags += [f"-I{d}" for d in (*include_dirs, *toolchain.include_dirs())]
    return flags + [str(o) for o in options]


def _build(source, name, arch, options, headers, include_dirs, *, want_ptx, cache_dir,
           use_cache) -> CompiledKernel:
    flags = _flags(arch, options, include_dirs)
    key = cache_key(source, headers, flags, arch, include_dirs, want_ptx)
    path = os.path.join(cache_dir or default_cache_dir(), f"{key}.json")
    entry = _load(path) if use_cache else None
    if entry is None:
        cubin, ptx, log = _run_nvrtc(source, name, arch, flags, headers, want_ptx)
        entry = {"cubin": cubin, "ptx": ptx, "log": log}
        if use_cache:
            _store(path, entry)
    return CompiledKernel(name=name, arch=arch, key=key, cubin=entry["cubin"],
                          ptx=entry["ptx"], ptxas_log=entry["log"],
                          resources=parse_ptxas_log(entry["log"]))


def default_cache_dir() -> str:
    """`$QCOMPILE_CACHE_DIR/cuda`, else `~/.cache/qcompile/cuda`."""
    root = os.environ.get("QCOMPILE_CACHE_DIR")
    if root:
        return os.path.join(root, "cuda")
    return os.path.join(os.path.expanduser("~"), ".cache", "qcompile", "cuda")


def _dir_digest(directory: str) -> list[tuple[str, str]]:
    """(relative path, sha256) of every file under `directory`, so that editing an
    included header changes the cache key."""
    digests = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for file_name in sorted(files):
            full = os.path.join(root, file_name)
            with open(full, "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()
            digests.append((os.path.relpath(full, directory), digest))
    return digests


@functools.cache
def _toolchain_identity() -> tuple:
    """NVRTC's version (with the wheel's patch level) and CCCL's version header."""
    identity: list = [list(nvrtc_version())]
    try:
        from importlib.metadata import PackageNotFoundError, version
        identity.append(version("nvidia-cuda-nvrtc"))
    except (ImportError, PackageNotFoundError):
        identity.append(None)
    version_h = os.path.join(toolchain.header_dir("cccl"), "cuda", "std", "__cccl", "version.h")
    if os.path.isfile(version_h):
        with open(version_h, "rb") as handle:
            identity.append(hashlib.sha256(handle.read()).hexdigest())
    return tuple(identity)


def cache_key(source: str, headers: dict[str, str], flags: list[str], arch: str,
              include_dirs=(), want_ptx: bool = False) -> str:
    """sha256 of everything that decides the compiler's output."""
    payload = {
        "source": source, "headers": sorted(headers.items()), "flags": list(flags),
        "arch": arch, "ptx": want_ptx, "toolchain": list(_toolchain_identity()),
        "include_files": [_dir_digest(d) for d in include_dirs if os.path.isdir(d)],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _load(path: str) -> dict | None:
    """A cache entry, or None when absent or unreadable (it is then rebuilt)."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
        cubin = base64.b64decode(raw["cubin"]) if raw["cubin"] is not None else None
        return {"cubin": cubin, "ptx": raw["ptx"], "log": raw["log"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store(path: str, entry: dict) -> None:
    """Write an entry atomically; a cache that cannot be written is skipped."""
    cubin = entry["cubin"]
    raw = {"cubin": base64.b64encode(cubin).decode() if cubin is not None else None,
           "ptx": entry["ptx"], "log": entry["log"]}
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(raw, handle)
        os.replace(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _check(nvrtc, result, what: str):
    if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise toolchain.CudaToolchainError(f"NVRTC {what} failed: {result!r}")


def _fetch(nvrtc, prog, size_fn, get_fn) -> bytes:
    """Read one NVRTC output (log, PTX, cubin) through its size/get pair."""
    result, size = size_fn(prog)
    _check(nvrtc, result, size_fn.__name__)
    # NVRTC writes into the buffer: it must be a fresh mutable one (b" " * 1 would be
    # Python's shared one-byte object, and writing into it corrupts the whole process)
    buf = bytearray(max(int(size), 1))
    (result,) = get_fn(prog, buf)
    _check(nvrtc, result, get_fn.__name__)
    return bytes(buf[:size])


def _text(raw: bytes) -> str:
    """NVRTC's NUL-terminated text output as a str."""
    return raw.rstrip(b"\x00").decode(errors="replace").strip()


def _run_nvrtc(source, name, arch, flags, headers, want_ptx):
    """One NVRTC compile; returns (cubin or None, ptx or None, program log)."""
    nvrtc = toolchain.nvrtc_module()
    names = sorted(headers)
    result, prog = nvrtc.nvrtcCreateProgram(
        source.encode(), f"{name}.cu".encode(), len(names),
        [headers[n].encode() for n in names], [n.encode() for n in names])
    _check(nvrtc, result, "nvrtcCreateProgram")
    try:
        _calls["nvrtc"] += 1
        (result,) = nvrtc.nvrtcCompileProgram(prog, len(flags), [f.encode() for f in flags])
        log = _text(_fetch(nvrtc, prog, nvrtc.nvrtcGetProgramLogSize, nvrtc.nvrtcGetProgramLog))
        if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise KernelCompileError(name, arch, log or repr(result))
        cubin = (_fetch(nvrtc, prog, nvrtc.nvrtcGetCUBINSize, nvrtc.nvrtcGetCUBIN)
                 if arch.startswith("sm_") else None)
        ptx = (_text(_fetch(nvrtc, prog, nvrtc.nvrtcGetPTXSize, nvrtc.nvrtcGetPTX))
               if want_ptx else None)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    return cubin, ptx, log


_FUNCTION = re.compile(r"(?:Compiling entry function|Function properties for) '?([^'\s]+)'?")
_NUMBERS = {
    "registers": re.compile(r"Used (\d+) registers"),
    "barriers": re.compile(r"used (\d+) barriers"),
    "shared": re.compile(r"(\d+) bytes smem"),
    "stack_frame": re.compile(r"(\d+) bytes stack frame"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
}


def parse_ptxas_log(log: str) -> dict[str, dict[str, int]]:
    """ptxas `-v` output as {function: {registers, barriers, shared, stack_frame,
    spill_stores, spill_loads}}; numbers ptxas did not print are 0."""
    functions: dict[str, dict[str, int]] = {}
    current = None
    for line in log.splitlines():
        match = _FUNCTION.search(line)
        if match:
            current = functions.setdefault(match.group(1), dict.fromkeys(_NUMBERS, 0))
            continue
        if current is None:
            continue
        for field_name, pattern in _NUMBERS.items():
            found = pattern.search(line)
            if found:
                current[field_name] = int(found.group(1))
    return functions
