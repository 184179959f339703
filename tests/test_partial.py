"""compile(..., partial=True): capturable submodules compiled, the rest eager, with coverage."""
import warnings

import pytest
import torch
from torch import nn

import qcompile
from qcompile.partial_compile import PartialModel

warnings.filterwarnings("ignore", category=qcompile.QCompileWarning)


class Gate(nn.Module):
    """Data-dependent Python control flow: torch.export cannot capture it."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(16))

    def forward(self, x):
        if x.sum() > 0:
            return x * self.scale
        return -x


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16))
        self.gate = Gate()
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.gate(self.encoder(x)))


@pytest.fixture(scope="module")
def partial_model():
    torch.manual_seed(0)
    model = Net().eval()
    calibration = [torch.randn(4, 8) for _ in range(4)]
    compiled = qcompile.compile(model, example_inputs=(calibration[0],),
                                calibration_data=calibration, partial=True)
    return model, compiled


def test_whole_model_capture_fails_without_partial():
    with pytest.raises(qcompile.CaptureError):
        qcompile.compile(Net().eval(), example_inputs=(torch.randn(4, 8),))


def test_capturable_parts_compiled_rest_eager(partial_model):
    model, compiled = partial_model
    assert isinstance(compiled, PartialModel)
    assert set(compiled.parts) == {"encoder", "head"}
    eager = {part.path: part for part in compiled.report.eager}
    assert set(eager) == {"gate"}
    assert "test_partial.py" in (eager["gate"].source or "")
    x = torch.randn(6, 8)
    with torch.no_grad():
        assert qcompile.instruments.sqnr_db(model(x), compiled(x)) > 20


def test_coverage_counts_parameters_and_flops(partial_model):
    model, compiled = partial_model
    report = compiled.report
    gate_params = sum(p.numel() for p in model.gate.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert report.parameter_share == pytest.approx((total - gate_params) / total)
    assert 0.9 < report.flop_share <= 1.0
    text = str(report)
    assert "2 part(s) compiled" in text and "eager    gate" in text
    assert '"parameter_share"' in report.to_json()


def test_partial_model_cannot_be_saved_whole(partial_model, tmp_path):
    _, compiled = partial_model
    with pytest.raises(qcompile.ArtifactError, match="each compiled part"):
        compiled.save(str(tmp_path / "m.qcm"))
    compiled.parts["encoder"].save(str(tmp_path / "encoder.qcm"))


def test_fully_capturable_model_gives_a_normal_compiled_model():
    model = nn.Sequential(nn.Linear(8, 8)).eval()
    x = torch.randn(4, 8)
    compiled = qcompile.compile(model, example_inputs=(x,), calibration_data=[x], partial=True)
    assert isinstance(compiled, qcompile.CompiledModel)


def test_nothing_capturable_is_a_clear_error_not_an_empty_compile():
    with pytest.raises(qcompile.CaptureError, match="no submodule could be compiled") as info:
        qcompile.compile(Gate().eval(), example_inputs=(torch.randn(4, 16),), partial=True)
    assert "test_partial.py" in str(info.value)
