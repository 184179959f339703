"""Quantization-aware training: prepare_qat's fake quantization, qat-freeze, and compile()."""
import warnings

import pytest
import torch

import qcompile
from qcompile.passes.quantize.fake_quant import FakeQuantSite, WeightFakeQuant

from tiny_models import MLP, ConvMLP, image_batches

warnings.filterwarnings("ignore", category=qcompile.QCompileWarning)


def _sqnr(want, got) -> float:
    noise = (want - got).pow(2).sum().clamp(min=1e-30)
    return float(10 * torch.log10(want.pow(2).sum() / noise))


def test_untrained_qat_compiles_to_the_ptq_integer_graph():
    torch.manual_seed(0)
    batches, model = image_batches(), ConvMLP().eval()
    qat = qcompile.prepare_qat(model, example_inputs=batches[0], calibration_data=batches)
    modules = list(qat.graph_module.modules())
    assert any(isinstance(m, FakeQuantSite) for m in modules)
    assert sum(isinstance(m, WeightFakeQuant) for m in modules) == 3  # conv, fc1, fc2
    cm = qcompile.compile(qat.eval(), example_inputs=batches[0])
    ptq = qcompile.compile(model, example_inputs=batches[0], calibration_data=batches,
                           options={"weight_calibration": "minmax"})
    assert cm.graph.code == ptq.graph.code
    for x in batches:
        assert torch.equal(cm(x), ptq(x))
        assert torch.allclose(qat(x), cm(x), atol=1e-6)  # the simulation is the integers


def _distill(model, qat, batches, steps=300):
    optimizer = torch.optim.Adam([{"params": qat.weight_parameters(), "lr": 3e-4},
                                  {"params": qat.scale_parameters(), "lr": 1e-2}])
    qat.train()
    for step in range(steps):
        x = batches[step % len(batches)]
        with torch.no_grad():
            want = model(x)
        loss = torch.nn.functional.mse_loss(qat(x), want)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return qat.eval()


def test_training_recovers_what_ptq_loses_and_compiles_to_the_learned_scales():
    torch.manual_seed(1)
    model = MLP(16, 64, 64, 8).eval()
    with torch.no_grad():  # one hidden unit 50x larger: per-tensor int8 loses the others
        model.fc1.weight[0] *= 50
        model.fc1.bias[0] *= 50
        model.fc2.weight[:, 0] /= 50
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(32, 16, generator=g) for _ in range(8)]
    options = {"weight_calibration": "minmax", "calibration": "minmax"}
    ptq = qcompile.compile(model, example_inputs=(batches[0],), calibration_data=batches,
                           options=options)
    qat = qcompile.prepare_qat(model, example_inputs=(batches[0],), calibration_data=batches,
                               options={"calibration": "minmax"})
    before = {k: v.scale for k, v in qat.activation_qparams().items()}
    original = {k: v.clone() for k, v in model.state_dict().items()}
    _distill(model, qat, batches)
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    after = qat.activation_qparams()
    assert any(after[k].scale != before[k] for k in before), "scales were learned"
    cm = qcompile.compile(qat, example_inputs=(batches[0],))
    quantize_scales = {n.args[1] for n in cm.graph.graph.nodes
                       if n.target is torch.ops.qcompile.quantize.default}
    assert quantize_scales <= {qp.scale for qp in after.values()}
    held_out = torch.randn(64, 16, generator=g)
    with torch.no_grad():
        want = model(held_out)
        assert _sqnr(want, cm(held_out)) > _sqnr(want, ptq(held_out)) + 2.0
        # the integers match the simulation up to rare one-step requantize rounding ties
        assert _sqnr(qat(held_out), cm(held_out)) > 35.0


def test_compiling_in_training_mode_is_an_error():
    torch.manual_seed(2)
    x = torch.randn(4, 8)
    qat = qcompile.prepare_qat(MLP(8, 8, 4).eval(), example_inputs=(x,))
    with pytest.raises(qcompile.RecipeError, match="training mode"):
        qcompile.compile(qat.train(), example_inputs=(x,))


def test_only_static_int8_recipes_train():
    with pytest.raises(qcompile.RecipeError, match="supports w8a8"):
        qcompile.prepare_qat(MLP(8, 4).eval(), example_inputs=(torch.randn(2, 8),),
                             recipe="w4a16-rtn")
