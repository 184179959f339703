"""cpu-int8 (TVM): CNN activations stay NHWC between kernels, bit-exact with the reference.

Pooling, residual adds, clamps, requantize, channel concat and spatial means run on the NHWC
output of the conv kernels instead of transposing it to NCHW and back."""
import warnings

import pytest
import torch
from torch import nn

import qcompile

pytest.importorskip("tvm")
warnings.filterwarnings("ignore", category=qcompile.QCompileWarning)


def _conv_bn(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout))


class ResNetBlock(nn.Module):
    """Stem conv-bn-relu, max pool, a basic block, a strided block with a 1x1 downsample,
    average pool, 1x1 conv, global mean, linear."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = _conv_bn(3, c)
        self.pool = nn.MaxPool2d(3, 2, padding=1)
        self.a1, self.a2 = _conv_bn(c, c), _conv_bn(c, c)
        self.b1, self.b2 = _conv_bn(c, 2 * c, stride=2), _conv_bn(2 * c, 2 * c)
        self.down = _conv_bn(c, 2 * c, k=1, stride=2)
        self.avg = nn.AvgPool2d(3, 1, padding=1)
        self.head = nn.Conv2d(2 * c, 2 * c, 1)
        self.fc = nn.Linear(2 * c, 5)

    def forward(self, x):
        y = self.pool(torch.relu(self.stem(x)))
        y = torch.relu(y + self.a2(torch.relu(self.a1(y))))
        y = torch.relu(self.down(y) + self.b2(torch.relu(self.b1(y))))
        y = self.head(self.avg(y))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class MobileNetBlock(nn.Module):
    """Inverted residuals (expand 1x1, depthwise 3x3, ReLU6, project 1x1), a residual add,
    a standalone ReLU (qclamp), channel concat (requantized inputs), max pool with
    ceil_mode, spatial mean without keepdim."""

    def __init__(self):
        super().__init__()
        self.stem = _conv_bn(3, 16, stride=2)
        self.dw1, self.pw1 = _conv_bn(16, 16, groups=16), _conv_bn(16, 8, k=1)
        self.expand, self.dw2 = _conv_bn(8, 24, k=1), _conv_bn(24, 24, groups=24)
        self.project = _conv_bn(24, 8, k=1)
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        s = self.stem(x)                            # two readers: the ReLU is a qclamp
        y = self.pw1(nn.functional.relu6(self.dw1(torch.relu(s))))
        z = self.project(nn.functional.relu6(self.dw2(nn.functional.relu6(self.expand(y)))))
        y = nn.functional.relu6(y + z)
        y = self.pool(torch.cat([y, z, s], dim=1))
        return self.fc(y.mean(dim=(2, 3)))


class LayoutEdges(nn.Module):
    """Where NHWC needs care: a broadcasting add of a [n, C, 1, 1] mean, a mean over H only
    (the kept dims in NCHW order) and one over C with keepdim, each read by an int8 op."""

    def __init__(self, w=12):
        super().__init__()
        self.conv1, self.conv2 = _conv_bn(3, 8), _conv_bn(8, 8)
        self.rows, self.chans = nn.Linear(w, 4), nn.Conv2d(1, 2, 3)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        y = self.conv2(y + y.mean(dim=(2, 3), keepdim=True))
        rows, chans = self.rows(y.mean(dim=2)), self.chans(y.mean(dim=1, keepdim=True))
        return torch.cat([rows.flatten(1), chans.flatten(1)], 1)


def _trained(model):
    """Random batch-norm statistics, so the folded convs are not near-identity."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def _both(model, calibration, options=None):
    kwargs = {"example_inputs": (calibration[0],), "calibration_data": calibration}
    return (qcompile.compile(model, target="reference", **kwargs),
            qcompile.compile(model, target="cpu-int8", options=options, **kwargs))


def _ops(cm) -> set:
    return {n.target._opname for n in cm.graph.graph.nodes
            if getattr(n.target, "_opname", None)}


@pytest.fixture(scope="module")
def resnet_pair():
    torch.manual_seed(1)
    calibration = [torch.randn(2, 3, 20, 20) for _ in range(3)]
    return _both(_trained(ResNetBlock()), calibration, options={"profile": True})


@pytest.fixture(scope="module")
def mobilenet_pair():
    torch.manual_seed(2)
    calibration = [torch.randn(2, 3, 18, 18) for _ in range(3)]
    return _both(_trained(MobileNetBlock()), calibration)


def test_resnet_block_bit_exact(resnet_pair):
    ref, cpu = resnet_pair
    assert {"qmax_pool2d", "qadd", "qavg_pool2d", "qmean", "qconv2d"} <= _ops(cpu)
    torch.manual_seed(3)
    for batch in (1, 2, 5):
        x = torch.randn(batch, 3, 20, 20)
        assert torch.equal(ref(x), cpu(x))


