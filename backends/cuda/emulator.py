"""Runs the cuda-int8 kernel sources on the CPU, bit for bit as the GPU runs them.

The .cu/.cuh sources under kernels/ compile unchanged with the host g++ when QC_EMULATE is
defined: kernels/emulate.h turns every CUDA thread into an OS thread and ptx.cuh swaps each
inline-PTX wrapper for a CPU twin. This module builds such a source into a shared library
(cached by a hash of the source, the kernel headers, the flags and the compiler) and calls
its host launchers through ctypes.

Sanitizer builds (ThreadSanitizer, AddressSanitizer) cannot be loaded into the Python
process, whose runtime is not instrumented; they are built as a small executable that reads
a problem from a file, runs the kernel and writes the result, and a sanitizer report turns
into an EmulatedRunError carrying the report.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from qcompile.errors import BackendError
from qcompile.quant_math import MAX_SHIFT

KERNEL_DIR = Path(__file__).resolve().parent / "kernels"
BASE_FLAGS = ("-std=c++17", "-pthread", "-DQC_EMULATE")
SANITIZER_FLAGS = {
    "thread": ("-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=thread"),
    "address": ("-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address"),
}
SANITIZER_ENV = {"TSAN_OPTIONS": "halt_on_error=1:exitcode=66",
                 "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1"}
GEMM_KERNELS = {"64x64": "qc_gemm_int8_64x64", "128x128": "qc_gemm_int8_128x128"}
GEMM_SOURCE = '#include "gemm_int8.cuh"\n'
RUN_TIMEOUT_S = 600


class EmulatorError(BackendError):
    """The CPU emulation of a CUDA kernel failed; `log` holds the compiler or run output."""

    def __init__(self, message: str, log: str = ""):
        self.log = log
        super().__init__(message)


class CompilerNotFoundError(EmulatorError):
    """No host C++ compiler (g++, or $QC_EMULATOR_CXX) on PATH."""


class KernelBuildError(EmulatorError):
    """The host compiler rejected a kernel source."""


class KernelConstraintError(EmulatorError):
    """The arguments break a restriction of the kernel (shapes, dtypes, ranges)."""


class EmulatedRunError(EmulatorError):
    """An emulated launch failed, or a sanitizer reported an error."""


def compiler() -> str:
    """Path of the host C++ compiler: $QC_EMULATOR_CXX, else g++."""
    name = os.environ.get("QC_EMULATOR_CXX", "g++")
    path = shutil.which(name)
    if path is None:
        raise CompilerNotFoundError(f"host C++ compiler '{name}' not found on PATH; the CUDA "
                                    "emulator needs g++ (or set QC_EMULATOR_CXX)")
    return path


@functools.lru_cache(maxsize=None)
def _compiler_version(path: str) -> str:
    done = subprocess.run([path, "--version"], capture_output=True, text=True)
    return done.stdout.splitlines()[0] if done.stdout else path


def cache_dir() -> Path:
    """Where built libraries live: $QC_EMULATOR_CACHE, else a per-user temp folder."""
    default = Path(tempfile.gettempdir()) / f"qcompile-cuda-emu-{os.getuid()}"
    path = Path(os.environ.get("QC_EMULATOR_CACHE", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _digest(source: str, flags: Sequence[str], cxx: str) -> str:
    h = hashlib.sha256()
    for part in (source, "\0".join(flags), _compiler_version(cxx)):
        h.update(part.encode() + b"\0")
    for header in sorted(KERNEL_DIR.glob("*.*h")):
        h.update(header.name.encode() + b"\0" + header.read_bytes())
    return h.hexdigest()[:24]


def build(source: str, *, executable: bool = False, sanitizer: Optional[str] = None,
          extra_flags: Sequence[str] = ()) -> Path:
    """Compile `source` (C++ including kernel headers) for emulation; returns the artifact.

    A shared library unless `executable`; `sanitizer` is 'thread' or 'address'. The result
    is reused while the source, the headers in kernels/, the flags and g++ stay the same.
    """
    if sanitizer is not None and sanitizer not in SANITIZER_FLAGS:
        raise ValueError(f"sanitizer must be one of {sorted(SANITIZER_FLAGS)}, got {sanitizer}")
    cxx = compiler()
    flags = list(BASE_FLAGS) + list(SANITIZER_FLAGS.get(sanitizer, ("-O2",)))
    flags += [] if executable else ["-fPIC", "-shared"]
    flags += ["-I", str(KERNEL_DIR), *extra_flags]
    key = _digest(source, flags, cxx)
    out = cache_dir() / (f"{key}.exe" if executable else f"{key}.so")
    if not out.exists():
        _compile(cxx, source, flags, out)
    return out


def _compile(cxx: str, source: str, flags: list[str], out: Path) -> None:
    src, tmp_src = out.with_suffix(".cpp"), out.with_name(f"{out.stem}.{os.getpid()}.cpp")
    tmp_src.write_text(source)
    os.replace(tmp_src, src)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    cmd = [cxx, *flags, "-x", "c++", str(src), "-o", str(tmp)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        log = done.stdout + done.stderr
        raise KernelBuildError(f"g++ failed to build the emulated kernel ({' '.join(cmd)}):\n"
                               f"{log[-4000:]}", log)
    os.replace(tmp, out)


@functools.lru_cache(maxsize=None)
def _load(path: str) -> ctypes.CDLL:
    return ctypes.CDLL(path)


def load(source: str, **build_options) -> ctypes.CDLL:
    """Build `source` as a shared library (see build) and load it."""
    return _load(str(build(source, **build_options)))


def gemm_library() -> ctypes.CDLL:
    """The emulation build of kernels/gemm_int8.cuh, launchers' argument types set."""
    lib = load(GEMM_SOURCE)
    for kernel in GEMM_KERNELS.values():
        launch = getattr(lib, kernel + "_launch")
        launch.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int] * 7
        launch.restype = ctypes.c_int
    return lib


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU tensor whose data starts on a 16-byte boundary (cp.async needs it)."""
    t = t.detach().cpu().contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _vector(name: str, t: torch.Tensor, n: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or tuple(t.shape) != (n,):
        raise KernelConstraintError(f"{name} must be an int32 tensor of shape [{n}]")
    return _aligned(t)


def _gemm_problem(x, x_zp, w, bias, multiplier, shift, out_zp, qmin, qmax):
    """Checked kernel arguments: (tensors x2d, w, bias, mult, shift), (M, N, K, scalars)."""
    for name, t in (("x", x), ("w", w)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int8:
            raise KernelConstraintError(f"{name} must be an int8 tensor")
    if w.dim() != 2 or x.dim() < 1 or x.shape[-1] != w.shape[1]:
        raise KernelConstraintError(f"shapes do not match: x {list(x.shape)}, w {list(w.shape)}")
    n, k = w.shape
    if k % 16:
        raise KernelConstraintError(f"the int8 GEMM kernel needs K % 16 == 0, got K={k}")
    if not (-128 <= x_zp <= 127 and -128 <= qmin <= qmax <= 127 and -2**31 <= out_zp < 2**31):
        raise KernelConstraintError(f"bad x_zp={x_zp}, out_zp={out_zp} or [qmin, qmax]=[{qmin}, "
                                    f"{qmax}]")
    mult, sh = _vector("multiplier", multiplier, n), _vector("shift", shift, n)
    if bool((mult < 0).any()) or bool(((sh < 1) | (sh > MAX_SHIFT)).any()):
        raise KernelConstraintError(f"multipliers must be >= 0 and shifts in [1, {MAX_SHIFT}]")
    b = None if bias is None else _vector("bias", bias, n)
    x2 = _aligned(x.reshape(-1, k))
    scalars = (x2.shape[0], n, k, int(x_zp), int(out_zp), int(qmin), int(qmax))
    return (x2, _aligned(w), b, mult, sh), scalars


def _kernel_name(tile: str) -> str:
    if tile not in GEMM_KERNELS:
        raise KernelConstraintError(f"tile must be one of {sorted(GEMM_KERNELS)}, got {tile!r}")
    return GEMM_KERNELS[tile]


def gemm_int8_emulated(x: torch.Tensor, x_zp: int, w: torch.Tensor, bias: Optional[torch.Tensor],
                       multiplier: torch.Tensor, shift: torch.Tensor, out_zp: int, qmin: int,
                       qmax: int, tile: str = "64x64") -> torch.Tensor:
    """qlinear (int8 [..., K] x int8 [N, K] -> int8 [..., N]) by the CUDA GEMM kernel, emulated.

    Same arguments and result as qcompile.ops.reference.qlinear; `tile` picks the kernel
    instantiation ('64x64': 4 warps, '128x128': 8 warps). K must be a multiple of 16. As in
    the contract, the accumulator sum((x - x_zp) * w) + bias must fit in int32.
    """
    launch = getattr(gemm_library(), _kernel_name(tile) + "_launch")
    (x2, w2, b, mult, sh), scalars = _gemm_problem(x, x_zp, w, bias, multiplier, shift, out_zp,
                                                   qmin, qmax)
    y = torch.empty(scalars[0], scalars[1], dtype=torch.int8)
    ptrs = [t.data_ptr() if t is not None else None for t in (x2, w2, b, mult, sh, y)]
    if launch(*ptrs, *scalars) != 0:
        raise EmulatedRunError(f"emulated launch of {_kernel_name(tile)} failed")
    return y.reshape(*x.shape[:-1], scalars[1])


GEMM_DRIVER = r'''#include "gemm_int8.cuh"
#include <fstream>

/* Problem file: int32 M, N, K, x_zp, out_zp, qmin, qmax, has_bias, tile (0: 64x64,
 * 1: 128x128), then x, w, bias, multiplier, shift as raw arrays. Writes y (M x N int8). */
static void* allocate(size_t bytes) { return std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64); }

static void* read_array(std::ifstream& in, size_t bytes) {
  void* p = allocate(bytes);
  in.read(static_cast<char*>(p), static_cast<std::streamsize>(bytes));
  return p;
}

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  std::ifstream in(argv[1], std::ios::binary);
  int32_t h[9];
  in.read(reinterpret_cast<char*>(h), sizeof(h));
  size_t m = h[0], n = h[1], k = h[2];
  auto x = static_cast<int8_t*>(read_array(in, m * k));
  auto w = static_cast<int8_t*>(read_array(in, n * k));
  auto bias = static_cast<int32_t*>(read_array(in, 4 * n));
  auto mult = static_cast<int32_t*>(read_array(in, 4 * n));
  auto shift = static_cast<int32_t*>(read_array(in, 4 * n));
  if (!in) return 3;
  auto y = static_cast<int8_t*>(allocate(m * n));
  auto launch = h[8] ? qc_gemm_int8_128x128_launch : qc_gemm_int8_64x64_launch;
  int rc = launch(x, w, h[7] ? bias : nullptr, mult, shift, y, h[0], h[1], h[2], h[3], h[4],
                  h[5], h[6]);
  std::ofstream(argv[2], std::ios::binary).write(reinterpret_cast<char*>(y), m * n);
  for (void* p : {(void*)x, (void*)w, (void*)bias, (void*)mult, (void*)shift, (void*)y})
    std::free(p);
  return rc;
}
'''

_PROBE = "#include <thread>\nint main() { int v = 0; std::thread t([&] { v = 1; }); t.join(); " \
         "return v - 1; }\n"


def run_executable(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, **SANITIZER_ENV)
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=env,
                              timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise EmulatedRunError(f"{what} did not finish in {RUN_TIMEOUT_S} s") from exc


def run_sanitized(driver_source: str, sanitizer: str, problem: bytes, what: str) -> bytes:
    """Build `driver_source` (a main reading a problem file, writing the output file) with
    -fsanitize=`sanitizer`, run it on `problem` and return the output bytes; a sanitizer
    report or a failed run raises EmulatedRunError carrying the log."""
    exe = build(driver_source, executable=True, sanitizer=sanitizer)
    with tempfile.TemporaryDirectory(prefix="qc-emu-") as tmp:
        src, dst = Path(tmp, "problem.bin"), Path(tmp, "y.bin")
        src.write_bytes(problem)
        done = run_executable([str(exe), str(src), str(dst)], f"the {sanitizer}-sanitized {what}")
        if done.returncode != 0:
            log = done.stdout + done.stderr
            raise EmulatedRunError(f"the {sanitizer}-sanitized {what} exited with "
                                   f"{done.returncode}:\n{log[-4000:]}", log)
        return dst.read_bytes()


@functools.lru_cache(maxsize=None)
def sanitizer_unavailable_reason(sanitizer: str) -> Optional[str]:
    """None when g++ can build and run a threaded program under `sanitizer`, else why not."""
    try:
        exe = build(_PROBE, executable=True, sanitizer=sanitizer)
    except CompilerNotFoundError as exc:
        return str(exc)
    except KernelBuildError as exc:
        return f"g++ cannot build with -fsanitize={sanitizer}: {exc.log.strip()[:300]}"
    done = run_executable([str(exe)], f"the {sanitizer} sanitizer probe")
    if done.returncode != 0:
        return f"a -fsanitize={sanitizer} program does not run here: {done.stderr.strip()[:300]}"
    return None


def _problem_bytes(tensors, scalars, tile: str) -> bytes:
    x2, w2, b, mult, sh = tensors
    n = scalars[1]
    bias = b if b is not None else torch.zeros(n, dtype=torch.int32)
    header = np.array([*scalars, b is not None, list(GEMM_KERNELS).index(tile)], dtype=np.int32)
    arrays = [header] + [t.numpy() for t in (x2, w2, bias, mult, sh)]
    return b"".join(a.tobytes() for a in arrays)


def gemm_int8_sanitized(sanitizer: str, x, x_zp, w, bias, multiplier, shift, out_zp, qmin,
                        qmax, tile: str = "64x64") -> torch.Tensor:
    """gemm_int8_emulated in a separate process built with -fsanitize=`sanitizer`.

    Raises EmulatedRunError with the sanitizer's report when it finds a race or a bad
    memory access (or the run fails otherwise).
    """
    _kernel_name(tile)
    tensors, scalars = _gemm_problem(x, x_zp, w, bias, multiplier, shift, out_zp, qmin, qmax)
    out = run_sanitized(GEMM_DRIVER, sanitizer, _problem_bytes(tensors, scalars, tile), "GEMM")
    y = torch.frombuffer(bytearray(out), dtype=torch.int8)
    return y.reshape(*x.shape[:-1], scalars[1])
