"""equalize: exact in float, balances channel ranges, skips ReLU6 and shared outputs."""
import copy
import warnings

import pytest
import torch
from torch import nn

import qcompile
from qcompile.graph_edit import constant_value
from qcompile.instruments import sqnr_db
from qcompile.recipes import resolve_recipe

warnings.filterwarnings("ignore", category=qcompile.QCompileWarning)
EQUALIZE = {"equalize": True}


class Chain(nn.Module):
    """conv -> act -> depthwise -> act -> conv 1x1 -> act -> mean -> linear (MobileNet-like)."""

    def __init__(self, act=torch.relu):
        super().__init__()
        self.expand = nn.Conv2d(3, 12, 3, padding=1)
        self.depthwise = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.project = nn.Conv2d(12, 16, 1)
        self.fc = nn.Linear(16, 10)
        self.act = act

    def forward(self, x):
        y = self.act(self.depthwise(self.act(self.expand(x))))
        return self.fc(self.act(self.project(y)).mean(dim=(2, 3)))


def uneven_chain(act=torch.relu):
    """Chain whose channel ranges differ by 100x, the function of an even one (ReLU moves
    positive factors through): channel i of expand and depthwise scaled, undone downstream."""
    torch.manual_seed(0)
    model = Chain(act).eval()
    factors = torch.logspace(-1, 1, 12)[torch.randperm(12)]
    with torch.no_grad():
        model.expand.weight *= factors[:, None, None, None]
        model.expand.bias *= factors
        model.depthwise.weight /= factors[:, None, None, None]
        back = torch.logspace(1, -1, 12)[torch.randperm(12)]
        model.depthwise.weight *= back[:, None, None, None]
        model.depthwise.bias *= back
        model.project.weight /= back[None, :, None, None]
    return model


def _batches(count=4, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 8, 8, generator=gen) for _ in range(count)]


def _weights_rounded(gm, per_channel: bool):
    """A copy of gm with every conv/linear weight rounded to symmetric int8."""
    gm = copy.deepcopy(gm)
    for node in gm.graph.nodes:
        if node.target in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default):
            w = constant_value(gm, node.args[1])
            rows = w.abs().reshape(w.shape[0], -1)
            amax = rows.amax(dim=1) if per_channel else rows.max().expand(w.shape[0])
            scale = (amax / 127).clamp(min=1e-12).reshape(-1, *[1] * (w.dim() - 1))
            w.data.copy_(torch.clamp(torch.round(w / scale), -127, 127) * scale)
    return gm


def test_equalization_is_exact_in_float_and_equalizes_the_ranges(qc):
    model, batches = uneven_chain(), _batches()
    gm, ctx = qc.context(model, batches[0], calibration=batches, options=EQUALIZE)
    gm, records = qc.apply(gm, ctx, "canonicalize,fuse,equalize")
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert sqnr_db(model(x), gm(x)) > 100
    assert records[-1].stats["pairs"] == 2          # expand-dw, dw-project (a mean before fc)
    convs = qc.calls(gm, qc.aten.conv2d.default)
    expand = qc.const(gm, convs[0].args[1]).abs().reshape(12, -1).amax(dim=1)
    dw = qc.const(gm, convs[1].args[1]).abs().reshape(12, -1).amax(dim=1)
    assert torch.allclose(expand, dw, rtol=0.05)   # r1_i == r2_i after equalization
    assert expand.max() / expand.min() < 10        # 100x spread before


def test_weight_rounding_error_shrinks(qc):
    model, batches = uneven_chain(), _batches()
    x = torch.cat(batches)
    scores = {}
    for enabled in (False, True):
        gm, _ = qc.run(model, batches[0], "canonicalize,fuse,equalize",
                       calibration=batches, options={"equalize": enabled})
        for per_channel in (False, True):
            with torch.no_grad():
                scores[enabled, per_channel] = sqnr_db(model(x), _weights_rounded(gm, per_channel)(x))
    assert scores[True, False] > scores[False, False] + 6      # per tensor
    assert scores[True, True] > scores[False, True] + 3        # per channel


def test_w8a8_output_improves_end_to_end():
    model, batches = uneven_chain(), _batches()
    x = torch.randn(4, 3, 8, 8)
    results = {}
    for enabled in (False, True):
        cm = qcompile.compile(model, example_inputs=(batches[0],), calibration_data=batches,
                              options={"equalize": enabled, "weight_calibration": "minmax"})
        with torch.no_grad():
            results[enabled] = sqnr_db(model(x), cm(x))
    assert results[True] > results[False] + 1


def test_pairs_through_relu6_are_skipped(qc):
    model, batches = uneven_chain(nn.functional.relu6), _batches()
    gm, ctx = qc.context(model, batches[0], calibration=batches, options=EQUALIZE)
    gm, records = qc.apply(gm, ctx, "canonicalize,fuse,equalize")
    assert records[-1].stats["skipped_relu6"] == 2
    assert records[-1].stats["pairs"] == 0 and records[-1].changed is False


class Branch(nn.Module):
    """One ReLU output read by two convolutions: no single consumer to equalize with."""

    def __init__(self):
        super().__init__()
        self.first, self.left, self.right = (nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1),
                                             nn.Conv2d(8, 4, 1))

    def forward(self, x):
        y = torch.relu(self.first(x))
        return self.left(y) + self.right(y)


def test_off_by_default(qc):
    model, batches = uneven_chain(), _batches()
    gm, ctx = qc.context(model, batches[0], calibration=batches)
    _, records = qc.apply(gm, ctx, "canonicalize,fuse,equalize")
    assert records[-1].changed is False


def test_shared_outputs_are_left_alone(qc):
    batches = _batches()
    gm, ctx = qc.context(Branch(), batches[0], calibration=batches, options=EQUALIZE)
    _, records = qc.apply(gm, ctx, "canonicalize,fuse,equalize")
    assert records[-1].stats["pairs"] == 0


def test_option_is_checked():
    with pytest.raises(qcompile.QCompileError, match="equalize"):
        resolve_recipe("w8a8", {"equalize": "yes"})
