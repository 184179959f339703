"""The backend's compiled library inside an artifact, so loading needs no compile.

A backend runner may offer `library_bytes()` and a `build_info` dict; its backend module then
offers `load_library(gm, data, build_info)`. The bytes travel as one uint8 tensor beside the
weights (covered by the file's checksum). A library that cannot serve here (another ISA path,
another toolchain version, a load failure) is rebuilt from the graph with a warning.
"""
from __future__ import annotations

import warnings

import torch

from ..errors import BackendError, QCompileWarning

LIBRARY_TENSOR = "__backend__.library"
_DETERMINISTIC_INFO = ("path", "key", "tiles", "versions", "arch", "tactics", "emulate")


def library_entry(runner) -> tuple[dict, dict]:
    """(header fields, tensors) describing the runner's compiled library, if it has one."""
    data = getattr(runner, "library_bytes", lambda: None)()
    if not data:
        return {}, {}
    info = {k: v for k, v in getattr(runner, "build_info", {}).items() if k in _DETERMINISTIC_INFO}
    return {"backend_library": info}, {LIBRARY_TENSOR: torch.frombuffer(bytearray(data),
                                                                         dtype=torch.uint8)}


def runner_for(backend, gm, header: dict, tensors: dict, examples: tuple, path: str):
    """The saved library when it loads here, else a fresh build of the graph."""
    data = tensors.pop(LIBRARY_TENSOR, None)
    info = header.get("backend_library")
    if data is not None and info is not None and hasattr(backend, "load_library"):
        try:
            return backend.load_library(gm, data.numpy().tobytes(), info)
        except BackendError as err:
            warnings.warn(f"qcompile: the compiled library in {path} cannot run here ({err}); "
                          "rebuilding it from the graph", QCompileWarning, stacklevel=3)
    return backend.build(gm, None, examples)
