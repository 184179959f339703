"""What each `qcompile` command does (the parser and exit codes are in cli.py)."""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import json
import os
import re
import sys
from contextlib import contextmanager

import torch
from torch.utils import _pytree as pytree

from .errors import InputError, QCompileError, RecipeError


class CommandError(QCompileError):
    """A command-line input that cannot be used: missing file, bad spec, unreadable .pt."""


# ---- loading the user's model and tensors -------------------------------------------------

@contextmanager
def _on_path(directory: str):
    sys.path.insert(0, directory)
    try:
        yield
    finally:
        if directory in sys.path:
            sys.path.remove(directory)


def _is_file_spec(path: str) -> bool:
    return path.endswith(".py") or os.sep in path or "/" in path


def _model_dir(spec: str) -> str:
    """The directory put on sys.path while the model is imported and compiled."""
    path = spec.rpartition(":")[0]
    return os.path.dirname(os.path.abspath(path)) if _is_file_spec(path) else os.getcwd()


def _import_file(path: str):
    name = "_qcompile_user_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CommandError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        sys.modules.pop(name, None)
        raise CommandError(f"importing {path} failed: {type(err).__name__}: {err} "
                           "(--debug shows the traceback)") from err
    return module


def _import_module(spec: str, where: str):
    if _is_file_spec(spec):
        if not os.path.isfile(spec):
            raise CommandError(f"model file {spec} does not exist")
        return _import_file(os.path.abspath(spec))
    try:
        return importlib.import_module(spec)
    except ImportError as err:
        raise CommandError(f"cannot import module '{spec}' named in '{where}': {err}") from err


def load_model(spec: str) -> torch.nn.Module:
    """`file.py:attr` or `package.module:attr`; attr is an nn.Module or a factory of one."""
    path, sep, attr = spec.rpartition(":")
    if not sep or not path or not attr or not all(p.isidentifier() for p in attr.split(".")):
        raise CommandError(f"bad model spec '{spec}': expected FILE.py:ATTR, e.g. "
                           "model.py:build_model")
    obj = _import_module(path, spec)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CommandError(f"'{path}' has no attribute '{attr}' (from '{spec}')")
        obj = getattr(obj, part)
    if isinstance(obj, torch.nn.Module):
        return obj
    if not callable(obj):
        raise CommandError(f"'{spec}' is a {type(obj).__name__}, not an nn.Module or a "
                           "function returning one")
    try:
        model = obj()
    except Exception as err:
        raise CommandError(f"calling {attr}() from '{path}' failed: {type(err).__name__}: "
                           f"{err} (--debug shows the traceback)") from err
    if not isinstance(model, torch.nn.Module):
        raise CommandError(f"{attr}() from '{path}' returned a {type(model).__name__}, "
                           "not an nn.Module")
    return model


def load_pt(path: str, what: str):
    if not os.path.isfile(path):
        raise CommandError(f"{what} file {path} does not exist")
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise CommandError(f"cannot read {what} file {path} (torch.load, weights_only=True): "
                           f"{type(err).__name__}: {first}") from err


def as_inputs(value, path: str, what: str) -> tuple:
    """A tensor or a tuple/list of tensors, as a tuple; anything else names the file."""
    if isinstance(value, torch.Tensor):
        return (value,)
    if isinstance(value, (tuple, list)) and value and \
            all(isinstance(v, torch.Tensor) for v in value):
        return tuple(value)
    raise InputError(f"{what} file {path} holds a {type(value).__name__}; expected a tensor "
                     "or a tuple/list of tensors")


def load_calibration(path: str) -> list[tuple]:
    value = load_pt(path, "calibration")
    if not isinstance(value, (list, tuple)) or not value:
        raise InputError(f"calibration file {path} holds a {type(value).__name__}; expected a "
                         "non-empty list of batches (each a tensor or a tuple of tensors)")
    return [as_inputs(batch, path, f"calibration batch {i} of the")
            for i, batch in enumerate(value)]


# ---- --option key=value --------------------------------------------------------------------

