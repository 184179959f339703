"""observe: observer sites exactly where the recipe needs a calibrated range."""
import pytest
import torch
from torch import nn

import qcompile
from qcompile.facts import facts_of
from qcompile.passes.quantize.site import ObserverSite, observer_sites

pytestmark = pytest.mark.usefixtures("one_thread")

aten = torch.ops.aten
OBSERVE = "canonicalize,fuse,observe"


def observed(gm) -> list[str]:
    """Names of the values that have an observer site, in graph order."""
    return [site.value_name for _, site in observer_sites(gm)]


class ConvPoolLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 2 * 2, 5)

    def forward(self, x):
        y = torch.relu(self.conv(x.permute(0, 1, 3, 2)))
        y = nn.functional.max_pool2d(y, 2)
        return self.fc(y.view(y.shape[0], -1))


def test_inputs_observed_at_their_range_root(qc):
    gm, ctx = qc.context(ConvPoolLinear(), (torch.randn(1, 3, 4, 4),))
    gm, records = qc.apply(gm, ctx, OBSERVE)
    # conv reads permute(x): observed at x; fc reads view(max_pool(relu)): observed at relu
    assert observed(gm) == ["x", "relu"]
    assert records[-1].stats == {"anchors": 2, "observed": 2}
    for node, site in observer_sites(gm):
        assert isinstance(site, ObserverSite) and not site.enabled
        assert facts_of(node).tensor == facts_of(node.args[0]).tensor
    for op in (aten.max_pool2d.default, aten.view.default, aten.permute.default):
        (node,) = qc.calls(gm, op)
        assert all(u.op != "call_module" for u in node.users), op   # no site after them
    (permute,) = qc.calls(gm, aten.permute.default)
    assert permute.args[0].op == "call_module"                 # reads x through its site


def test_observers_are_identities(qc):
    model = ConvPoolLinear().eval()
    x = torch.randn(2, 3, 4, 4)
    gm, _ = qc.run(model, (x,), OBSERVE)
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)

    def forward(self, x):
        return torch.softmax(self.fc2(self.fc1(x)), dim=-1)


def test_outputs_observed_only_when_an_int8_op_reads_them(qc):
    gm, _ = qc.run(Chain(), (torch.randn(2, 8),), OBSERVE)
    # fc1's output feeds fc2 (int8): observed; fc2's output feeds softmax (float): not
    assert observed(gm) == ["x", "linear"]
    (softmax,) = qc.calls(gm, aten.softmax.int)
    assert softmax.args[0].target is aten.linear.default


class ResidualAdd(nn.Module):
    def __init__(self, head: bool):
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3) if head else None

    def forward(self, x):
        y = self.fc1(x) + self.fc2(x)
        return self.head(y) if self.head is not None else self.norm(y)


def test_add_feeding_only_float_ops_stays_float(qc):
    gm, _ = qc.run(ResidualAdd(head=False), (torch.randn(2, 8),), OBSERVE)
    assert observed(gm) == ["x"]
    (add,) = qc.calls(gm, aten.add.Tensor)
    assert facts_of(add).float_reason == "its output only feeds float ops"


def test_add_feeding_an_int8_op_is_quantized(qc):
    gm, _ = qc.run(ResidualAdd(head=True), (torch.randn(2, 8),), OBSERVE)
    assert observed(gm) == ["x", "linear", "linear_1", "add"]
    (add,) = qc.calls(gm, aten.add.Tensor)
    assert facts_of(add).float_reason is None


def test_dynamic_recipe_inserts_no_observers(qc):
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    gm, ctx = qc.context(Mixed(), (torch.randn(1, 3, 4, 4),), recipe="w8a8-dynamic")
    gm, records = qc.apply(gm, ctx, OBSERVE)
    assert observed(gm) == []
    assert not [n for n in gm.graph.nodes if n.op == "call_module"]
    assert records[-1].stats["observed"] == 0
    (conv,) = qc.calls(gm, aten.conv2d.default)
    assert "quantizes linear layers only" in facts_of(conv).float_reason


def test_keep_float_option_skips_a_layer(qc):
    gm, _ = qc.run(Chain(), (torch.randn(2, 8),), OBSERVE, options={"keep_float": ["fc2"]})
    assert observed(gm) == ["x"]                 # fc2 is float: fc1's output needs no range
    fc2 = [n for n in qc.calls(gm, aten.linear.default) if n.args[1].target == "fc2.weight"]
    assert "keep_float" in facts_of(fc2[0]).float_reason


def test_integer_inputs_are_not_observed(qc):
    class Embed(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.fc = nn.Linear(8, 4)

        def forward(self, ids):
            return self.fc(self.emb(ids))

    gm, _ = qc.run(Embed(), (torch.tensor([[1, 2, 3]]),), OBSERVE)
    assert observed(gm) == ["embedding"]


def test_mean_over_the_dynamic_batch_stays_float():
    class BatchMean(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(self.fc(x).mean(dim=0, keepdim=True))

    torch.manual_seed(0)
    model = BatchMean().eval()
    x = torch.randn(4, 8)
    cm = qcompile.compile(model, example_inputs=(x,), calibration_data=[x])
    reasons = {r.op: r.float_reason for r in cm.report.float_islands}
    assert "varies at run time" in reasons["aten.mean.dim"]
    y = torch.randn(7, 8)
    with torch.no_grad():
        assert torch.allclose(cm(y), model(y), atol=0.1)
