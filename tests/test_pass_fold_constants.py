"""fold-constants: constant subgraphs become one buffer; ops reading inputs are untouched."""
import pytest
import torch
from torch import nn

from qcompile.passes.canonicalize import fold_constants as fold_module

pytestmark = pytest.mark.usefixtures("one_thread")

aten = torch.ops.aten


class ConstantBranch(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("table", torch.randn(4, 6, generator=g))
        self.weight = nn.Parameter(torch.randn(6, 6, generator=g))

    def forward(self, x):
        offset = torch.exp(self.table) * 2.0 + 1.0          # constant subgraph
        w = self.weight.t().contiguous()                     # constant weight transform
        return nn.functional.linear(x * 3.0, w) + offset     # x * 3.0 reads the input


def test_constant_subgraph_becomes_a_buffer(qc):
    model = ConstantBranch().eval()
    x = torch.randn(4, 6)
    gm, ctx = qc.context(model, (x,))
    gm, records = qc.apply(gm, ctx, "fold-constants")
    targets = qc.targets(gm)
    assert aten.exp.default not in targets
    assert aten.t.default not in targets
    assert records[0].stats["folded"] >= 2
    folded = [n for n in gm.graph.nodes if n.op == "get_attr" and n.target.startswith("_folded_")]
    values = {n.target: qc.const(gm, n) for n in folded}
    expected_offset = torch.exp(model.table) * 2.0 + 1.0
    assert any(v.shape == expected_offset.shape and torch.equal(v, expected_offset)
               for v in values.values())
    (linear,) = qc.calls(gm, aten.linear.default)
    assert linear.args[1].op == "get_attr"
    torch.testing.assert_close(qc.const(gm, linear.args[1]), model.weight.detach().t(),
                               rtol=0, atol=0)
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)


def test_ops_reading_inputs_are_untouched(qc):
    model = ConstantBranch().eval()
    gm, _ = qc.run(model, (torch.randn(4, 6),), "fold-constants")
    (mul,) = qc.calls(gm, aten.mul.Tensor)
    assert mul.args == (qc.node(gm, "x"), 3.0)
    (add,) = qc.calls(gm, aten.add.Tensor)
    assert add.args[0].target is aten.linear.default and add.args[1].op == "get_attr"


def test_folded_weight_makes_the_linear_quantizable(qc):
    model = ConstantBranch().eval()
    x = torch.randn(4, 6)
    gm, _ = qc.run(model, (x,), "canonicalize,fuse,observe,calibrate,insert-qdq,lower-int8",
                   calibration=qc.batches((4, 6)))
    assert qc.calls(gm, qc.Q.qlinear_f32.default)
    assert not qc.calls(gm, aten.linear.default)


def test_random_ops_are_never_folded(qc):
    class Noisy(nn.Module):
        def forward(self, x):
            return x + torch.rand(3) * 0.0

    gm, ctx = qc.context(Noisy(), (torch.randn(2, 3),))
    gm, records = qc.apply(gm, ctx, "fold-constants")
    assert qc.calls(gm, aten.rand.default)
    assert records[0].stats["folded"] == 0


def test_large_constants_stay_computed(qc, monkeypatch):
    monkeypatch.setattr(fold_module, "MAX_FOLDED_ELEMENTS", 10)
    model = ConstantBranch().eval()
    gm, _ = qc.run(model, (torch.randn(4, 6),), "fold-constants")
    assert aten.exp.default in qc.targets(gm)            # 24 elements > 10


def test_nothing_to_fold_reports_unchanged(qc):
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return torch.relu(self.fc(x))

    gm, ctx = qc.context(Plain(), (torch.randn(2, 3),))
    before = [str(n) for n in gm.graph.nodes]
    gm, records = qc.apply(gm, ctx, "fold-constants")
    assert not records[0].changed
    assert [str(n) for n in gm.graph.nodes] == before


class WrittenInPlace(nn.Module):
    """zeros(...) filled through a slice view: the zeros are not a constant."""

    def __init__(self):
        super().__init__()
        self.register_buffer("cache", torch.zeros(3, 6))

    def forward(self, x):
        out = torch.zeros(3, 6)
        out[:, :4] = x
        scratch = self.cache.clone()
        scratch[:, 2:] = x * 2.0
        return out * 2.0, scratch + 1.0


def test_values_written_in_place_are_not_folded(qc):
    model = WrittenInPlace().eval()
    x = torch.randn(3, 4)
    gm, ctx = qc.context(model, (x,))
    assert qc.calls(gm, aten.copy_.default)
    gm, _ = qc.apply(gm, ctx, "canonicalize")
    assert len(qc.calls(gm, aten.copy_.default)) == 2
    (zeros,) = qc.calls(gm, aten.zeros.default)
    for got, want in zip(gm(x), model(x)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    y = torch.randn(3, 4)                          # a second call sees no state from the first
    for got, want in zip(gm(y), model(y)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
