"""integer-only-observe: where observer sites go around softmax, layer_norm and GELU."""
import pytest
import torch

from qcompile.passes.quantize.site import observer_sites

from test_pass_integer_only import Block, _calibration, _inputs

pytestmark = pytest.mark.usefixtures("one_thread")
aten = torch.ops.aten


def _observed(qc, integer_only, pipeline="canonicalize,fuse,observe,integer-only-observe"):
    gm, ctx = qc.context(Block().eval(), _inputs(), calibration=_calibration(),
                         options={"integer_only": integer_only})
    gm, records = qc.apply(gm, ctx, pipeline)
    return gm, {node.args[0].name: node.args[0] for node, _ in observer_sites(gm)}, records


def test_without_the_option_the_pass_adds_nothing(qc):
    _, plain, records = _observed(qc, False)
    _, before, _ = _observed(qc, False, "canonicalize,fuse,observe")
    assert records[-1].name == "integer-only-observe" and records[-1].changed is False
    assert set(plain) == set(before)


def test_sites_around_every_supported_op(qc):
    gm, sites, _ = _observed(qc, True)
    values = list(sites.values())
    kinds = [v.target for v in values]
    assert kinds.count(aten.softmax.int) == 1 and kinds.count(aten.gelu.default) == 1
    assert kinds.count(aten.layer_norm.default) == 2
    # the softmax operand is observed before the 1/sqrt(d) factor and the additive mask
    assert kinds.count(aten.matmul.default) == 2
    # residual adds: their output (the 16-bit scale) is observed, their linear operands not
    adds = [v for v in values if v.target is aten.add.Tensor]
    assert len(adds) == 2
    for add in adds:
        linear = next(a for a in add.args if a.op == "call_function"
                      and a.target is aten.linear.default)
        assert linear.name not in sites
