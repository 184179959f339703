"""fuse: conv2d/linear/add + the ReLU/ReLU6 that alone reads it form one group; after
lowering the activation is the clamp bounds of the integer op."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qcompile.facts import QParams, facts_of
from qcompile.ops import reference
from qcompile.passes.lower.common import clamp_bounds

pytestmark = pytest.mark.usefixtures("one_thread")

aten = torch.ops.aten
LOWER = "canonicalize,fuse,observe,calibrate,insert-qdq,lower-int8"


class Patterns(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.c3 = nn.Conv2d(4, 4, 1)
        self.c4 = nn.Conv2d(4, 4, 1)
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 2)

    def forward(self, x):
        a = torch.relu(self.c1(x))                 # conv + relu
        b = F.relu6(self.c2(a))                    # conv + relu6 (hardtanh 0..6)
        c = torch.relu(self.c3(b) + b)             # conv (no act) ; add + relu
        d = F.hardtanh(self.c4(c), -1.0, 1.0)      # hardtanh(-1, 1): not an activation
        e = torch.relu(self.fc1(d.mean((2, 3))))   # linear + relu
        return self.fc2(e)


def groups_by_anchor(gm) -> dict:
    out = {}
    for node in gm.graph.nodes:
        group = facts_of(node).fusion
        if group is not None:
            out.setdefault(group.anchor, group)
    return out


def test_groups_and_activations(qc):
    gm, ctx = qc.context(Patterns(), (torch.randn(1, 3, 6, 6),))
    gm, records = qc.apply(gm, ctx, "canonicalize,fuse")
    groups = groups_by_anchor(gm)
    by_kind = {}
    for anchor_name, group in groups.items():
        anchor = qc.node(gm, anchor_name)
        follower = qc.node(gm, group.members[-1])
        assert group.members == (anchor_name, follower.name)
        assert list(anchor.users) == [follower]
        assert facts_of(anchor).activation == group.activation
        assert facts_of(follower).fusion == group
        by_kind.setdefault(str(anchor.target), []).append(group.activation)
    assert sorted(by_kind["aten.conv2d.default"]) == ["relu", "relu6"]
    assert by_kind["aten.add.Tensor"] == ["relu"]
    assert by_kind["aten.linear.default"] == ["relu"]
    assert len(groups) == 4 and records[-1].stats == {"groups": 4}
    ids = sorted(g.group_id for g in groups.values())
    assert ids == [1, 2, 3, 4]


def test_unfused_nodes_have_no_group(qc):
    gm, _ = qc.run(Patterns(), (torch.randn(1, 3, 6, 6),), "canonicalize,fuse")
    (hardtanh,) = [n for n in qc.calls(gm, aten.hardtanh.default) if n.args[1] == -1.0]
    assert facts_of(hardtanh).fusion is None and facts_of(hardtanh.args[0]).fusion is None
    fc2 = [n for n in qc.calls(gm, aten.linear.default) if not n.users or
           all(u.op == "output" for u in n.users)]
    assert fc2 and facts_of(fc2[0]).fusion is None


def test_activation_with_a_second_reader_is_not_fused(qc):
    class TwoReaders(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            y = self.conv(x)
            return torch.relu(y) + y

    gm, ctx = qc.context(TwoReaders(), (torch.randn(1, 3, 4, 4),))
    gm, records = qc.apply(gm, ctx, "canonicalize,fuse")
    (conv,) = qc.calls(gm, aten.conv2d.default)
    assert facts_of(conv).fusion is None
    assert records[-1].stats == {"groups": 0} and not records[-1].changed


def test_fusion_does_not_change_numerics(qc):
    model = Patterns().eval()
    x = torch.randn(2, 3, 6, 6)
    gm, _ = qc.run(model, (x,), "canonicalize,fuse")
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)


def clamp_args(node):
    """(qmin, qmax) arguments of a lowered qconv2d/qlinear/qadd."""
    index = 8 if node.target is torch.ops.qcompile.qadd.default else 7
    return node.args[index], node.args[index + 1]


def test_relu_clamps_at_the_zero_point_after_lowering(qc):
    """Symmetric activations give zp 0, so the fused ReLU must show as qmin = 0."""
    Q = qc.Q
    model = Patterns().eval()
    gm, _ = qc.run(model, (torch.randn(1, 3, 6, 6),), LOWER,
                   calibration=qc.batches((1, 3, 6, 6)), options={"symmetric_activations": True})
    lowered = qc.calls(gm, Q.qconv2d.default) + qc.calls(gm, Q.qadd.default)
    acts = {}
    for node in lowered:
        out = facts_of(node).qparams
        assert out.zero_point == 0
        acts.setdefault(facts_of(node).activation, []).append(clamp_args(node))
    assert acts["relu"] and all(b == (0, 127) for b in acts["relu"])       # conv c1 and the add
    assert acts[None] and all(b == (-128, 127) for b in acts[None])        # c3 has no activation
    assert len(acts["relu6"]) == 1


def test_relu6_clamps_at_q6_after_lowering(qc):
    """With an output scale where 6.0 is inside the int8 range, qmax must be q(6)."""
    Q = qc.Q
    model = Patterns().eval()
    gm, ctx = qc.run(model, (torch.randn(1, 3, 6, 6),),
                     "canonicalize,fuse,observe,calibrate,insert-qdq",
                     calibration=qc.batches((1, 3, 6, 6)))
    (q6,) = [n for n in qc.calls(gm, Q.quantize.default)
             if n.args[0].target is aten.hardtanh.default and n.args[0].args[1:] == (0.0, 6.0)]
    q6.args = (q6.args[0], 0.1, -128, -128, 127)
    gm, _ = qc.apply(gm, ctx, "lower-int8")
    (conv,) = [n for n in qc.calls(gm, Q.qconv2d.default) if facts_of(n).activation == "relu6"]
    q_six = int(reference.quantize(torch.tensor([6.0]), 0.1, -128, -128, 127))
    assert q_six == -68
    assert clamp_args(conv) == (-128, q_six)
    assert conv.args[6] == -128                                              # out zero point


@pytest.mark.parametrize("scale,zp,act,expected", [
    (0.1, -128, "relu", (-128, 127)),
    (0.1, -20, "relu", (-20, 127)),
    (0.1, -20, "relu6", (-20, 40)),
    (0.01, 0, "relu6", (0, 127)),
    (0.1, -20, None, (-128, 127)),
])
def test_clamp_bounds_table(scale, zp, act, expected):
    assert clamp_bounds(QParams(scale, zp), act) == expected
