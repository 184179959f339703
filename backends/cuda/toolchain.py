"""Where the CUDA toolchain of the cuda-int8 backend lives: headers, cuobjdump, nvdisasm.

The pieces come from pip packages (the `qcompile[cuda]` extra); nvcc is never used and no
toolkit path is hard-coded. cuda-pathfinder is asked first (it prefers pip wheels, then
conda, then CUDA_PATH/CUDA_HOME); when it is absent or finds nothing, the files are
looked up inside the installed `nvidia` namespace package (the CUDA 13 layout
`nvidia/cu13/...` and the CUDA 12 layout `nvidia/cuda_*/...`).
A missing piece raises `CudaToolchainError` naming the pip package that provides it.
"""
from __future__ import annotations

import functools
import importlib.util
import os

from qcompile.errors import BackendError

INSTALL_HINT = "pip install 'qcompile[cuda]'"

PACKAGES = {
    "cudart": "nvidia-cuda-runtime",
    "cccl": "nvidia-cuda-cccl",
    "nvrtc": "nvidia-cuda-nvrtc",
    "cuobjdump": "nvidia-cuda-cuobjdump",
    "nvdisasm": "nvidia-cuda-nvdisasm",
    "cuda.bindings": "cuda-bindings",
    "cuda.core": "cuda-core",
}

_HEADER_MARKERS = {
    "cudart": ("cuda_runtime.h", ("cu13/include", "cuda_runtime/include")),
    "cccl": ("cuda/std/version", ("cu13/include/cccl", "cuda_cccl/include")),
}

_BINARY_DIRS = ("cu13/bin", "cuda_cuobjdump/bin", "cuda_nvdisasm/bin", "cuda_nvcc/bin")


class CudaToolchainError(BackendError):
    """A piece of the CUDA toolchain is missing or unusable; `package` says which pip
    package provides it."""

    def __init__(self, message: str, *, package: str | None = None, **kwargs):
        self.package = package
        if package:
            message = f"{message} (pip package '{package}' is missing; {INSTALL_HINT})"
        super().__init__(message, **kwargs)


class KernelCompileError(BackendError):
    """NVRTC rejected a kernel. Carries the kernel name, the arch and NVRTC's log."""

    def __init__(self, kernel: str, arch: str, log: str, **kwargs):
        self.kernel = kernel
        self.arch = arch
        self.log = log
        super().__init__(f"NVRTC could not compile kernel '{kernel}' for {arch}:\n{log}",
                         **kwargs)


class SassError(CudaToolchainError):
    """cuobjdump ran but produced no SASS (a bad cubin, or nvdisasm not found)."""


def _nvidia_roots() -> list[str]:
    """The directories of the installed `nvidia` namespace package (empty if none)."""
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return []
    if spec is None or spec.submodule_search_locations is None:
        return []
    return [str(p) for p in spec.submodule_search_locations]


def _pathfinder():
    """The cuda.pathfinder module, or None when it is not installed."""
    try:
        from cuda import pathfinder
    except ImportError:
        return None
    return pathfinder


def _header_dir_from_wheels(libname: str) -> str | None:
    marker, subdirs = _HEADER_MARKERS[libname]
    for root in _nvidia_roots():
        for sub in subdirs:
            candidate = os.path.join(root, *sub.split("/"))
            if os.path.isfile(os.path.join(candidate, *marker.split("/"))):
                return candidate
    return None


@functools.cache
def header_dir(libname: str) -> str:
    """The include directory for `libname` ('cudart' or 'cccl')."""
    pathfinder = _pathfinder()
    if pathfinder is not None:
        try:
            found = pathfinder.find_nvidia_header_directory(libname)
        except RuntimeError:
            found = None
        if found:
            return found
    found = _header_dir_from_wheels(libname)
    if found is None:
        marker = _HEADER_MARKERS[libname][0]
        raise CudaToolchainError(f"CUDA headers for {libname} ({marker}) not found",
                                 package=PACKAGES[libname])
    return found


def include_dirs() -> tuple[str, ...]:
    """Include directories every kernel compile gets: CUDA runtime headers, then CCCL."""
    return (header_dir("cudart"), header_dir("cccl"))


def _binary_from_wheels(name: str) -> str | None:
    for root in _nvidia_roots():
        for sub in _BINARY_DIRS:
            candidate = os.path.join(root, *sub.split("/"), name)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
    return None


@functools.cache
def binary(name: str) -> str:
    """The absolute path of the CUDA utility `name` ('cuobjdump' or 'nvdisasm')."""
    pathfinder = _pathfinder()
    found = pathfinder.find_nvidia_binary_utility(name) if pathfinder is not None else None
    found = found or _binary_from_wheels(name)
    if found is None:
        raise CudaToolchainError(f"CUDA utility '{name}' not found", package=PACKAGES[name])
    return found


def cuobjdump() -> str:
    """Path of cuobjdump (dumps the SASS of a cubin)."""
    return binary("cuobjdump")


def nvdisasm() -> str:
    """Path of nvdisasm (cuobjdump needs it to print SASS)."""
    return binary("nvdisasm")


def nvrtc_module():
    """cuda.bindings.nvrtc, after checking that the NVRTC library itself loads."""
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        raise CudaToolchainError(f"cannot import cuda.bindings.nvrtc: {exc}",
                                 package=PACKAGES["cuda.bindings"]) from None
    try:
        result, *_ = nvrtc.nvrtcVersion()
    except (RuntimeError, OSError) as exc:
        raise CudaToolchainError(f"cannot load the NVRTC library: {exc}",
                                 package=PACKAGES["nvrtc"]) from None
    if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise CudaToolchainError(f"NVRTC does not work: {result!r}", package=PACKAGES["nvrtc"])
    return nvrtc


def problems() -> list[str]:
    """Why the toolchain is unusable on this machine; empty when everything is there."""
    found = []
    for probe in (nvrtc_module, include_dirs, cuobjdump, nvdisasm):
        try:
            probe()
        except CudaToolchainError as exc:
            found.append(str(exc))
    return found
