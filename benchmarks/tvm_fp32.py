"""TVM fp32 of the float model: TVM's torch importer, the same default schedules and LLVM
target as cpu-int8 (qcompile's relax pipeline), no quantization. A contender row of cpu.py."""
from __future__ import annotations

import copy
import warnings

import torch


def _outputs(result) -> tuple:
    if hasattr(result, "shape"):
        return (torch.from_dlpack(result),)
    return tuple(t for r in result for t in _outputs(r))


def tvm_fp32(w, threads: int):
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from qcompile.backends.tvm.cpu_features import choose_path, llvm_target
    from qcompile.backends.tvm.schedule import relax_pipeline
    model = copy.deepcopy(w.model).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, tuple(w.inputs), strict=False)
    mod = from_exported_program(program)
    target = llvm_target(choose_path())
    vm = relax.VirtualMachine(tvm.compile(mod, target=target,
                                          relax_pipeline=relax_pipeline(target)), tvm.cpu())

    def run(*inputs):
        flat = [tvm.runtime.from_dlpack(t.contiguous()) for t in inputs]
        outs = _outputs(vm["main"](*flat))
        return outs[0] if len(outs) == 1 else outs
    return run, "TVM 0.27 torch importer, qcompile's default CPU schedules, same LLVM target, fixed shapes"