def parse_value(text: str):
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True, 'none' -> None, '[..]'/'{..}' -> JSON, else str."""
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.strip()[:1] in "[{":
        try:
            return json.loads(text)
        except ValueError as err:
            raise RecipeError(f"cannot parse option value {text!r} as JSON: {err}") from None
    return text


def parse_options(pairs: list[str]) -> dict:
    """Repeated KEY=VALUE into a QuantOptions dict; an unknown key names itself."""
    from .recipes import QuantOptions
    fields = {f.name for f in dataclasses.fields(QuantOptions)}
    options: dict = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise RecipeError(f"bad --option '{pair}': expected KEY=VALUE, e.g. calibration=mse")
        base, _, sub = key.partition(".")
        if base not in fields or (sub and base != "calibration_options"):
            raise RecipeError(f"unknown option '{key}' (from --option '{pair}'); valid: "
                              f"{', '.join(sorted(fields))}")
        value = parse_value(text)
        if sub:
            options.setdefault(base, {})[sub] = value
        elif base in ("keep_float", "keep_float_ops") and isinstance(value, str):
            options[base] = [v.strip() for v in value.split(",") if v.strip()]
        else:
            options[base] = value
    return options


# ---- the commands --------------------------------------------------------------------------

def check_out_dir(path: str | None, what: str) -> None:
    """Fail before a long compile or run, not after, when the output cannot be written."""
    folder = os.path.dirname(os.path.abspath(path)) if path else None
    if folder is not None and not os.path.isdir(folder):
        raise CommandError(f"cannot write {what} {path}: directory {folder} does not exist")


@contextmanager
def _writing(path: str, what: str):
    try:
        yield
    except OSError as err:
        raise CommandError(f"cannot write {what} {path}: {err}") from err


def cmd_compile(args) -> int:
    import qcompile
    check_out_dir(args.out, "the artifact")
    options = parse_options(args.option)
    if args.quiet:
        options.setdefault("progress", False)
    example = as_inputs(load_pt(args.example, "example"), args.example, "example")
    calibration = load_calibration(args.calib) if args.calib else None
    with _on_path(_model_dir(args.model)):
        model = load_model(args.model)
        cm = qcompile.compile(model, target=args.target, example_inputs=example,
                              calibration_data=calibration, recipe=args.recipe,
                              pipeline=args.pipeline, dump_dir=args.dump,
                              options=options or None)
    if args.out:
        with _writing(args.out, "the artifact"):
            cm.save(args.out)
    if not args.quiet:
        print(cm.report)
        if args.out:
            print(f"saved {args.out} ({os.path.getsize(args.out)} bytes)")
        if args.dump:
            print(f"dumps in {args.dump}")
    return 0


def cmd_report(args) -> int:
    # Read the report from the file without building the backend, so a report can be read
    # on a machine where the artifact's target does not run (cpu-int8 without TVM).
    from .artifact import read_container
    from .errors import ArtifactError
    from .report import report_from_dict
    header, _ = read_container(args.artifact)
    try:
        report = report_from_dict(header["report"])
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{args.artifact} has no readable report: {type(err).__name__}: "
                            f"{err}") from None
    print(report.to_json() if args.json else report)
    return 0


def describe_outputs(outputs) -> list[str]:
    leaves, _ = pytree.tree_flatten(outputs)
    lines = []
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, torch.Tensor):
            dtype = str(leaf.dtype).replace("torch.", "")
            lines.append(f"output {i}: {dtype}[{', '.join(map(str, leaf.shape))}]")
        else:
            lines.append(f"output {i}: {type(leaf).__name__} {leaf!r}")
    return lines


def cmd_run(args) -> int:
    import qcompile
    check_out_dir(args.out, "the outputs")
    inputs = as_inputs(load_pt(args.input, "input"), args.input, "input")
    cm = qcompile.load(args.artifact)
    with torch.no_grad():
        outputs = cm(*inputs)
    if args.out:
        with _writing(args.out, "the outputs"):
            torch.save(pytree.tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor)
                                       else t, outputs), args.out)
    if not args.quiet or not args.out:
        for line in describe_outputs(outputs):
            print(line)
        if args.out:
            print(f"saved {args.out}")
    return 0


def cmd_export_onnx(args) -> int:
    import qcompile
    check_out_dir(args.onnx, "the ONNX model")
    cm = qcompile.load(args.artifact)
    with _writing(args.onnx, "the ONNX model"):
        cm.export_onnx(args.onnx)
    if not args.quiet:
        print(f"saved {args.onnx} ({os.path.getsize(args.onnx)} bytes)")
    return 0


def cmd_targets(args) -> int:
    import qcompile
    for info in qcompile.targets():
        print(info)
    return 0


def _summary(info) -> str:
    """The docstring's first paragraph on one line (PassInfo.doc stops at the first newline)."""
    import inspect
    paragraph = (inspect.getdoc(info.fn) or info.doc or "").split("\n\n")[0]
    return " ".join(paragraph.split())


