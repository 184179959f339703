"""normalize-ops: one spelling per op; dropout, asserts, identity copies and no-op casts gone."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qcompile.op_kinds import activation_of

pytestmark = pytest.mark.usefixtures("one_thread")

aten = torch.ops.aten


class Spellings(nn.Module):
    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.relu6 = nn.ReLU6(inplace=True)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        y = x * 2.0
        y += 1.0                                   # add_
        y = self.relu(y)                           # relu_
        y = self.drop(y).clone()                   # dropout, clone
        y = y.to(torch.float32)                    # same-dtype cast (+ metadata assert)
        a = F.relu6(y)                             # relu6
        b = self.relu6(y * 1.5)                    # hardtanh_(0, 6)
        c = F.hardtanh(y, -1.0, 1.0)               # a real hardtanh: not an activation
        return a + b + c, y.to(torch.float64)


def test_respells_inplace_and_alias_ops(qc):
    x = torch.randn(2, 3, 4)
    gm, ctx = qc.context(Spellings(), (x,))
    before = qc.targets(gm)
    assert {aten.add_.Tensor, aten.relu_.default, aten.dropout.default, aten.relu6.default,
            aten.hardtanh_.default, aten.clone.default} <= before
    gm, records = qc.apply(gm, ctx, "normalize-ops")
    after = qc.targets(gm)
    for gone in (aten.add_.Tensor, aten.relu_.default, aten.hardtanh_.default, aten.relu6.default,
                 aten.dropout.default, aten.clone.default,
                 aten._assert_tensor_metadata.default):
        assert gone not in after, gone
    assert {aten.add.Tensor, aten.relu.default, aten.hardtanh.default} <= after
    assert records[0].changed and records[0].stats["rewritten"] >= 7


def test_relu6_becomes_hardtanh_0_6_and_real_hardtanh_is_untouched(qc):
    gm, _ = qc.run(Spellings(), (torch.randn(2, 3, 4),), "normalize-ops")
    hardtanhs = qc.calls(gm, aten.hardtanh.default)
    bounds = sorted((float(n.args[1]), float(n.args[2])) for n in hardtanhs)
    assert bounds == [(-1.0, 1.0), (0.0, 6.0), (0.0, 6.0)]
    kinds = sorted(str(activation_of(n)) for n in hardtanhs)
    assert kinds == ["None", "relu6", "relu6"]


def test_casts_to_another_dtype_are_kept(qc):
    gm, _ = qc.run(Spellings(), (torch.randn(2, 3, 4),), "normalize-ops")
    casts = qc.calls(gm, aten.to.dtype)
    assert [c.args[1] for c in casts] == [torch.float64]


def test_numerics_unchanged(qc):
    model = Spellings().eval()
    x = torch.randn(2, 3, 4)
    gm, _ = qc.run(model, (x,), "normalize-ops")
    for got, want in zip(gm(x.clone()), model(x.clone())):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0)


class CloneThenMutate(nn.Module):
    """A clone that an in-place op writes to is a real copy: dropping it mutates the input."""

    def forward(self, x):
        w = x.clone()
        w.sub_(1.0)
        return w, x + 0.0


def test_clone_written_in_place_is_kept(qc):
    model = CloneThenMutate().eval()
    x = torch.randn(3, 4)
    gm, _ = qc.run(model, (x,), "normalize-ops")
    arg = x.clone()
    got = gm(arg)
    torch.testing.assert_close(arg, x, rtol=0, atol=0)       # the caller's input is untouched
    for g, w in zip(got, model(x.clone())):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


class WriteThroughViews(nn.Module):
    """In-place writes through views: the base tensors must see them."""

    def __init__(self):
        super().__init__()
        self.register_buffer("state", torch.zeros(3, 4))

    def forward(self, x):
        y = x * 3.0
        y.narrow(1, 0, 2).add_(1.0)                # add_ on a view of y
        z = torch.relu(y)
        z[0].mul_(0.5)                             # mul_ on a view of z
        s = self.state.clone()
        s[:, 1:] = x[:, 1:]                        # copy_ into a view of a clone of a buffer
        return y * 2.0, z, s + 1.0


def test_writes_through_views_are_kept(qc):
    model = WriteThroughViews().eval()
    x = torch.randn(3, 4)
    gm, _ = qc.run(model, (x,), "normalize-ops")
    targets = qc.targets(gm)
    assert {aten.add_.Tensor, aten.mul_.Tensor, aten.clone.default} <= targets
    for _ in range(2):
        for got, want in zip(gm(x), model(x)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert torch.equal(gm.state, torch.zeros(3, 4))          # the buffer is never written


def test_resnet_block_inplace_ops_are_respelled(qc):
    from qcompile.zoo.resnet import BasicBlock
    block = BasicBlock(4, 4).eval()
    x = torch.randn(1, 4, 5, 5)
    gm, ctx = qc.context(block, (x,))
    assert {aten.add_.Tensor, aten.relu_.default} <= qc.targets(gm)
    gm, _ = qc.apply(gm, ctx, "normalize-ops")
    assert not {aten.add_.Tensor, aten.relu_.default} & qc.targets(gm)
    torch.testing.assert_close(gm(x), block(x), rtol=0, atol=0)


def test_already_normal_graph_is_not_modified(qc):
    class Plain(nn.Module):
        def forward(self, x):
            return torch.relu(x + 1.0)

    gm, ctx = qc.context(Plain(), (torch.randn(4),))
    gm, records = qc.apply(gm, ctx, "normalize-ops,normalize-ops")
    assert [r.changed for r in records] == [False, False]
    assert qc.targets(gm) == {aten.add.Tensor, aten.relu.default}
