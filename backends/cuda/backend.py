"""cuda-int8 backend: the lowered graph as an engine of hand-written CUDA kernels.

build() = plan (engine kernel or torch fallback per node, with reasons) -> tactics (timed on
the GPU, else heuristic; kept in a timing cache) -> NVRTC cubin for the architecture plus
compute_80 PTX (cached by source hash) -> an EngineRunner. Where it runs:
- on a GPU: kernels launched from the cubin (gpu.py);
- options={"emulate": True}: the same kernel source on the CPU (exact, slow; for tests);
- options={"arch": "sm_90"} without a GPU: a cross-build that saves and loads, and runs
  once loaded on that GPU.
Nodes without an engine kernel run their reference kernel in torch (on the host: this
project's torch is a CPU build), listed in the report with the reason.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompile.errors import BackendError
from qcompile.kernels import record_kernels
from qcompile.recipes import QuantOptions

from . import tactics as tactic_table
from .device import GpuProbe, check_arch, probe
from .engine import Engine
from .engine_kernels import GEMM_TILES, compile_engine, compile_engine_ptx
from .executors import CrossBuiltExecutor, EmulatedExecutor
from .memory_plan import engine_memory
from .plan import fallbacks, kernel_notes, plan_engine

BACKEND = "cuda"


class _EngineInterpreter(fx.Interpreter):
    """Runs the lowered graph; nodes the engine owns go to its executor."""

    def __init__(self, gm, engine: Engine, executor):
        super().__init__(gm)
        self.owned = {s.node: s for s in engine.steps if s.kernel is not None}
        self.engine, self.executor = engine, executor

    def run_node(self, n: fx.Node):
        step = self.owned.get(n.name)
        if step is None:
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        return self.executor.run(step, self.engine.tactics.get(n.name), tuple(args), kwargs)


class EngineRunner:
    def __init__(self, gm: fx.GraphModule, engine: Engine, executor, build_info: dict):
        self.gm, self.engine, self.executor = gm, engine, executor
        self.build_info = build_info

    def __call__(self, *args):
        with torch.no_grad():
            return _EngineInterpreter(self.gm, self.engine, self.executor).run(*args)

    def library_bytes(self) -> bytes:
        return self.engine.to_bytes()


def _versions() -> dict:
    from . import nvrtc
    return {"nvrtc": ".".join(map(str, nvrtc.nvrtc_version()))}


def _target_arch(options: QuantOptions, gpu: GpuProbe) -> str | None:
    if options.arch is not None:
        try:
            return check_arch(options.arch)
        except ValueError as err:
            raise BackendError(f"option arch: {err}") from None
    if gpu.present:
        return gpu.arch
    if options.emulate:
        return None
    raise BackendError(f"cuda-int8 needs a GPU to build for, and none is usable here "
                       f"({gpu.reason}). Options: arch='sm_80'|'sm_86'|'sm_89'|'sm_90' builds "
                       "the engine without a GPU (tactics by heuristic, tuned on first use on "
                       "a GPU); emulate=True runs its kernels on the CPU (exact, slow)")


def _choose_tactics(steps, arch, options, timer) -> dict[str, str]:
    from .nvrtc import default_cache_dir
    directory = None if not options.cache else (options.cache_dir or default_cache_dir())
    cache = tactic_table.TimingCache(directory, arch or "emulated")
    chosen = {s.node: tactic_table.choose(s.gemm, cache, timer).tile
              for s in steps if s.kernel == "gemm_int8"}
    try:
        cache.save()
    except OSError:
        pass                                  # an unwritable cache only costs a retune
    return chosen


def _executor(engine: Engine, options: QuantOptions, gpu: GpuProbe):
    if options.emulate:
        return EmulatedExecutor()
    if gpu.present and gpu.arch == engine.arch:
        from .gpu import GpuExecutor
        return GpuExecutor(engine.cubin)
    return CrossBuiltExecutor(engine.arch, gpu.reason or f"this GPU is {gpu.arch}")


def _kernel_names(gm: fx.GraphModule, engine: Engine) -> None:
    by_node = {s.node: s for s in engine.steps}

    def name_of(node):
        step = by_node.get(node.name)
        if step is None or step.kernel is None:
            return f"torch:{getattr(node.target, '__name__', node.target)} (fallback)"
        tile = engine.tactics.get(node.name)
        return GEMM_TILES[tile] if step.kernel == "gemm_int8" and tile else step.kernel
    record_kernels(gm, BACKEND, name_of)


def _info(engine: Engine, gm: fx.GraphModule, executor, options) -> dict:
    return {"arch": engine.arch or "emulated", "executor": executor.name,
            "tactics": dict(engine.tactics), "versions": dict(engine.versions),
            "fallbacks": fallbacks(engine.steps), "kernel_notes": kernel_notes(engine.steps),
            "memory": engine_memory(gm, engine.steps),
            "emulate": bool(options.emulate)}


def build(gm: fx.GraphModule, options=None, example_inputs=None) -> EngineRunner:
    """Plan, choose tactics, compile and wrap the engine for `gm` (see the module doc)."""
    options = options or QuantOptions()
    gpu = probe()
    arch = _target_arch(options, gpu)
    steps = plan_engine(gm, fallback=options.fallback)
    timer = None
    engine = Engine(arch, steps, versions=_versions())
    if arch is not None:
        engine.cubin = compile_engine(arch).cubin
        engine.ptx = compile_engine_ptx().ptx
    executor = _executor(engine, options, gpu)
    if gpu.present and gpu.arch == arch and not options.emulate:
        timer = executor.time_gemm
    engine.tactics = _choose_tactics(steps, arch, options, timer)
    _kernel_names(gm, engine)
    return EngineRunner(gm, engine, executor, _info(engine, gm, executor, options))


def load_library(gm: fx.GraphModule, data: bytes, build_info: dict) -> EngineRunner:
    """An engine saved in an artifact, ready to run where its architecture is present
    (BackendError for a GPU of another architecture)."""
    engine = Engine.from_bytes(data)
    gpu = probe()
    if gpu.present and engine.arch is not None and gpu.arch != engine.arch:
        raise BackendError(f"the engine was built for {engine.arch}; this GPU is {gpu.arch}")
    options = QuantOptions(emulate=engine.arch is None or bool(build_info.get("emulate")))
    executor = _executor(engine, options, gpu)
    _kernel_names(gm, engine)
    return EngineRunner(gm, engine, executor, _info(engine, gm, executor, options))
