"""Lowered fx graph -> Relax IRModule: TVM's torch importer for the float ops, the
converters of relax_ops*.py for the qcompile integer ops."""
from __future__ import annotations

import contextvars
import warnings

import torch
import torch.fx as fx

from qcompile.errors import BackendError
from qcompile.op_kinds import is_qcompile_op

from . import gemm_kernels
from . import relax_ops as ops
from . import relax_ops_integer as integer
from . import relax_ops_pool as pool

_CONVERTERS = {
    "quantize.default": ops._quantize, "dequantize.default": ops._dequantize,
    "requantize.default": ops._requantize, "qlinear.default": ops._qlinear,
    "qlinear_f32.default": ops._qlinear_f32, "qconv2d.default": ops._qconv2d,
    "qconv2d_f32.default": ops._qconv2d_f32, "qmatmul.default": ops._qmatmul,
    "qmatmul_f32.default": ops._qmatmul_f32, "qadd.default": ops._qadd,
    "qmax_pool2d.default": pool._qmax_pool2d, "qavg_pool2d.default": pool._qavg_pool2d,
    "qmean.default": pool._qmean, "qcat.default": pool._qcat, "qclamp.default": pool._qclamp,
    "qlinear_dynamic.default": pool._qlinear_dynamic,
    **integer.CONVERTERS,
}


_LOWERED: contextvars.ContextVar = contextvars.ContextVar("qcompile_tvm_lowered", default={})


def _naming_failures(name: str, converter):
    """The converter, with any failure inside TVM raised as BackendError naming the node of
    the lowered graph (and so the user's source line) whose op was being built."""
    def convert(node, importer):
        try:
            return converter(node, importer)
        except BackendError:
            raise
        except Exception as err:  # noqa: BLE001 - TVM's errors, made typed and located
            first = str(err).splitlines()[0] if str(err) else ""
            raise BackendError(f"TVM failed to build {name.split('.')[0]}: "
                               f"{type(err).__name__}: {first}",
                               node=_LOWERED.get().get(node.name, node)) from err
    return convert


CONVERTERS = {name: _naming_failures(name, fn) for name, fn in _CONVERTERS.items()}


def check_supported(gm: fx.GraphModule) -> None:
    for node in gm.graph.nodes:
        if is_qcompile_op(node) and f"{node.target._opname}.default" not in CONVERTERS:
            raise BackendError(f"no TVM lowering for {node.target} on target cpu-int8 (it runs on "
                               "target 'reference'; keep the layer float with keep_float)",
                               node=node)


def _export(gm: fx.GraphModule, example_inputs: tuple, dynamic_batch: bool = True):
    if not dynamic_batch:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(gm, tuple(example_inputs), strict=False)
    auto = torch.export.Dim.AUTO
    dims = tuple({0: auto} if isinstance(a, torch.Tensor) and a.dim() > 0 else None
                 for a in example_inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.export.export(gm, example_inputs, dynamic_shapes=dims, strict=False)
        except Exception:  # noqa: BLE001 - a fixed batch is the fallback
            return torch.export.export(gm, example_inputs, strict=False)


def _keep_node_names(gm: fx.GraphModule, program) -> None:
    """Give the exported integer ops the lowered graph's node names (export renames them after
    their op), so kernels are named after the node they compute (`gemm_<node>`)."""
    ours = [n for n in gm.graph.nodes if is_qcompile_op(n)]
    theirs = [n for n in program.graph.nodes if is_qcompile_op(n)]
    if [n.target for n in ours] != [n.target for n in theirs]:
        return
    for mine, exported in zip(ours, theirs):
        if exported.name != mine.name:
            exported._rename(mine.name)


def _bound_values(program) -> dict:
    """Relax Var name -> torch tensor for the parameters, buffers and constants the importer
    binds after translation (the converters need them as values: packed GEMM weights)."""
    values = dict(program.named_parameters())
    values.update(program.named_buffers())
    values.update(program.constants)
    out = {}
    for spec in program.graph_signature.input_specs:
        if spec.target in values and isinstance(values[spec.target], torch.Tensor):
            out[spec.arg.name] = values[spec.target]
    return out


def to_relax(gm: fx.GraphModule, example_inputs: tuple, *, dynamic_batch: bool = True,
             extra_converters: dict | None = None):
    """The Relax IRModule (function "main") computing the lowered graph: the batch dimension
    symbolic unless `dynamic_batch` is False; `extra_converters` (op name -> converter) add
    to or replace the integer ops' converters (a backend's own forms of some ops)."""
    from tvm.relax.frontend.torch import from_exported_program
    check_supported(gm)
    program = _export(gm, example_inputs, dynamic_batch).run_decompositions()
    _keep_node_names(gm, program)
    token = _LOWERED.set({n.name: n for n in gm.graph.nodes})
    try:
        with gemm_kernels.bound_constants(_bound_values(program)):
            return from_exported_program(program,
                                         custom_convert_map={**CONVERTERS,
                                                             **(extra_converters or {})},
                                         run_ep_decomposition=False)
    except BackendError:
        raise
    except Exception as err:
        raise BackendError(f"TVM could not import the lowered graph: {type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}") from err
    finally:
        _LOWERED.reset(token)
