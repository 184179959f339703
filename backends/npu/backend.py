"""npu-int8 backend: the integer part of a lowered graph as standalone C99.

build() = split the graph (quantize of inputs and the float tail stay on the host, run by
the reference kernels) -> the integer part as a legalized Relax module (cpu-int8's
converters, generic path, static shapes) -> one plain C kernel per PrimFunc (c_kernels.py)
-> the driver with constants and a planned activation arena (driver.py, arena.py) -> gcc
(cached by source hash) -> a runner that calls the library through ctypes.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import torch
from torch import fx

from qcompile.errors import BackendError
from qcompile.graph_run import flat_inputs
from qcompile.kernels import record_kernels
from qcompile.recipes import QuantOptions

from . import acc_ops, arena, driver, gcc, split
from .c_kernels import kernels_c, lower_kernel
from .relax_graph import integer_module, main_inputs, read_main
from .runner import CModel, NpuRunner

BACKEND = "npu-c"


def _segment_examples(gm: fx.GraphModule, nodes: list, example_inputs: tuple) -> tuple:
    interp = fx.Interpreter(gm, garbage_collect_values=False)
    with torch.no_grad():
        interp.run(*flat_inputs(gm, example_inputs))
    return tuple(interp.env[n] for n in nodes)


def _lower_calls(mod, calls: list):
    """(steps, kernels in first-use order, origin per kernel name)."""
    kernels: dict = {}
    steps = []
    for call in calls:
        tensors = call.args + (call.out,)
        shapes = [(t.shape, t.dtype) for t in tensors]
        key = (call.func, tuple(shapes))
        if key not in kernels:
            kernels[key] = lower_kernel(mod[call.func], shapes, f"qc_k_{len(kernels)}",
                                        call.func)
        kernel = kernels[key]
        steps.append(driver.Step(kernel.name, tensors, kernel.workspaces))
    return steps, list(kernels.values()), {k.name: key[0] for key, k in kernels.items()}


@dataclass
class Generated:
    """The C model of a graph's integer segment: files, facts, the segment (its nodes in the
    graph, inputs, outputs, and as a GraphModule) and the C model's tensors."""

    files: dict
    facts: dict
    parts: tuple
    segment: fx.GraphModule
    inputs: list
    outputs: list


def generate(gm: fx.GraphModule, example_inputs: tuple,
             arena_limit: int | None = None) -> Generated:
    """Generate the C model of `gm`'s integer segment (no compiler involved)."""
    seg, ins, outs = split.partition(gm)
    values = _segment_examples(gm, ins, example_inputs)
    scalars = {n.name: int(v) for n, v in zip(ins, values) if split.is_scalar(n)}
    seg_gm = split.segment_module(gm, seg, ins, outs, scalars)
    mod = integer_module(seg_gm, tuple(v for n, v in zip(ins, values) if n.name not in scalars))
    calls, constants, outputs = read_main(mod)
    inputs = main_inputs(mod)
    steps, kernels, origins = _lower_calls(mod, calls)
    buffers = driver.arena_buffers(steps, outputs)
    plan = arena.plan(buffers, arena_limit)
    arena.check(buffers, plan)
    run = driver.run_function(steps, {k.name: k.param_dtypes for k in kernels}, outputs, plan)
    files = {"model.c": driver.model_c(kernels_c(kernels), constants, run, inputs, outputs,
                                       origins),
             "model.h": driver.header(inputs, outputs, plan.size),
             "harness.c": driver.harness_c(inputs, outputs)}
    # naive: every intermediate activation and workspace in a slot of its own
    facts = {"arena_bytes": plan.size, "naive_activation_bytes": plan.naive,
             "weight_bytes": int(sum(c.nbytes for c in constants)), "op_count": len(steps),
             "kernel_count": len(kernels), "host_ops": _host_ops(gm, seg),
             "segment_scalars": scalars}
    return Generated(files, facts, (seg, ins, outs), seg_gm, inputs, outputs)


def _host_ops(gm: fx.GraphModule, seg: list) -> list:
    members = set(seg)
    return [n.name for n in gm.graph.nodes
            if n.op == "call_function" and n not in members]


def _kernel_name(in_c: set, split_names: list):
    def name_of(node: fx.Node) -> str:
        op = getattr(node.target, "_opname", getattr(node.target, "__name__", str(node.target)))
        if node.name in split_names:
            return f"{BACKEND}:{op}.accumulator+reference:scale"
        return f"{BACKEND}:{op}" if node.name in in_c else f"reference:{op}"
    return name_of


def build(gm: fx.GraphModule, options=None, example_inputs: tuple | None = None) -> NpuRunner:
    """Generate, build and load the C model of `gm` (shapes fixed to `example_inputs`)."""
    if example_inputs is None:
        raise BackendError("the npu-int8 backend needs example inputs to build (its C model "
                           "has static shapes)")
    options = options or QuantOptions()
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    work = copy.deepcopy(gm)
    split_names = acc_ops.split_float_out(work)
    gen = generate(work, example_inputs, options.arena_limit)
    from ..tvm.build_cache import cache_root
    built = gcc.build(gen.files, cache_root(options.cache_dir) if options.cache else None)
    model = CModel(built.library, gen.inputs, gen.outputs, gen.facts["arena_bytes"])
    seg, ins, outs = gen.parts
    host = split.host_module(work, seg, ins, outs, model)
    facts = dict(gen.facts, c_build_seconds=built.seconds, cached=built.cached,
                 library=str(built.library), cflags=" ".join(gcc.CFLAGS))
    record_kernels(gm, BACKEND, _kernel_name({n.name for n in seg}, split_names))
    return NpuRunner(host, gen.files, facts, str(built.harness), gen.segment)


def load_library(gm: fx.GraphModule, data: bytes, build_info: dict) -> NpuRunner:
    """The C model saved in an artifact, built again with gcc (no TVM involved)."""
    from ..tvm.build_cache import cache_root
    from .relax_graph import Tensor
    blob = json.loads(data)
    tensors = {side: [Tensor(t["kind"], t["key"], tuple(t["shape"]), t["dtype"])
                      for t in blob[side]] for side in ("inputs", "outputs")}
    built = gcc.build(blob["files"], cache_root(None))
    model = CModel(built.library, tensors["inputs"], tensors["outputs"], blob["arena_bytes"])
    work = copy.deepcopy(gm)
    split_names = acc_ops.split_float_out(work)
    seg, ins, outs = split.partition(work)
    host = split.host_module(work, seg, ins, outs, model)
    facts = dict(blob["facts"], c_build_seconds=built.seconds, cached=built.cached,
                 library=str(built.library), cflags=" ".join(gcc.CFLAGS))
    record_kernels(gm, BACKEND, _kernel_name({n.name for n in seg}, split_names))
    return NpuRunner(host, blob["files"], facts, str(built.harness),
                     split.segment_module(work, seg, ins, outs,
                                          blob["facts"].get("segment_scalars")))
