"""fold-batchnorm: conv2d/linear + inference BatchNorm -> one conv2d/linear, same numerics."""
import pytest
import torch
from torch import nn

pytestmark = pytest.mark.usefixtures("one_thread")

aten = torch.ops.aten
BN_OPS = (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default)


def randomize(bn: nn.modules.batchnorm._BatchNorm, seed: int):
    g = torch.Generator().manual_seed(seed)
    n = bn.num_features
    bn.running_mean.copy_(torch.randn(n, generator=g))
    bn.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
    if bn.affine:
        bn.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
        bn.bias.data.copy_(torch.randn(n, generator=g) * 0.3)
    return bn


def folded(weight, bias, bn):
    """Hand-folded (weight, bias) in float64."""
    gamma = bn.weight.detach().double() if bn.affine else torch.ones(bn.num_features).double()
    beta = bn.bias.detach().double() if bn.affine else torch.zeros(bn.num_features).double()
    factor = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    b = bias.detach().double() if bias is not None else torch.zeros(weight.shape[0]).double()
    w = weight.detach().double() * factor.reshape(-1, *[1] * (weight.dim() - 1))
    return w.float(), ((b - bn.running_mean.double()) * factor + beta).float()


def bn_count(qc, gm):
    return sum(len(qc.calls(gm, t)) for t in BN_OPS)


class ConvBN(nn.Module):
    def __init__(self, bias=True, affine=True, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1, bias=bias, groups=groups)
        self.bn = randomize(nn.BatchNorm2d(8, affine=affine), 1)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


@pytest.mark.parametrize("bias,affine,groups", [(True, True, 1), (False, True, 1),
                                                (True, False, 1), (False, True, 4)])
def test_conv_batchnorm_folds_to_hand_computed_weights(qc, bias, affine, groups):
    model = ConvBN(bias=bias, affine=affine, groups=groups).eval()
    x = torch.randn(2, 4, 6, 6)
    gm, ctx = qc.context(model, (x,))
    assert bn_count(qc, gm) == 1
    gm, records = qc.apply(gm, ctx, "fold-batchnorm")
    assert bn_count(qc, gm) == 0 and records[0].stats == {"folded": 1}
    (conv,) = qc.calls(gm, aten.conv2d.default)
    w, b = folded(model.conv.weight, model.conv.bias, model.bn)
    torch.testing.assert_close(qc.const(gm, conv.args[1]), w, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(qc.const(gm, conv.args[2]), b, rtol=1e-6, atol=1e-6)
    assert conv.args[3:] == (qc.node(gm, "conv2d").args[3:])
    assert [n.target for n in conv.users] == [aten.relu.default]
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)


class LinearBN(nn.Module):
    """linear 6 -> `features`, then BatchNorm1d(`features`) (its statistics from `seed`)."""

    def __init__(self, features=5, seed=2):
        super().__init__()
        self.fc = nn.Linear(6, features)
        self.bn = randomize(nn.BatchNorm1d(features), seed)

    def forward(self, x):
        return self.bn(self.fc(x))


def test_linear_batchnorm1d_folds(qc):
    model = LinearBN().eval()
    x = torch.randn(3, 6)
    gm, _ = qc.run(model, (x,), "fold-batchnorm")
    assert bn_count(qc, gm) == 0
    (linear,) = qc.calls(gm, aten.linear.default)
    w, b = folded(model.fc.weight, model.fc.bias, model.bn)
    torch.testing.assert_close(qc.const(gm, linear.args[1]), w, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(qc.const(gm, linear.args[2]), b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)


def test_linear_batchnorm_over_another_dim_is_not_folded(qc):
    # BatchNorm1d on [N, C, L] normalizes dim 1, not the linear's output features
    model = LinearBN(features=6, seed=3).eval()
    x = torch.randn(2, 6, 6)
    gm, _ = qc.run(model, (x,), "fold-batchnorm")
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)
    assert bn_count(qc, gm) == 1


class SharedConv(nn.Module):
    """One conv module (one weight) called twice, each call followed by its own BatchNorm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn_a = randomize(nn.BatchNorm2d(4), 4)
        self.bn_b = randomize(nn.BatchNorm2d(4), 5)

    def forward(self, x):
        return self.bn_a(self.conv(x)) + self.bn_b(self.conv(x * 0.5))


def test_shared_weight_gets_one_folded_copy_per_call(qc):
    model = SharedConv().eval()
    original = model.conv.weight.detach().clone()
    x = torch.randn(1, 3, 5, 5)
    gm, _ = qc.run(model, (x,), "fold-batchnorm,dead-code")
    assert bn_count(qc, gm) == 0
    convs = qc.calls(gm, aten.conv2d.default)
    assert len(convs) == 2 and convs[0].args[1].target != convs[1].args[1].target
    for conv, bn in zip(convs, (model.bn_a, model.bn_b)):
        w, b = folded(original, None, bn)
        torch.testing.assert_close(qc.const(gm, conv.args[1]), w, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(qc.const(gm, conv.args[2]), b, rtol=1e-6, atol=1e-6)
    assert torch.equal(model.conv.weight.detach(), original)       # the model is not modified
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)


def test_conv_output_read_elsewhere_is_not_folded(qc):
    class TwoReaders(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.bn = randomize(nn.BatchNorm2d(4), 6)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = TwoReaders().eval()
    x = torch.randn(1, 3, 4, 4)
    gm, ctx = qc.context(model, (x,))
    gm, records = qc.apply(gm, ctx, "fold-batchnorm")
    assert bn_count(qc, gm) == 1 and not records[0].changed
    torch.testing.assert_close(gm(x), model(x), rtol=1e-6, atol=1e-6)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_decomposed_batchnorm_with_getitem_folds(qc):
    """After run_decompositions, BatchNorm is _native_batch_norm_legit_no_training + getitem."""
    from qcompile.context import PassContext
    model = ConvBN().eval()
    x = torch.randn(2, 4, 6, 6)
    gm = torch.export.export(model, (x,)).run_decompositions({}).module()
    assert qc.calls(gm, aten._native_batch_norm_legit_no_training.default)
    gm, _ = qc.apply(gm, PassContext(example_inputs=(x,)), "fold-batchnorm")
    assert bn_count(qc, gm) == 0
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)


def test_resnet_block_folds_every_batchnorm(qc):
    from qcompile.zoo.resnet import BasicBlock
    block = BasicBlock(8, 8)
    for i, bn in enumerate((block.bn1, block.bn2)):
        randomize(bn, 10 + i)
    block.eval()
    x = torch.randn(1, 8, 6, 6)
    gm, _ = qc.run(block, (x,), "canonicalize")
    assert bn_count(qc, gm) == 0
    assert len(qc.calls(gm, aten.conv2d.default)) == 2
    torch.testing.assert_close(gm(x), block(x), rtol=1e-5, atol=1e-5)
