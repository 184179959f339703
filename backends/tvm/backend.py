"""cpu-int8 backend: the lowered graph as one TVM-compiled native library, run by Relax's VM.

build() = tune (within the options' budget; measurements persist in the tuning database) ->
look the library up in the on-disk cache (key: graph, constants, shapes, ISA path, target,
tiles, versions) -> compile and store it on a miss -> load it into a Relax VM. A saved
artifact carries the library itself (`TvmRunner.library_bytes`, `load_library`), so loading
on a machine with the same TVM and CPU path needs no compile.
"""
from __future__ import annotations

import warnings

import torch.fx as fx

from qcompile.errors import BackendError, QCompileWarning
from qcompile.recipes import QuantOptions

from . import tiles as tile_tables
from .build_cache import (LibraryCache, cache_root, export_bytes, library_key,
                          toolchain_versions)
from .cpu_features import PATHS, choose_path, cpu_identity, detect, limited, llvm_target
from .kernel_names import mark_kernels
from .relax_convert import check_supported, to_relax
from .runner import TvmRunner, runner_from_library
from .schedule import relax_pipeline
from .tune import tune_graph
from .tuning_db import TuningDatabase

BACKEND = "tvm-cpu"


def _compile(gm: fx.GraphModule, example_inputs: tuple, target, table: dict):
    import tvm
    with tile_tables.using(table):
        mod = to_relax(gm, example_inputs)
    try:
        return tvm.compile(mod, target=target, relax_pipeline=relax_pipeline(target))
    except Exception as err:
        raise BackendError(f"TVM failed to build the module: {type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}") from err


def _tile_table(gm: fx.GraphModule, path: str, options: QuantOptions) -> dict:
    root = cache_root(options.cache_dir) if options.cache else None
    db = TuningDatabase(root, cpu_identity(), toolchain_versions())
    return tune_graph(gm, path, db, trials=options.tune_trials, seconds=options.tune_seconds,
                      rpc=options.tune_rpc, progress=options.progress)


def _exported(executable) -> bytes | None:
    """The executable as shared-library bytes; None if it cannot be exported here (no C
    compiler to link): the model then runs from memory."""
    try:
        return export_bytes(executable)
    except Exception as err:  # noqa: BLE001 - export needs a C compiler
        warnings.warn(f"qcompile: could not export the compiled library ({type(err).__name__}: "
                      f"{err}); it runs from memory, is not cached and not saved with the model",
                      QCompileWarning, stacklevel=4)
        return None


def _store(cache: LibraryCache, key: str, data: bytes) -> None:
    try:
        cache.store(key, data)
    except OSError as err:
        warnings.warn(f"qcompile: could not write the library cache in {cache.dir} ({err}); "
                      "the library is not cached", QCompileWarning, stacklevel=4)


def _fresh_runner(gm, example_inputs, target, table, cache, key) -> TvmRunner:
    """Compile, export, cache (when there is a cache) and load."""
    executable = _compile(gm, example_inputs, target, table)
    data = _exported(executable)
    if data is None:
        return TvmRunner.from_executable(executable, gm)
    if cache is not None:
        _store(cache, key, data)
    return runner_from_library(data, gm)


def build(gm: fx.GraphModule, options=None, example_inputs: tuple | None = None) -> TvmRunner:
    """Compile `gm` with TVM for this CPU (features detected at run time), tuned and cached."""
    if example_inputs is None:
        raise BackendError("the TVM backend needs example inputs to build")
    options = options or QuantOptions()
    with limited(options.cpu_path):  # every kernel built below picks this path or lower
        return _build(gm, options, example_inputs)


def _build(gm: fx.GraphModule, options: QuantOptions, example_inputs: tuple) -> TvmRunner:
    check_supported(gm)
    path = choose_path()
    target = llvm_target(path)
    table = _tile_table(gm, path, options)
    key = library_key(gm, example_inputs, path, target, table)
    cache = LibraryCache(cache_root(options.cache_dir)) if options.cache else None
    hit = cache.lookup(key) if cache else None
    if hit is not None:
        runner = runner_from_library(hit.read_bytes(), gm)
    else:
        runner = _fresh_runner(gm, example_inputs, target, table, cache, key)
    runner.build_info = {"path": path, "key": key, "cached": hit is not None, "tiles": table,
                         "versions": toolchain_versions()}
    mark_kernels(gm, BACKEND, path, table)
    return runner


def _check_loadable(build_info: dict) -> None:
    path = build_info.get("path")
    if path not in PATHS or not detect().supports(path):
        raise BackendError(f"the library was built for cpu path {path!r}, which this CPU "
                           f"cannot run (it runs: {', '.join(detect().paths())})")
    saved, here = build_info.get("versions", {}), toolchain_versions()
    for name in ("tvm", "tvm_ffi"):
        if saved.get(name) != here[name]:
            raise BackendError(f"the library was built with {name} {saved.get(name)}; this "
                               f"machine has {here[name]}")


def load_library(gm: fx.GraphModule, data: bytes, build_info: dict) -> TvmRunner:
    """A runner from a library saved in an artifact (no compile); BackendError when the
    library cannot run here (another ISA path or TVM version)."""
    _check_loadable(build_info)
    runner = runner_from_library(data, gm)
    runner.build_info = dict(build_info)
    mark_kernels(gm, BACKEND, build_info.get("path", "?"), build_info.get("tiles", {}))
    return runner
