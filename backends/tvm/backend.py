"""cpu-int8 backend: the lowered graph as one TVM-compiled native module, run by Relax's VM."""
from __future__ import annotations

import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from qcompile.dump import op_name
from qcompile.errors import BackendError
from qcompile.kernels import record_kernels
from qcompile.graph_run import flat_inputs

from .cpu_features import choose_path, llvm_target
from .relax_convert import to_relax
from .schedule import relax_pipeline

BACKEND = "tvm-cpu"


class TvmRunner:
    """Calls the compiled Relax `main` with the flattened inputs; rebuilds the outputs."""

    def __init__(self, vm, gm: fx.GraphModule, device):
        self.vm, self.gm, self.device = vm, gm, device
        info = getattr(gm.graph._codegen, "pytree_info", None)
        self.out_spec = info.out_spec if info is not None else None

    def __call__(self, *args):
        import tvm
        flat = [tvm.runtime.from_dlpack(t.detach().contiguous()) for t in flat_inputs(self.gm, args)
                if isinstance(t, torch.Tensor)]
        result = self.vm["main"](*flat)
        outs = [torch.from_dlpack(r) for r in (result if _is_tuple(result) else [result])]
        if self.out_spec is None:
            return outs[0] if len(outs) == 1 else tuple(outs)
        return pytree.tree_unflatten(outs, self.out_spec)


def _is_tuple(value) -> bool:
    return not hasattr(value, "shape") and hasattr(value, "__len__")


def _mark_kernels(gm: fx.GraphModule, path: str) -> None:
    record_kernels(gm, BACKEND, lambda node: f"tvm-{path}:{op_name(node.target).split('.', 1)[1]}")


def build(gm: fx.GraphModule, options=None, example_inputs: tuple | None = None) -> TvmRunner:
    """Compile `gm` with TVM for this CPU (features detected at run time)."""
    import tvm
    from tvm import relax
    if example_inputs is None:
        raise BackendError("the TVM backend needs example inputs to build")
    mod = to_relax(gm, example_inputs)
    path = choose_path()
    try:
        target = llvm_target(path)
        executable = tvm.compile(mod, target=target, relax_pipeline=relax_pipeline(target))
    except Exception as err:
        raise BackendError(f"TVM failed to build the module: {type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}") from err
    device = tvm.cpu()
    _mark_kernels(gm, path)
    return TvmRunner(relax.VirtualMachine(executable, device), gm, device)
