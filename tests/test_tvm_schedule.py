"""Default CPU schedules (backends/tvm/schedule.py): the rewritten float math stays accurate,
NaN checks survive, rounding is exact, and scheduled functions compute what unscheduled
ones do."""
import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm")

from tvm import te, tirx  # noqa: E402

from qcompile.backends.tvm import schedule  # noqa: E402
from qcompile.backends.tvm.cpu_features import choose_path, llvm_target  # noqa: E402

N = 4096


def _run(fcompute, x: np.ndarray, out_dtype="float32", scheduled=True) -> np.ndarray:
    target = llvm_target(choose_path())
    a = te.placeholder(x.shape, str(x.dtype))
    b = te.compute(x.shape, lambda *i: fcompute(a(*i)))
    func = te.create_prim_func([a, b])
    if scheduled:
        func = schedule.schedule_func(func, target)
    exe = tvm.compile(tvm.IRModule({"f": func.with_attr("global_symbol", "f")}), target=target)
    out = tvm.runtime.tensor(np.zeros(x.shape, out_dtype), tvm.cpu())
    exe["f"](tvm.runtime.tensor(x, tvm.cpu()), out)
    return out.numpy()


def test_exp_and_erf_polynomials_are_accurate():
    x = np.linspace(-87, 80, N).astype("float32")
    got = _run(tirx.exp, x)
    want = torch.exp(torch.from_numpy(x).double()).numpy()
    assert np.max(np.abs(got - want) / want) < 2e-7
    assert _run(tirx.exp, np.array([-np.inf, -3.4e38] * 8, "float32")).max() == 0.0
    x = np.linspace(-6, 6, N).astype("float32")
    got = _run(tirx.erf, x)
    assert np.max(np.abs(got - torch.erf(torch.from_numpy(x).double()).numpy())) < 1e-6


def test_isnan_survives_no_nans_fp_math():
    x = np.array([np.nan, 1.0, -np.inf, np.inf, 0.0, -np.nan, 3e38, -1e-45] * 8, "float32")
    got = _run(lambda v: tirx.Select(tirx.isnan(v), tirx.const(1.0, "float32"),
                                     tirx.const(0.0, "float32")), x)
    assert np.array_equal(got, np.isnan(x).astype("float32"))


def test_nearbyint_rounds_half_to_even_exactly():
    x = np.concatenate([np.arange(-8, 8, 0.5), np.random.default_rng(0).normal(0, 100, N)])
    x = x.astype("float32")
    assert np.array_equal(_run(tirx.nearbyint, x), np.round(x))


def test_scaled_add_keeps_two_roundings():
    """a * s + b computed with an fma would differ in the last bit; fenced, it is torch's."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1e4, N).astype("float32")
    s, b = np.float32(0.0123456789), np.float32(-3.3333333)
    got = _run(lambda v: v * tirx.const(float(s), "float32") + tirx.const(float(b), "float32"), x)
    want = (torch.from_numpy(x) * torch.tensor(s)) + torch.tensor(b)
    assert torch.equal(torch.from_numpy(got), want)


def _scheduled(func) -> bool:
    out = schedule.schedule_func(func, llvm_target(choose_path()))
    return bool(out.attrs.get(schedule.SCHEDULED, False)) if out.attrs else False


def test_generic_rule_applies_to_elementwise_matmul_and_padding():
    """A rule that raises falls back to the unscheduled function silently: catch that here."""
    n = tirx.Var("n", "int64")
    a = te.placeholder((n, 64, 384), "float32")
    q = te.compute(a.shape, lambda *i: tirx.Cast("int8", tirx.nearbyint(a(*i) * 0.5)))
    assert _scheduled(te.create_prim_func([a, q]))
    x = te.placeholder((n, 12, 64, 32), "int32")
    y = te.placeholder((n, 12, 32, 64), "int32")
    k = te.reduce_axis((0, 32), "k")
    mm = te.compute((n, 12, 64, 64), lambda b, h, i, j: te.sum(x[b, h, i, k] * y[b, h, k, j],
                                                                axis=k))
    assert _scheduled(te.create_prim_func([x, y, mm]))
    img = te.placeholder((n, 8, 16, 16), "int8")
    pad = te.compute((n, 8, 18, 18), lambda b, c, i, j: tirx.if_then_else(
        tirx.all(i >= 1, i < 17, j >= 1, j < 17), img[b, c, i - 1, j - 1], tirx.const(3, "int8")))
    assert _scheduled(te.create_prim_func([img, pad]))