def cmd_passes(args) -> int:
    import qcompile
    from .registry import list_groups
    infos = qcompile.list_passes()
    width = max((len(p.name) for p in infos), default=0)
    print("passes:")
    for info in infos:
        print(f"  {info.name:{width}s}  {_summary(info)}")
        for option, default in info.options.items():
            print(f"  {'':{width}s}    {option}={default!r}")
    print("groups:")
    for name, members in list_groups().items():
        print(f"  {name:{width}s}  {','.join(members)}")
    return 0


# ---- diff of two dump directories ---------------------------------------------------------

_DUMP = re.compile(r"^(\d+)-(.+)\.txt$")


def dump_files(directory: str) -> dict[str, str]:
    """Pass name -> file name, in pass order; a repeated pass is 'name#2'; final.txt last."""
    if not os.path.isdir(directory):
        raise CommandError(f"dump directory {directory} does not exist or is not a directory")
    numbered = sorted((int(m.group(1)), m.group(2), name) for name in os.listdir(directory)
                      if (m := _DUMP.match(name)))
    files: dict[str, str] = {}
    seen: dict[str, int] = {}
    for _, pass_name, name in numbered:
        seen[pass_name] = seen.get(pass_name, 0) + 1
        files[pass_name if seen[pass_name] == 1 else f"{pass_name}#{seen[pass_name]}"] = name
    if os.path.isfile(os.path.join(directory, "final.txt")):
        files["final.txt"] = "final.txt"
    if not files:
        raise CommandError(f"{directory} holds no dump files (NNN-pass.txt); write them with "
                           "`qcompile compile --dump DIR` or compile(dump_dir=...)")
    return files


def _lines(directory: str, name: str) -> list[str]:
    with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as f:
        return f.read().splitlines()


def cmd_diff(args) -> int:
    a, b = dump_files(args.dir_a), dump_files(args.dir_b)
    keys = list(a) + [k for k in b if k not in a]
    if "final.txt" in keys:
        keys.append(keys.pop(keys.index("final.txt")))
    changed = only_a = only_b = same = 0
    for key in keys:
        if key not in b:
            only_a += 1
            print(f"only in {args.dir_a}: {a[key]}")
            continue
        if key not in a:
            only_b += 1
            print(f"only in {args.dir_b}: {b[key]}")
            continue
        old, new = _lines(args.dir_a, a[key]), _lines(args.dir_b, b[key])
        if old == new:
            same += 1
            continue
        changed += 1
        path_a, path_b = os.path.join(args.dir_a, a[key]), os.path.join(args.dir_b, b[key])
        if args.quiet:
            print(f"changed: {path_a} {path_b}")
        else:
            for line in difflib.unified_diff(old, new, path_a, path_b, lineterm=""):
                print(line)
    different = changed + only_a + only_b
    if not different:
        print(f"dumps identical: {same} file(s)")
        return 0
    print(f"dumps differ: {changed} changed, {only_a} only in {args.dir_a}, "
          f"{only_b} only in {args.dir_b}, {same} identical")
    return 1
