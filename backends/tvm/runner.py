"""Running a compiled cpu-int8 library: the Relax VM, the saved library's bytes, and a
per-kernel timing profile (which TIR function takes what share of the run time)."""
from __future__ import annotations

import os
import tempfile
import time
from collections import defaultdict

import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from qcompile.errors import BackendError
from qcompile.graph_run import flat_inputs


class TvmRunner:
    """Calls the compiled Relax `main` with the flattened inputs; rebuilds the outputs."""

    def __init__(self, vm, gm: fx.GraphModule, library: bytes | None = None):
        self.vm, self.gm, self.library = vm, gm, library
        info = getattr(gm.graph._codegen, "pytree_info", None)
        self.out_spec = info.out_spec if info is not None else None
        self.build_info: dict = {}

    @classmethod
    def from_executable(cls, executable, gm: fx.GraphModule) -> "TvmRunner":
        import tvm
        from tvm import relax
        return cls(relax.VirtualMachine(executable, tvm.cpu()), gm)

    def __call__(self, *args):
        import tvm
        flat = [tvm.runtime.from_dlpack(t.detach().contiguous()) for t in flat_inputs(self.gm, args)
                if isinstance(t, torch.Tensor)]
        result = self.vm["main"](*flat)
        outs = [torch.from_dlpack(r) for r in (result if _is_tuple(result) else [result])]
        if self.out_spec is None:
            return outs[0] if len(outs) == 1 else tuple(outs)
        return pytree.tree_unflatten(outs, self.out_spec)

    def library_bytes(self) -> bytes | None:
        """The compiled shared library (None when it could not be exported)."""
        return self.library

    def profile(self, *args, runs: int = 3) -> dict[str, dict]:
        """Run `runs` times timing every call the VM makes: function -> calls, seconds."""
        totals: dict[str, list] = defaultdict(lambda: [0, 0.0])
        started: list = []

        def instrument(func, symbol, before_run, ret_value, *call_args):
            if before_run:
                started.append(time.perf_counter())
            else:
                entry = totals[str(symbol)]
                entry[0] += 1
                entry[1] += time.perf_counter() - started.pop()
            return 0

        self.vm.set_instrument(instrument)
        try:
            for _ in range(runs):
                self(*args)
        finally:
            self.vm.set_instrument(None)
        return {name: {"calls": calls // runs, "seconds": secs / runs}
                for name, (calls, secs) in totals.items()}


def _is_tuple(value) -> bool:
    return not hasattr(value, "shape") and hasattr(value, "__len__")


def runner_from_library(data: bytes, gm: fx.GraphModule) -> TvmRunner:
    """Load a shared library (bytes of an exported Relax executable) into a VM.

    It is loaded from a private temporary copy, never from the cache file itself: the loader
    maps the file, and a cache file rewritten in place would crash the running model."""
    import tvm
    from tvm import relax
    fd, path = tempfile.mkstemp(suffix=".so", prefix="qcompile-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        module = tvm.runtime.load_module(path)
    except Exception as err:  # noqa: BLE001 - a library this machine cannot load
        raise BackendError(f"cannot load the compiled cpu-int8 library: {type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}") from err
    finally:
        os.unlink(path)
    return TvmRunner(relax.VirtualMachine(module, tvm.cpu()), gm, library=data)
