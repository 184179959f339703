"""The `qcompile` command line, run in-process through main([...]) (and once as a subprocess)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import types

import pytest
import torch

import qcompile
from qcompile import cli, cli_commands
from qcompile.cli import main

MODEL_PY = '''
import torch
import torch.nn as nn


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 8)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def build_model():
    torch.manual_seed(0)
    return MLP().eval()


model = build_model()
not_a_model = 42


def returns_int():
    return 7


def raises():
    raise ValueError("factory exploded")
'''


def _quiet_main(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A model file, example and calibration .pt files, and two compiles (mse and minmax)."""
    root = tmp_path_factory.mktemp("cli")
    p = types.SimpleNamespace(root=root, model=str(root / "model.py"), x=str(root / "x.pt"),
                              calib=str(root / "calib.pt"), m=str(root / "m.qcm"),
                              m2=str(root / "m2.qcm"), d1=str(root / "d1"), d2=str(root / "d2"))
    (root / "model.py").write_text(MODEL_PY)
    g = torch.Generator().manual_seed(1)
    torch.save(torch.randn(4, 16, generator=g), p.x)
    torch.save([torch.randn(4, 16, generator=g) for _ in range(3)], p.calib)
    common = ["--example", p.x, "--calib", p.calib, "--target", "reference", "--recipe", "w8a8"]
    p.code1, p.out1 = _quiet_main(["compile", f"{p.model}:build_model", *common,
                                   "--option", "calibration=mse", "--out", p.m,
                                   "--dump", p.d1, "--quiet"])
    p.code2, p.out2 = _quiet_main(["compile", f"{p.model}:model", *common,
                                   "--option", "calibration=minmax", "--option", "numerics=true",
                                   "--out", p.m2, "--dump", p.d2])
    return p


def test_compile_end_to_end(ws):
    assert ws.code1 == 0 and ws.out1 == ""          # --quiet after the command name
    assert os.path.isfile(ws.m) and os.path.isfile(os.path.join(ws.d1, "final.txt"))
    assert ws.code2 == 0
    assert "qcompile report: target=reference recipe=w8a8" in ws.out2
    assert f"saved {ws.m2}" in ws.out2
    cm = qcompile.load(ws.m)
    assert cm.target == "reference" and cm(torch.randn(4, 16)).shape == (4, 8)


