"""Weight-only int8 (w8a16-rtn): the qlinear_w8 contract, insert-qdq and its lowering."""
import warnings

import pytest
import torch

import qcompile
from qcompile.instruments import sqnr_db
from qcompile.ops import reference
from qcompile.ops.weight_only import dequantize_w8, qlinear_w8
from qcompile.weight_ranges import weight_scales

from tiny_models import ConvMLP, image_batches

warnings.filterwarnings("ignore", category=qcompile.QCompileWarning)
Q = torch.ops.qcompile


def _int8(w):
    scales = weight_scales(w, "minmax")
    return reference.quantize_per_channel(w, scales, 0, -127, 127), scales


def test_op_is_a_float_linear_on_the_exactly_dequantized_weight():
    torch.manual_seed(0)
    w, x, b = torch.randn(12, 40), torch.randn(3, 5, 40), torch.randn(12)
    wq, scales = _int8(w)
    dense = wq.double() * scales.double()[:, None]          # exact product ...
    assert torch.equal(dequantize_w8(wq, scales), dense.float())   # ... rounded once
    want = torch.nn.functional.linear(x, dense.float(), b)
    assert torch.equal(Q.qlinear_w8(x, wq, scales, b), want)
    assert torch.equal(qlinear_w8(x, wq, scales, None),
                       torch.nn.functional.linear(x, dense.float()))


def test_op_checks_its_operands():
    wq, scales = _int8(torch.randn(4, 8))
    with pytest.raises(ValueError, match="float32 activations"):
        qlinear_w8(torch.randn(2, 8, dtype=torch.float64), wq, scales, None)
    with pytest.raises(ValueError, match="scales must have shape"):
        dequantize_w8(wq, scales[:3])
    with pytest.raises(ValueError, match="int8"):
        dequantize_w8(wq.to(torch.int32), scales)


def test_fake_kernel_gives_the_shape():
    with torch._subclasses.FakeTensorMode():
        wq, scales = torch.empty(6, 8, dtype=torch.int8), torch.empty(6)
        out = Q.qlinear_w8(torch.empty(2, 3, 8), wq, scales, None)
    assert out.shape == (2, 3, 6) and out.dtype == torch.float32


def test_recipe_lowers_every_linear_and_keeps_the_conv_float(tmp_path):
    torch.manual_seed(0)
    model, batches = ConvMLP().eval(), image_batches()
    cm = qcompile.compile(model, example_inputs=(batches[0],), recipe="w8a16-rtn")
    ops = [n.target for n in cm.graph.graph.nodes if n.op == "call_function"]
    assert ops.count(Q.qlinear_w8.default) == 2
    assert Q.qconv2d.default not in ops and Q.quantize.default not in ops
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        w8 = sqnr_db(model(x), cm(x))
        w4 = sqnr_db(model(x), qcompile.compile(model, example_inputs=(batches[0],),
                                                recipe="w4a16-rtn",
                                                options={"group_size": 8})(x))
    assert w8 > w4 + 10                       # 8-bit rows beat 4-bit groups by far
    cm.save(str(tmp_path / "w8.qcm"))
    assert torch.equal(qcompile.load(str(tmp_path / "w8.qcm"))(x), cm(x))


def test_lowered_weights_are_what_insert_qdq_rounded(qc):
    torch.manual_seed(0)
    model, batches = ConvMLP().eval(), image_batches()
    gm, _ = qc.run(model, batches[0], "canonicalize,fuse,methods,observe,calibrate,insert-qdq,"
                   "lower-int8", recipe="w8a16-rtn", options={"weight_calibration": "minmax"})
    fc1 = qc.calls(gm, Q.qlinear_w8.default)[0]
    wq, scales = _int8(model.fc1.weight.detach())
    assert torch.equal(qc.const(gm, fc1.args[1]), wq)
    assert torch.equal(qc.const(gm, fc1.args[2]), scales)
