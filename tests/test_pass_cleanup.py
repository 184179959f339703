"""cleanup: fold leftover q(dq(x)) pairs, erase dead nodes, drop unread float weights."""
import pytest
import torch
import torch.fx as fx
from torch import nn

from qcompile.context import PassContext
from qcompile.facts import QParams, update_facts
from qcompile.ops import reference
from qcompile.passes.lower.cleanup import cleanup
from qcompile.quant_math import quantize_multiplier
from qcompile.report import weight_bytes

from tiny_models import MLP

pytestmark = pytest.mark.usefixtures("one_thread")

Q = torch.ops.qcompile
LOWER = "canonicalize,fuse,observe,calibrate,insert-qdq,lower-int8"


def attribute_bytes(gm) -> int:
    return sum(t.numel() * t.element_size()
               for t in list(gm.parameters()) + list(gm.buffers()))


def test_float_weights_dropped_bytes_fall_about_4x(qc):
    model = MLP(128, 256, 256, 64).eval()
    x = torch.randn(4, 128)
    gm, ctx = qc.context(model, (x,), calibration=qc.batches((4, 128)),
                         options={"calibration": "minmax"})
    float_bytes = attribute_bytes(gm)
    gm, _ = qc.apply(gm, ctx, LOWER)
    before = attribute_bytes(gm)
    expected = gm(x)
    gm, records = qc.apply(gm, ctx, "cleanup")
    after = attribute_bytes(gm)
    names = {n for n, _ in gm.named_parameters()} | {n for n, _ in gm.named_buffers()}
    assert not {"fc1.weight", "fc2.weight", "fc3.weight"} & names
    assert not any(n.endswith("_weight_scale") for n in names)   # folded into M/n, out scale
    assert before > float_bytes                     # lowering added int8 copies beside the float
    assert 3.5 < float_bytes / after < 4.0, (float_bytes, after)
    assert 3.5 < float_bytes / weight_bytes(gm) < 4.0
    assert records[-1].stats["attributes_removed"] >= 6      # float weights, biases, scales
    assert torch.equal(gm(x), expected)


def test_cleanup_is_idempotent(qc):
    model = MLP(128, 256, 256, 64).eval()
    x = torch.randn(2, 128)
    gm, ctx = qc.context(model, (x,), calibration=qc.batches((2, 128)),
                         options={"calibration": "minmax"})
    gm, records = qc.apply(gm, ctx, LOWER + ",cleanup,cleanup")
    assert records[-2].stats["attributes_removed"] > 0 and not records[-1].changed
    assert records[-1].stats == {"folded": 0, "erased": 0, "attributes_removed": 0}


def qdq_chain(in_qp: QParams, out_qp: QParams) -> fx.GraphModule:
    """x -> quantize(in) -> dequantize(in) -> quantize(out) -> output (an int8 value)."""
    g = fx.Graph()
    x = g.placeholder("x")
    q1 = g.call_function(Q.quantize.default, (x, in_qp.scale, in_qp.zero_point, -128, 127))
    dq = g.call_function(Q.dequantize.default, (q1, in_qp.scale, in_qp.zero_point))
    q2 = g.call_function(Q.quantize.default, (dq, out_qp.scale, out_qp.zero_point,
                                              out_qp.qmin, out_qp.qmax))
    g.output(q2)
    update_facts(q1, qparams=in_qp)
    update_facts(q2, qparams=out_qp)
    return fx.GraphModule(nn.Module(), g)


def test_same_qparams_pair_folds_away():
    qp = QParams(0.05, 3)
    gm = qdq_chain(qp, qp)
    x = torch.randn(64) * 3
    expected = gm(x)
    result = cleanup(gm, PassContext(example_inputs=(x,)))
    gm.recompile()
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets == [Q.quantize.default]
    assert result.stats["folded"] == 1
    assert torch.equal(gm(x), expected)


def test_different_qparams_pair_becomes_requantize():
    a, b = QParams(0.05, 3), QParams(0.11, -7)
    gm = qdq_chain(a, b)
    x = torch.randn(64) * 3
    cleanup(gm, PassContext(example_inputs=(x,)))
    gm.recompile()
    (req,) = [n for n in gm.graph.nodes if n.target is Q.requantize.default]
    m, n = quantize_multiplier(a.scale / b.scale)
    assert req.args[1:] == (a.zero_point, m, n, b.zero_point, -128, 127)
    assert Q.dequantize.default not in {n.target for n in gm.graph.nodes}
    q = reference.quantize(x, a.scale, a.zero_point, -128, 127)
    assert torch.equal(gm(x), reference.requantize(q, a.zero_point, m, n, b.zero_point, -128, 127))
    # integer requantize is within one step of the float round trip
    float_path = reference.quantize(reference.dequantize(q, a.scale, a.zero_point), b.scale,
                                    b.zero_point, -128, 127)
    assert (gm(x).int() - float_path.int()).abs().max() <= 1


def test_unused_observer_modules_and_dead_nodes_are_removed(qc):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.unused = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(x)

    gm, ctx = qc.context(Two(), (torch.randn(2, 8),), options={"calibration": "minmax"})
    gm, _ = qc.apply(gm, ctx, "normalize-ops,fuse,observe,calibrate,insert-qdq,lower-int8,cleanup")
    assert not any(name.startswith(("obs_", "unused")) for name, _ in gm.named_modules() if name)
    assert not [n for n, _ in gm.named_parameters() if n.startswith("unused")]
