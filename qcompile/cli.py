"""The `qcompile` command line: compile, report, run, export-onnx, diff, targets, passes.

    qcompile compile model.py:build_model --example x.pt --calib calib.pt --out m.qcm
    qcompile report m.qcm [--json]
    qcompile run m.qcm --input x.pt [--out y.pt]
    qcompile export-onnx m.qcm m.onnx
    qcompile diff dumps_a/ dumps_b/
    qcompile targets
    qcompile passes

`main(argv)` returns the exit code (see EPILOG); `python -m qcompile.cli` runs it.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import traceback
import warnings

from .errors import QCompileError

EXIT_OK, EXIT_DIFFERENT, EXIT_USAGE, EXIT_ERROR, EXIT_UNEXPECTED = 0, 1, 2, 3, 4

EPILOG = """\
exit codes:
  0  success
  1  a difference was found (diff)
  2  usage error (bad command line)
  3  a qcompile error (bad input file, model that cannot be compiled, corrupt artifact, ...)
  4  an unexpected error (a bug or an error in the model's own code); --debug shows the traceback
"""


def _global_flags(defaults: bool) -> argparse.ArgumentParser:
    """--quiet and --debug, accepted before or after the command name."""
    parent = argparse.ArgumentParser(add_help=False)
    keep = {} if defaults else {"default": argparse.SUPPRESS}
    parent.add_argument("-q", "--quiet", action="store_true", **keep,
                        help="print only what was asked for (no report after compile, no progress)")
    parent.add_argument("--debug", action="store_true", **keep,
                        help="show the full traceback of an error")
    return parent


def _compile_args(sub, flags) -> None:
    p = sub.add_parser("compile", parents=[flags], help="compile a model and save the artifact",
                       description="Import FILE.py, call ATTR (a function returning an nn.Module, "
                       "or an nn.Module), compile it and save the artifact.")
    _model_args(p)
    p.add_argument("--out", metavar="M.qcm", help="where to save the compiled artifact")
    p.add_argument("--dump", metavar="DIR", help="write one graph dump per pass into DIR")


def _bisect_args(sub, flags) -> None:
    p = sub.add_parser("bisect", parents=[flags], help="name the pass whose output error jumps",
                       description="Compile pass by pass, comparing each stage's output with "
                       "the float model; name the first pass after which the output SQNR falls "
                       "by more than --threshold dB.")
    _model_args(p)
    p.add_argument("--threshold", type=float, default=3.0, help="dB (default 3)")
    p.add_argument("--sensitivity", action="store_true",
                   help="also rank the quantized layers (one compile per layer)")


def _model_args(p) -> None:
    p.add_argument("model", metavar="FILE.py:ATTR",
                   help="a Python file (or importable module) and, after the colon, a "
                        "function returning an nn.Module or an nn.Module in it")
    p.add_argument("--target", default="reference",
                   help="reference, cpu-int8, ... (default: reference; see `qcompile targets`)")
    p.add_argument("--example", required=True, metavar="X.pt",
                   help="example inputs saved with torch.save: a tensor or a tuple/list of tensors")
    p.add_argument("--calib", metavar="CALIB.pt",
                   help="calibration batches saved with torch.save: a list of batches "
                        "(each a tensor or a tuple of tensors); default: the example only")
    p.add_argument("--recipe", default="w8a8", help="w8a8, w8a8-dynamic, ... (default: w8a8)")
    p.add_argument("--pipeline", help="pipeline text (default: the target's pipeline)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a QuantOptions field, e.g. calibration=mse, keep_float_ops=add,cat, "
                        "calibration_options.p=99.99; may repeat")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qcompile", parents=[_global_flags(True)], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="qcompile: a quantizing compiler for PyTorch models.")
    flags = _global_flags(False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _compile_args(sub, flags)
    _bisect_args(sub, flags)
    p = sub.add_parser("report", parents=[flags], help="print the report saved in an artifact")
    p.add_argument("artifact", metavar="M.qcm")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p = sub.add_parser("run", parents=[flags], help="run an artifact on inputs from a .pt file")
    p.add_argument("artifact", metavar="M.qcm")
    p.add_argument("--input", required=True, metavar="X.pt",
                   help="inputs saved with torch.save: a tensor or a tuple/list of tensors")
    p.add_argument("--out", metavar="Y.pt", help="save the outputs with torch.save")
    p = sub.add_parser("export-onnx", parents=[flags],
                       help="write an artifact as an ONNX QDQ model",
                       description="Load the artifact and write its lowered graph as an ONNX "
                       "QDQ model (needs `pip install onnx`; see docs/onnx.md).")
    p.add_argument("artifact", metavar="M.qcm")
    p.add_argument("onnx", metavar="OUT.onnx")
    p = sub.add_parser("diff", parents=[flags], help="diff two dump directories, pass by pass",
                       epilog="exit code 0 when the dumps are identical, 1 when they differ")
    p.add_argument("dir_a", metavar="DUMPS_A")
    p.add_argument("dir_b", metavar="DUMPS_B")
    sub.add_parser("targets", parents=[flags], help="list the targets and whether they run here")
    sub.add_parser("passes", parents=[flags], help="list the registered passes, options and groups")
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = str(message).removeprefix("qcompile: ")
    kind = "" if issubclass(category, UserWarning) and category.__module__.startswith("qcompile") \
        else f" ({category.__name__})"
    print(f"warning{kind}: {text}", file=file or sys.stderr)


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the exit flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


def _dispatch(args) -> int:
    from . import cli_commands, cli_debug
    module = cli_debug if args.command == "bisect" else cli_commands
    return getattr(module, f"cmd_{args.command.replace('-', '_')}")(args)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code instead of exiting."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:        # --help (0) or a usage error (2), already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return _dispatch(args)
        except QCompileError as err:
            if args.debug:
                traceback.print_exc()
            print(f"error: {err}", file=sys.stderr)
            return EXIT_ERROR
        except BrokenPipeError:            # `qcompile diff a b | head`: stop quietly
            _silence_stdout()
            return 141
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
        except Exception as err:  # noqa: BLE001 - the last resort: one line, exit 4
            if args.debug:
                traceback.print_exc()
                return EXIT_UNEXPECTED
            first = (str(err).strip().splitlines() or [""])[0]
            print(f"error: unexpected {type(err).__name__}: {first} "
                  "(run again with --debug for the traceback)", file=sys.stderr)
            return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
