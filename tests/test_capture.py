"""Capture: torch.export to an ATen fx graph, input specs, eval mode, errors at the user line."""
from __future__ import annotations

import inspect
import os
import re

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import qcompile
from qcompile.capture import InputSpec, capture, normalize_inputs

from tiny_models import MLP

aten = torch.ops.aten


class FixedBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(x.reshape(4, 16))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x, mask):
        return self.fc(x) * mask


class ItemBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        y = self.fc(x)
        if y.max().item() > 0.5:
            return y
        return y * 2


def test_captures_an_aten_graph_with_a_dynamic_batch():
    captured = capture(MLP().eval(), (torch.randn(4, 16),))
    gm = captured.graph_module
    assert isinstance(gm, fx.GraphModule)
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets == [aten.linear.default, aten.relu.default, aten.linear.default]
    assert not any(n.op == "call_module" for n in gm.graph.nodes)   # guard module dropped
    assert captured.input_specs == (InputSpec("x", torch.float32, (None, 16)),)
    assert captured.input_specs[0].describe() == "x: float32[*,16]"


def test_captured_graph_computes_the_model():
    model = MLP().eval()
    gm = capture(model, (torch.randn(4, 16),)).graph_module
    for batch in (2, 7):
        x = torch.randn(batch, 16)
        torch.testing.assert_close(gm(x), model(x))


def test_nodes_keep_module_paths_and_stack_traces():
    gm = capture(MLP().eval(), (torch.randn(4, 16),)).graph_module
    linear = next(n for n in gm.graph.nodes if n.target is aten.linear.default)
    assert "fc1" in str(linear.meta.get("nn_module_stack"))
    # the trace points at the user code that called the layer: MLP.forward's file
    assert os.path.basename(inspect.getsourcefile(MLP)) in (linear.meta.get("stack_trace") or "")


def test_fixed_batch_models_get_a_static_spec():
    captured = capture(FixedBatch().eval(), (torch.randn(4, 16),))
    assert captured.input_specs[0].shape == (4, 16)
    with pytest.warns(qcompile.QCompileWarning):
        cm = qcompile.compile(FixedBatch().eval(), example_inputs=(torch.randn(4, 16),))
    assert cm(torch.randn(4, 16)).shape == (4, 4)
    with pytest.raises(qcompile.InputError, match=r"float32\[4,16\]"):
        cm(torch.randn(5, 16))


def test_several_inputs_get_one_spec_each():
    captured = capture(TwoInputs().eval(), (torch.randn(3, 16), torch.ones(3, 4)))
    assert [s.name for s in captured.input_specs] == ["x", "mask"]
    assert all(s.dtype == torch.float32 for s in captured.input_specs)


def test_normalize_inputs():
    x = torch.randn(2)
    assert normalize_inputs(x) == (x,)
    assert normalize_inputs([x, x])[1] is x
    assert normalize_inputs((x,))[0] is x
    with pytest.raises(qcompile.CaptureError, match="required"):
        normalize_inputs(None)
    with pytest.raises(qcompile.CaptureError, match="dict"):
        normalize_inputs({"x": x})


def test_training_mode_is_restored_and_capture_uses_eval():
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.9), nn.BatchNorm1d(8)).train()
    with pytest.warns(qcompile.QCompileWarning, match="training mode"):
        captured = capture(model, (torch.randn(4, 8),))
    assert model.training and all(m.training for m in model.modules())
    for node in captured.graph_module.graph.nodes:
        if node.target is aten.dropout.default:
            assert node.args[2] is False                # dropout(x, p, train=False)
        assert node.target is not aten._native_batch_norm_legit_functional.default
    x = torch.randn(4, 8)
    torch.testing.assert_close(captured.graph_module(x), model.eval()(x))


def test_eval_model_captures_without_warning(recwarn):
    capture(MLP().eval(), (torch.randn(4, 16),))
    assert not [w for w in recwarn if issubclass(w.category, qcompile.QCompileWarning)]


def test_item_branch_error_points_at_the_user_line():
    lines, start = inspect.getsourcelines(ItemBranch.forward)
    line = start + next(i for i, text in enumerate(lines) if ".item() > 0.5" in text)
    with pytest.raises(qcompile.CaptureError) as info:
        capture(ItemBranch().eval(), (torch.randn(4, 16),))
    err = info.value
    assert err.source and err.source.startswith(__file__.rstrip("c"))
    assert re.search(rf":{line}(:|$)", err.source), err.source
    assert f"{os.path.basename(__file__)}:{line}" in str(err)
    assert isinstance(err.__cause__, Exception)


def test_not_a_module():
    with pytest.raises(qcompile.CaptureError, match="function"):
        capture(lambda x: x, (torch.randn(2),))


def test_failed_capture_prints_nothing_and_keeps_torch_output(capfd):
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            if float(x.sum()) > 0:
                return x * 2
            return x
    with pytest.raises(qcompile.CaptureError) as info:
        capture(DataDependent(), (torch.randn(2, 3),))
    out, err = capfd.readouterr()
    assert "def forward" not in out + err
    assert "def forward" in info.value.torch_output
