"""Build GEMM tile candidates and time them through TVM's meta_schedule runners.

The kernels are templates (gemm_tir.py): a candidate is one GemmSpec with a different register
tile, compiled here and timed by `LocalRunner` (a worker process on this machine) or
`RPCRunner` (machines registered with a TVM RPC tracker), on random operands of the shape the
layer sees. TVM's generic search does not find the exact int8 instructions, so what is searched
is the template's parameters, measured by TVM's own distributed runners.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from qcompile.errors import BackendError

from .gemm_layout import GemmSpec

REPEATS = 3


@dataclass(frozen=True)
class Workload:
    """One GEMM shape of the graph: M rows (from the example inputs) x N x K, a mode."""

    path: str
    n: int
    k: int
    mode: str
    m: int

    @property
    def ops(self) -> int:
        return 2 * self.m * self.n * self.k


def make_runner(rpc: str | None = None):
    """LocalRunner, or RPCRunner through the tracker at "host:port:key"."""
    from tvm.s_tir import meta_schedule as ms
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=REPEATS, min_repeat_ms=20)
    if rpc is None:
        return ms.runner.LocalRunner(timeout_sec=60, evaluator_config=evaluator)
    host, port, key = rpc.rsplit(":", 2)
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port), tracker_key=key,
                                 session_timeout_sec=60)
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1)


def _args_info(spec: GemmSpec, m: int) -> list:
    from tvm.s_tir import meta_schedule as ms
    tensor = ms.arg_info.TensorInfo
    x = tensor("int8", [m, spec.k])
    wp = tensor(spec.wdtype, [spec.nblk, spec.kq, spec.nb * spec.group])
    init = tensor("int32", [spec.np])
    if spec.mode == "int8":
        per_channel = [tensor("int64", [spec.np])] * 4  # off, mult, rnd, shift
        return [x, wp, init, *per_channel, tensor("int32", [3]), tensor("int8", [m, spec.n])]
    floats = [tensor("float32", [spec.np])] * 2  # scale, bias
    return [x, wp, init, *floats, tensor("float32", [m, spec.n])]


def _build(spec: GemmSpec, directory: str) -> str:
    """Compile the candidate and export it (tar of objects) for a runner to load."""
    import tvm

    from .cpu_features import llvm_target
    from .gemm_tir import kernel
    func = kernel(spec).with_attr("global_symbol", "main")
    exe = tvm.compile(tvm.IRModule({"main": func}), target=llvm_target(spec.path))
    path = os.path.join(directory, f"{spec.mode}_n{spec.n}_k{spec.k}_{spec.mr}x{spec.nv}.tar")
    exe.export_library(path)
    return path


def measure(runner, workload: Workload, tiles: list, directory: str) -> dict:
    """tile -> median seconds of one call at the workload's shape (failed builds left out)."""
    from tvm.s_tir import meta_schedule as ms
    inputs, built = [], []
    for tile in tiles:
        spec = GemmSpec(workload.path, workload.n, workload.k, workload.mode,
                        mr=tile[0], nv=tile[1])
        try:
            artifact = _build(spec, directory)
        except Exception as err:  # noqa: BLE001 - a candidate that does not build is skipped
            raise BackendError(f"tile {tile} for {workload} failed to build: "
                               f"{type(err).__name__}: {str(err).splitlines()[0]}") from err
        inputs.append(ms.runner.RunnerInput(artifact, "cpu", _args_info(spec, workload.m)))
        built.append(tile)
    times = {}
    for tile, future in zip(built, runner.run(inputs)):
        result = future.result()
        if result.error_msg is None and result.run_secs:
            secs = sorted(float(s) for s in result.run_secs)
            times[tile] = secs[len(secs) // 2]
    return times
