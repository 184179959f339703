"""CompiledModel <-> artifact file."""
from __future__ import annotations

import warnings

import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from ..capture import InputSpec
from ..errors import ArtifactError, BackendError, QCompileWarning
from ..graph_edit import constant_value
from .backend_library import library_entry, runner_for
from .container import read_container, write_container
from .graph_codec import decode_graph, encode_graph

_DTYPE_NAMES = {str(d).replace("torch.", ""): d for d in (torch.float32, torch.float64,
                torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int32,
                torch.int64, torch.bool)}


def _versions() -> dict:
    from .. import __version__
    return {"qcompile": __version__, "torch": torch.__version__}


def _specs(gm: fx.GraphModule) -> dict:
    info = getattr(gm.graph._codegen, "pytree_info", None)
    if info is None:
        return {}
    return {"orig_args": list(info.orig_args), "in_spec": pytree.treespec_dumps(info.in_spec),
            "out_spec": pytree.treespec_dumps(info.out_spec) if info.out_spec else None}


def save_compiled(cm, path: str) -> None:
    gm = cm.graph
    tensors = {}
    for node in gm.graph.find_nodes(op="get_attr"):
        value = constant_value(gm, node)
        if value is None:
            raise ArtifactError("get_attr of something that is not a tensor", node=node)
        tensors[node.target] = value
    header = {"versions": _versions(), "target": cm.target, "recipe": cm.recipe.name,
              "input_specs": [[s.name, str(s.dtype).replace("torch.", ""), list(s.shape)]
                              for s in cm.input_specs],
              "graph": encode_graph(gm), "pytree": _specs(gm),
              "report": cm.report.to_dict(deterministic=True)}
    library_header, library_tensors = library_entry(cm._runner)
    write_container(path, {**header, **library_header}, {**tensors, **library_tensors})


def _attach(root: torch.nn.Module, dotted: str, value: torch.Tensor) -> None:
    *path, leaf = dotted.split(".")
    module = root
    for part in path:
        if not hasattr(module, part):
            module.add_module(part, torch.nn.Module())
        module = getattr(module, part)
    module.register_buffer(leaf, value)


def _codegen(gm: fx.GraphModule, specs: dict) -> None:
    if not specs:
        return
    from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo
    in_spec = pytree.treespec_loads(specs["in_spec"])
    try:
        out_spec = pytree.treespec_loads(specs["out_spec"]) if specs["out_spec"] else None
    except Exception as err:  # noqa: BLE001 - an output type not importable here
        warnings.warn(f"qcompile: output structure cannot be rebuilt here ({err}); the loaded "
                      "model returns its outputs as a flat list", QCompileWarning, stacklevel=3)
        out_spec = None
    gm.graph._codegen = _PyTreeCodeGen(_PyTreeInfo(specs["orig_args"], in_spec, out_spec))
    gm.recompile()


def load_compiled(path: str):
    from ..compiled import CompiledModel
    from ..recipes import resolve_recipe
    from ..report import report_from_dict
    from ..targets import TARGETS
    header, tensors = read_container(path)
    library = {k: tensors.pop(k) for k in list(tensors) if k.startswith("__backend__.")}
    target = TARGETS.get(header.get("target"))
    if target is None or not target.availability()[0]:
        reason = target.availability()[1] if target else "unknown target"
        raise ArtifactError(f"{path} was built for target '{header.get('target')}', which "
                            f"cannot run here: {reason}")
    root = torch.nn.Module()
    for name, value in tensors.items():
        _attach(root, name, value)
    gm = fx.GraphModule(root, decode_graph(header["graph"]))
    _codegen(gm, header.get("pytree", {}))
    specs = tuple(InputSpec(n, _DTYPE_NAMES[d], tuple(shape)) for n, d, shape in header["input_specs"])
    examples = tuple(torch.zeros([2 if d is None else d for d in s.shape], dtype=s.dtype)
                     for s in specs)
    try:
        runner = runner_for(target.backend(), gm, header, library, examples, path)
    except BackendError as err:
        raise ArtifactError(f"{path} was built for target '{target.name}', which cannot run "
                            f"here: {err}") from err
    return CompiledModel(gm, runner, report_from_dict(header["report"]), target.name,
                         resolve_recipe(header["recipe"]), specs)
