"""Running the built C model from Python: the shared library through ctypes, as a submodule
of the host graph, and the runner around that graph."""
from __future__ import annotations

import ctypes
import dataclasses
import json

import torch
from torch import fx

from qcompile.errors import InputError

_ALIGN = 16


class CModel(torch.nn.Module):
    """Calls `model_run_multi` of the library: int tensors in, a tuple of tensors out.

    `inputs` / `outputs` are the relax_graph.Tensor descriptions of the C model's tensors."""

    def __init__(self, library_path: str, inputs: list, outputs: list, arena_bytes: int):
        super().__init__()
        self.library_path = str(library_path)
        self.inputs, self.outputs = list(inputs), list(outputs)
        self._lib = ctypes.CDLL(self.library_path)
        self._run = self._lib.model_run_multi
        self._run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        self._run.restype = ctypes.c_int
        self._arena = torch.zeros(arena_bytes + _ALIGN, dtype=torch.uint8)

    def _arena_ptr(self) -> int:
        ptr = self._arena.data_ptr()
        return ptr + (-ptr) % _ALIGN

    def _checked(self, index: int, value) -> torch.Tensor:
        spec = self.inputs[index]
        dtype = getattr(torch, spec.dtype)
        if not isinstance(value, torch.Tensor) or value.dtype != dtype \
                or tuple(value.shape) != spec.shape:
            got = f"{value.dtype} {list(value.shape)}" if isinstance(value, torch.Tensor) \
                else type(value).__name__
            raise InputError(f"the C model was built for input {index} of {spec.dtype} "
                             f"{list(spec.shape)}, got {got} (npu-int8 shapes are static)")
        return value.detach().contiguous()

    def forward(self, *args):
        ins = [self._checked(i, a) for i, a in enumerate(args)]
        outs = [torch.empty(t.shape, dtype=getattr(torch, t.dtype)) for t in self.outputs]
        in_ptrs = (ctypes.c_void_p * max(len(ins), 1))(*[t.data_ptr() for t in ins])
        out_ptrs = (ctypes.c_void_p * max(len(outs), 1))(*[t.data_ptr() for t in outs])
        status = self._run(ctypes.cast(in_ptrs, ctypes.c_void_p),
                           ctypes.cast(out_ptrs, ctypes.c_void_p), self._arena_ptr())
        if status != 0:
            raise RuntimeError(f"model_run_multi returned {status}")
        return tuple(outs)

    def __deepcopy__(self, memo):
        return CModel(self.library_path, self.inputs, self.outputs,
                      self._arena.numel() - _ALIGN)


class NpuRunner:
    """Runs the host graph: quantize in Python, the C model, then the float tail in Python.

    `c_source` holds the generated files (model.c, model.h, harness.c); `build_info` the
    facts of the build (arena and weight bytes, op count, build time, cache hit); `segment`
    the integer part as a GraphModule on reference kernels (what the C model computes)."""

    def __init__(self, host: fx.GraphModule, c_source: dict, build_info: dict,
                 harness_path: str | None = None, segment: fx.GraphModule | None = None):
        self.gm = host
        self.segment = segment
        self.c_source = dict(c_source)
        self.build_info = dict(build_info)
        self.harness_path = harness_path

    @property
    def c_model(self) -> CModel:
        return self.gm.get_submodule("npu")

    SAVED_FACTS = ("arena_bytes", "naive_activation_bytes", "weight_bytes", "op_count",
                   "kernel_count", "host_ops", "segment_scalars")

    def library_bytes(self) -> bytes:
        """What an artifact keeps of the C model: its source files, its tensors and the
        facts that do not depend on the build (loading compiles the C again, gcc only)."""
        model = self.c_model
        blob = {"files": self.c_source, "arena_bytes": self.build_info["arena_bytes"],
                "inputs": [dataclasses.asdict(t) for t in model.inputs],
                "outputs": [dataclasses.asdict(t) for t in model.outputs],
                "facts": {k: self.build_info[k] for k in self.SAVED_FACTS
                          if k in self.build_info}}
        return json.dumps(blob, sort_keys=True).encode()

    def __call__(self, *args):
        with torch.no_grad():
            return self.gm(*args)
