"""dead-code: unused nodes go, and with them the weights only they read."""
import pytest
import torch
from torch import nn

pytestmark = pytest.mark.usefixtures("one_thread")

aten = torch.ops.aten


def attribute_names(gm) -> set:
    return {name for name, _ in gm.named_parameters()} | {name for name, _ in gm.named_buffers()}


class UnusedBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(4, 3)
        self.unused = nn.Linear(4, 16)
        self.register_buffer("never_read", torch.ones(100))

    def forward(self, x):
        dead = torch.relu(self.unused(x))      # computed, never used
        del dead
        return self.used(x)


def test_unused_nodes_and_their_weights_are_removed(qc):
    model = UnusedBranch().eval()
    x = torch.randn(2, 4)
    gm, ctx = qc.context(model, (x,))
    assert len(qc.calls(gm, aten.linear.default)) == 2
    gm, records = qc.apply(gm, ctx, "dead-code")
    (linear,) = qc.calls(gm, aten.linear.default)
    assert linear.args[1].target == "used.weight"
    assert aten.relu.default not in qc.targets(gm)
    names = attribute_names(gm)
    assert {"used.weight", "used.bias"} <= names
    assert not any(n.startswith("unused") for n in names)
    assert "never_read" not in names
    assert records[0].changed and records[0].stats["erased"] >= 4
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)


class SecondOutput(nn.Module):
    """A second output that the caller ignores is still an output: it stays."""

    def __init__(self):
        super().__init__()
        self.main = nn.Linear(4, 3)
        self.side = nn.Linear(4, 2)

    def forward(self, x):
        return self.main(x), self.side(x)


def test_outputs_are_never_dead(qc):
    model = SecondOutput().eval()
    x = torch.randn(2, 4)
    gm, ctx = qc.context(model, (x,))
    gm, records = qc.apply(gm, ctx, "dead-code")
    assert len(qc.calls(gm, aten.linear.default)) == 2
    assert {"main.weight", "side.weight"} <= attribute_names(gm)
    assert not records[0].changed
    for got, want in zip(gm(x), model(x)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_weights_orphaned_by_folding_are_removed(qc):
    """After fold-batchnorm the original conv weight and BN statistics are unread."""
    class ConvBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x))

    model = ConvBN().eval()
    x = torch.randn(1, 3, 5, 5)
    gm, _ = qc.run(model, (x,), "fold-batchnorm,dead-code")
    names = attribute_names(gm)
    assert not any(n.startswith(("conv.", "bn.")) for n in names), names
    (conv,) = qc.calls(gm, aten.conv2d.default)
    assert {conv.args[1].target, conv.args[2].target} == names
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)