def test_mobilenet_block_bit_exact(mobilenet_pair):
    ref, cpu = mobilenet_pair
    assert {"qclamp", "qadd", "qcat", "qmax_pool2d", "qmean"} <= _ops(cpu)
    torch.manual_seed(4)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 18, 18)
        assert torch.equal(ref(x), cpu(x))


@pytest.mark.parametrize("scale", [1e3, -1e3])
def test_saturating_inputs_bit_exact(resnet_pair, mobilenet_pair, scale):
    """Inputs far outside the calibrated range: activations saturate at -128 / 127."""
    torch.manual_seed(5)
    for (ref, cpu), size in ((resnet_pair, 20), (mobilenet_pair, 18)):
        x = torch.rand(2, 3, size, size) * scale
        x[0, :, ::2] = -x[0, :, ::2]
        assert torch.equal(ref(x), cpu(x))


def test_layout_edges_bit_exact():
    torch.manual_seed(6)
    calibration = [torch.randn(2, 3, 12, 12) for _ in range(3)]
    ref, cpu = _both(_trained(LayoutEdges()), calibration)
    assert "qmean" in _ops(cpu) and "qadd" in _ops(cpu)
    for scale in (1.0, 1e3):
        x = torch.randn(3, 3, 12, 12) * scale
        assert torch.equal(ref(x), cpu(x))


def _args(call) -> list:
    from tvm import relax
    out = []
    for a in call.args:
        out += list(a.fields) if isinstance(a, relax.Tuple) else [a]
    return out


def _permutes(cm, x) -> list:
    """For each permute_dims left in the Relax module of cm's lowered graph after dead-code
    elimination, the ops of the bindings that read it."""
    import tvm
    from qcompile.backends.tvm.relax_convert import to_relax
    from tvm import relax
    func = relax.transform.DeadCodeElimination()(to_relax(cm.graph, (x,)))["main"]
    calls = [b for block in func.body.blocks for b in block.bindings
             if isinstance(b.value, relax.Call)]
    permute = tvm.ir.Op.get("relax.permute_dims")
    return [[b.value.op.name for b in calls if any(a.same_as(p.var) for a in _args(b.value))]
            for p in calls if p.value.op == permute]


def test_resnet_block_keeps_nhwc_between_kernels(resnet_pair, monkeypatch):
    """Only the transposes that the next conv's im2col reads through remain (FuseOps fuses
    them into it); without the NHWC forms there are more, some on their own."""
    from qcompile.backends.tvm import relax_ops, relax_ops_pool
    _, cpu = resnet_pair
    x = torch.randn(2, 3, 20, 20)
    after = _permutes(cpu, x)
    assert len(after) <= 4           # the inputs of the four 3x3 convs after the stem
    assert all(readers and set(readers) == {"relax.call_tir"} for readers in after)
    for module in (relax_ops, relax_ops_pool):
        monkeypatch.setattr(module, "nhwc_sources", lambda *args, **kwargs: None)
    before = _permutes(cpu, x)
    read_by_relax_ops = [r for r in before if set(r) != {"relax.call_tir"}]
    assert len(read_by_relax_ops) >= 4 and len(before) >= len(after) + 4


def test_no_standalone_transpose_kernels(resnet_pair):
    """In the built library (after the backend's Relax pipeline and its dead-code removal),
    no kernel is a bare transpose."""
    _, cpu = resnet_pair
    names = [row["function"] for row in cpu.report.kernel_times]
    assert any(name.startswith("gemm_") for name in names)
    assert not [name for name in names if name.startswith("transpose")]


def test_im2col_reads_the_nhwc_source(resnet_pair):
    """The transpose in front of a 3x3 conv is inlined into its im2col (no transpose block
    left in the scheduled fused function: im2col reads the NHWC tensor directly)."""
    import tvm
    from qcompile.backends.tvm import schedule
    from qcompile.backends.tvm.cpu_features import choose_path, llvm_target
    from qcompile.backends.tvm.relax_convert import to_relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    _, compiled = resnet_pair
    target = tvm.target.Target(llvm_target(choose_path()))
    with target:
        passes = cpu.library_dispatch_passes(target) + cpu.legalize_passes(target)
        mod = tvm.transform.Sequential(passes + [schedule.schedule_cpu])(
            to_relax(compiled.graph, (torch.randn(2, 3, 20, 20),)))
    fused = {gv.name_hint: func.script() for gv, func in mod.functions.items()
             if "transpose" in gv.name_hint and "compute" in gv.name_hint}
    assert fused
    assert not [name for name, text in fused.items() if 'sblock("T_transpose")' in text]
