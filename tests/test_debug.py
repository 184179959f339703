"""The numeric debugger: bisect names the quantizing pass; sensitivity ranks layers."""
import warnings

import torch

import qcompile
from qcompile import debug

from tiny_models import MLP

warnings.filterwarnings("ignore", category=qcompile.QCompileWarning)


def _model():
    torch.manual_seed(0)
    model = MLP(8, 16, 16, 4).eval()
    with torch.no_grad():
        model.fc2.weight[0, 0] = 60.0       # one outlier weight ruins fc2's per-channel grid
    return model


def test_bisect_names_the_pass_that_quantizes():
    x = torch.randn(16, 8)
    result = debug.bisect(_model(), (x,), [x])
    assert result.culprit == "insert-qdq"
    assert [name for name, _ in result.stages][-1] == "cleanup"
    assert "insert-qdq" in str(result)


def test_bisect_with_a_user_pass_that_breaks_numerics():
    @qcompile.register_pass("scale-outputs-wrong", replace=True)
    def scale_outputs_wrong(gm, ctx):
        """Multiplies the output by 1.5: a pass that breaks numerics on purpose."""
        out = next(iter(gm.graph.find_nodes(op="output")))
        value = out.args[0][0]
        with gm.graph.inserting_before(out):
            bad = gm.graph.call_function(torch.ops.aten.mul.Tensor, (value, 1.5))
        out.args = ((bad,),)
        return gm

    x = torch.randn(16, 8)
    try:
        result = debug.bisect(_model(), (x,), [x],
                              pipeline="canonicalize,scale-outputs-wrong,fuse")
    finally:
        qcompile.registry.unregister_pass("scale-outputs-wrong")
    assert result.culprit == "scale-outputs-wrong"


def test_sensitivity_ranks_and_keep_float_meets_budget():
    x = torch.randn(32, 8)
    model = _model()
    ranking = debug.sensitivity(model, (x,), [x])
    assert len(ranking.layers) == 3
    assert ranking.layers[0].sqnr_db <= ranking.layers[-1].sqnr_db
    kept, achieved = debug.keep_float_for(model, (x,), [x], min_sqnr_db=ranking.layers[0].sqnr_db + 1)
    assert achieved >= ranking.layers[0].sqnr_db + 1
    assert kept and kept[0] == ranking.layers[0].layer
