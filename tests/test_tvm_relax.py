"""The GEMM PrimFuncs embedded in a Relax module (R.call_tir) stay bit-exact."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("tvm")

from qcompile.backends.tvm import cpu_features  # noqa: E402
from qcompile.backends.tvm.qlinear import build_qlinear, build_qlinear_f32  # noqa: E402
from qcompile.backends.tvm.relax_embed import RelaxRunner, qlinear_module  # noqa: E402
from qcompile.ops.float_out import qlinear_f32  # noqa: E402
from qcompile.ops.reference import qlinear  # noqa: E402


@pytest.mark.parametrize("path", [cpu_features.choose_path(), "generic"])
def test_two_layer_int8_mlp_in_relax(path):
    g = torch.Generator().manual_seed(0)
    k, h, n = 64, 96, 40
    w1 = torch.randint(-127, 128, (h, k), dtype=torch.int8, generator=g)
    w2 = torch.randint(-127, 128, (n, h), dtype=torch.int8, generator=g)
    b1 = torch.randint(-1000, 1000, (h,), dtype=torch.int32, generator=g)
    m1 = torch.randint(2**30, 2**31, (h,), dtype=torch.int32, generator=g)
    s1 = torch.full((h,), 38, dtype=torch.int32)
    scale, bias = torch.rand(n, generator=g) * 1e-3, torch.randn(n, generator=g)
    k1 = build_qlinear(w1, 3, b1, m1, s1, -128, -128, 127, path=path)  # fused ReLU
    k2 = build_qlinear_f32(w2, -128, bias, scale, path=path)
    run = RelaxRunner(qlinear_module([k1, k2]), path)
    for m in (1, 7, 33):  # one compiled module, symbolic batch
        x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
        want = qlinear_f32(qlinear(x, 3, w1, b1, m1, s1, -128, -128, 127), -128, w2, bias, scale)
        got = run(x)
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))


def test_emit_gemm_on_3d_symbolic_input():
    import tvm
    from tvm import relax

    from qcompile.backends.tvm.relax_embed import emit_gemm

    g = torch.Generator().manual_seed(1)
    w = torch.randint(-127, 128, (24, 16), dtype=torch.int8, generator=g)
    mult = torch.full((24,), 2**30, dtype=torch.int32)
    shift = torch.full((24,), 33, dtype=torch.int32)
    path = cpu_features.choose_path()
    kern = build_qlinear(w, -3, None, mult, shift, 2, -128, 127, path=path)
    b = tvm.tirx.Var("b", "int64")
    x = relax.Var("x", relax.TensorType((b, 5, 16), "int8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(emit_gemm(bb, kern, x))
        bb.emit_func_output(out)
    run = RelaxRunner(bb.get(), path)
    xs = torch.randint(-128, 128, (3, 5, 16), dtype=torch.int8, generator=g)
    assert torch.equal(run(xs), qlinear(xs, -3, w, None, mult, shift, 2, -128, 127))