def test_report_text_and_json(ws, capsys):
    assert main(["report", ws.m]) == 0
    assert "qcompile report: target=reference recipe=w8a8" in capsys.readouterr().out
    assert main(["report", ws.m, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["target"] == "reference" and data["totals"]["ops_quantized"] == 2


def test_run_prints_and_saves(ws, capsys, tmp_path):
    assert main(["run", ws.m, "--input", ws.x]) == 0
    assert capsys.readouterr().out.strip() == "output 0: float32[4, 8]"
    y = str(tmp_path / "y.pt")
    assert main(["--quiet", "run", ws.m, "--input", ws.x, "--out", y]) == 0
    assert capsys.readouterr().out == ""
    saved = torch.load(y, weights_only=True)
    assert torch.equal(saved, qcompile.load(ws.m)(torch.load(ws.x, weights_only=True)))


def test_diff_identical_and_different(ws, capsys, tmp_path):
    same = str(tmp_path / "same")
    shutil.copytree(ws.d1, same)
    assert main(["diff", ws.d1, same]) == 0
    assert capsys.readouterr().out.startswith("dumps identical: ")
    assert main(["diff", ws.d1, ws.d2]) == 1
    out = capsys.readouterr().out
    names = qcompile.Pipeline.parse(qcompile.default_pipeline("reference")).names()
    calibrate = f"{names.index('calibrate') + 1:03d}-calibrate.txt"
    assert f"--- {os.path.join(ws.d1, calibrate)}" in out
    assert ":mse" in out and ":minmax" in out and "dumps differ" in out


def test_diff_matches_by_pass_name(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for d, files in ((a, {"000-capture.txt": "x\n", "001-fuse.txt": "y\n", "002-gone.txt": "z"}),
                     (b, {"000-capture.txt": "x\n", "001-new.txt": "w", "002-fuse.txt": "y\n"})):
        for name, text in files.items():
            (d / name).write_text(text)
    assert main(["diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "only in" in out and "002-gone.txt" in out and "001-new.txt" in out
    assert "fuse" not in out                           # 001-fuse vs 002-fuse: same pass, same text
    assert "1 only in" in out and "2 identical" in out


def test_targets_and_passes(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert all(t.name in out for t in qcompile.targets()) and "reference  available" in out
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    calibrate = out[out.index("  calibrate "):].splitlines()
    assert "method=None" in calibrate[1] and "p=None" in calibrate[2]
    assert "groups:" in out and "canonicalize" in out


def test_option_parsing():
    assert cli_commands.parse_options([
        "calibration=percentile", "calibration_options.p=99.9", "numerics=false",
        "keep-float-ops=add,cat", "keep_float=[\"fc1\"]", "progress=none"]) == {
        "calibration": "percentile", "calibration_options": {"p": 99.9}, "numerics": False,
        "keep_float_ops": ["add", "cat"], "keep_float": ["fc1"], "progress": None}
    assert cli_commands.parse_value("3") == 3 and cli_commands.parse_value("2.5") == 2.5


def _error(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize("spec, message", [
    ("{dir}/missing.py:build_model", "missing.py does not exist"),
    ("{dir}/model.py", "bad model spec"),
    ("{dir}/model.py:", "bad model spec"),
    ("{dir}/model.py:nope", "has no attribute 'nope'"),
    ("{dir}/model.py:not_a_model", "not an nn.Module"),
    ("{dir}/model.py:returns_int", "returned a int"),
    ("{dir}/model.py:raises", "factory exploded"),
    ("{dir}/broken.py:build", "importing"),
    ("no_such_module_xyz:build", "cannot import module 'no_such_module_xyz'"),
])
def test_compile_bad_model_spec(ws, capsys, spec, message):
    (ws.root / "broken.py").write_text("def build(:\n")
    code, err = _error(["compile", spec.format(dir=ws.root), "--example", ws.x], capsys)
    assert code == 3 and err.startswith("error: ") and message in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("extra, message", [
    (["--option", "bogus=1"], "unknown option 'bogus'"),
    (["--option", "calibration"], "expected KEY=VALUE"),
    (["--option", "calibration=nonsense"], "unknown calibration method 'nonsense'"),
    (["--recipe", "w3a3"], "unknown recipe 'w3a3'"),
    (["--target", "tpu"], "unknown target 'tpu'"),
])
def test_compile_bad_options(ws, capsys, extra, message):
    code, err = _error(["compile", f"{ws.model}:build_model", "--example", ws.x, *extra], capsys)
    assert code == 3 and message in err, err


def test_bad_tensor_files(ws, capsys, tmp_path):
    text = tmp_path / "junk.pt"
    text.write_text("not a tensor file")
    as_dict = str(tmp_path / "dict.pt")
    torch.save({"x": torch.zeros(4, 16)}, as_dict)
    model = f"{ws.model}:build_model"
    for argv, message in [
            (["compile", model, "--example", str(tmp_path / "none.pt")], "example file"),
            (["compile", model, "--example", str(text)], "cannot read example file"),
            (["compile", model, "--example", ws.x, "--calib", ws.x], "expected a non-empty list"),
            (["run", ws.m, "--input", as_dict], "holds a dict; expected a tensor"),
            (["run", ws.m, "--input", ws.calib], "expected 1 input tensor(s)")]:
        code, err = _error(argv, capsys)
        assert code == 3 and message in err, err


def test_bad_artifacts(ws, capsys, tmp_path):
    corrupt = tmp_path / "corrupt.qcm"
    raw = bytearray(open(ws.m, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(raw))
    (tmp_path / "text.qcm").write_text("hello")
    for argv, message in [(["report", str(corrupt)], "checksum mismatch"),
                          (["run", str(corrupt), "--input", ws.x], "checksum mismatch"),
                          (["report", str(tmp_path / "text.qcm")], "not a qcompile artifact"),
                          (["report", str(tmp_path / "absent.qcm")], "cannot read artifact"),
                          (["diff", str(tmp_path / "nodir"), ws.d1], "does not exist"),
                          (["diff", str(tmp_path), ws.d1], "holds no dump files"),
                          (["run", ws.m, "--input", ws.x, "--out", str(tmp_path / "no" / "y.pt")],
                           "directory"),
                          (["compile", f"{ws.model}:build_model", "--example", ws.x, "--out",
                            str(tmp_path / "no" / "m.qcm")], "does not exist")]:
        code, err = _error(argv, capsys)
        assert code == 3 and message in err and "Traceback" not in err, err


def test_usage_errors_and_help(capsys):
    assert main([]) == 2
    assert main(["compile"]) == 2
    assert main(["frobnicate"]) == 2
    capsys.readouterr()
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out and "4  an unexpected error" in out


def test_unexpected_error_and_debug(monkeypatch, capsys):
    def boom(args):
        raise RuntimeError("boom\nsecond line")
    monkeypatch.setattr(cli_commands, "cmd_targets", boom)
    code, err = _error(["targets"], capsys)
    assert code == 4 and err.strip() == ("error: unexpected RuntimeError: boom "
                                         "(run again with --debug for the traceback)")
    code, err = _error(["--debug", "targets"], capsys)
    assert code == 4 and "Traceback" in err and "boom" in err


def test_module_entry_point():
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(cli.__file__))}
    done = subprocess.run([sys.executable, "-m", "qcompile.cli", "targets"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "reference" in done.stdout and "available" in done.stdout


def test_bisect_names_the_quantizing_pass(ws, capsys):
    assert main(["bisect", f"{ws.model}:build_model", "--example", ws.x, "--calib", ws.calib,
                 "--sensitivity"]) == 0
    out = capsys.readouterr().out
    assert "first pass whose output error jumps: insert-qdq" in out
    assert "layers ranked by output SQNR" in out


def test_export_onnx_writes_a_runnable_model(ws, capsys, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = str(tmp_path / "m.onnx")
    assert main(["export-onnx", ws.m, out]) == 0
    assert capsys.readouterr().out.startswith(f"saved {out} (")
    x = torch.load(ws.x, weights_only=True)
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert y.shape == (4, 8)
    assert torch.allclose(torch.from_numpy(y), qcompile.load(ws.m)(x), atol=1e-2)
    code, err = _error(["export-onnx", ws.m, str(tmp_path / "no" / "m.onnx")], capsys)
    assert code == 3 and "does not exist" in err
