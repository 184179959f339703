"""Saved artifacts: round trip, determinism, and every way a file can be wrong."""
import os
import subprocess
import sys

import pytest
import torch

import qcompile
from qcompile.artifact import container


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return {"logits": self.fc(y.flatten(1)), "features": y}


def _compile():
    torch.manual_seed(0)
    model = Net().eval()
    calib = [torch.randn(2, 3, 8, 8) for _ in range(3)]
    return qcompile.compile(model, example_inputs=(calib[0],), calibration_data=calib)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("art") / "m.qcm")
    cm = _compile()
    cm.save(path)
    return cm, path


def test_round_trip_is_bit_identical(saved):
    cm, path = saved
    loaded = qcompile.load(path)
    x = torch.randn(3, 3, 8, 8)
    before, after = cm(x), loaded(x)
    assert set(after) == {"logits", "features"}
    assert torch.equal(before["logits"], after["logits"])
    assert torch.equal(before["features"], after["features"])
    assert loaded.report.totals == cm.report.totals
    assert loaded.target == "reference"


def test_two_compiles_give_identical_bytes(saved, tmp_path):
    _, path = saved
    again = str(tmp_path / "again.qcm")
    _compile().save(again)
    assert open(path, "rb").read() == open(again, "rb").read()


def test_loads_in_fresh_process_without_model_class(saved, tmp_path):
    _, path = saved
    script = (f"import torch, qcompile; m = qcompile.load({path!r}); "
              "print(m(torch.zeros(1, 3, 8, 8))['logits'].shape)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=str(tmp_path), check=True)
    assert "torch.Size([1, 5])" in out.stdout


def _mutated(path, tmp_path, edit):
    data = bytearray(open(path, "rb").read())
    edit(data)
    bad = str(tmp_path / "bad.qcm")
    with open(bad, "wb") as f:
        f.write(bytes(data))
    return bad


def test_corrupt_file_is_rejected(saved, tmp_path):
    _, path = saved

    def flip(data):
        data[len(data) // 2] ^= 0xFF
    with pytest.raises(qcompile.ArtifactError, match="corrupt or truncated"):
        qcompile.load(_mutated(path, tmp_path, flip))


def test_truncated_file_is_rejected(saved, tmp_path):
    _, path = saved
    with pytest.raises(qcompile.ArtifactError, match="corrupt or truncated"):
        qcompile.load(_mutated(path, tmp_path, lambda d: d.__delitem__(slice(-100, None))))


def test_newer_format_is_rejected(saved, tmp_path):
    _, path = saved

    def bump(data):
        data[len(container.MAGIC)] = container.FORMAT_VERSION + 1
    with pytest.raises(qcompile.ArtifactError, match="format version"):
        qcompile.load(_mutated(path, tmp_path, bump))


def test_not_an_artifact(tmp_path):
    path = tmp_path / "x.qcm"
    path.write_bytes(b"hello")
    with pytest.raises(qcompile.ArtifactError, match="not a qcompile artifact"):
        qcompile.load(str(path))
    with pytest.raises(qcompile.ArtifactError, match="cannot read"):
        qcompile.load(str(tmp_path / "missing.qcm"))


def test_target_this_machine_cannot_run(saved, tmp_path, monkeypatch):
    cm, _ = saved
    path = str(tmp_path / "cuda.qcm")
    monkeypatch.setattr(cm, "target", "cuda-int8")
    cm.save(path)
    with pytest.raises(qcompile.ArtifactError, match="cuda-int8"):
        qcompile.load(path)
    assert os.path.getsize(path) > 0


def test_fp8_model_round_trips(tmp_path):
    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.randn(4, 8)
    cm = qcompile.compile(model.eval(), example_inputs=(x,), calibration_data=[x], recipe="fp8")
    assert any("f8e4m3" in (r.output or "") for r in cm.report.nodes)
    cm.save(str(tmp_path / "fp8.qcm"))
    loaded = qcompile.load(str(tmp_path / "fp8.qcm"))
    assert torch.equal(loaded(x), cm(x))
