"""cpu-int8 lowering of the integer-only ops: the same integers as the reference kernels, op
by op (extreme inputs, zero points at both ends, masked rows, long rows), on the generic
path and the best one this CPU runs, then on MiniLM with its real weights."""
import math
import warnings

import pytest
import torch
from torch import nn

import qcompile
from qcompile.ops.integer_only import isqrt as reference_isqrt
from qcompile.ops.integer_only_params import (OutQ, add_params, gelu_params, layernorm_params,
                                              softmax_params, wide_linear_params)
from qcompile.recipes import QuantOptions

pytest.importorskip("tvm")
warnings.filterwarnings("ignore", category=qcompile.QCompileWarning)
pytestmark = pytest.mark.usefixtures("one_thread")
Q = torch.ops.qcompile


def _paths() -> list:
    from qcompile.backends.tvm.cpu_features import detect
    best = detect().paths()[0]
    return ["generic"] if best == "generic" else ["generic", best]


PATHS = _paths()


class Call(nn.Module):
    """forward(*tensors) = op(*tensors spliced into args); tensor constants are buffers."""

    def __init__(self, op, template, **buffers):
        super().__init__()
        self.op, self.template = op, template
        for name, value in buffers.items():
            self.register_buffer(name, value)

    def forward(self, *xs):
        args = [xs[a[1]] if isinstance(a, tuple) and a[0] == "in" else
                getattr(self, a[1]) if isinstance(a, tuple) and a[0] == "buf" else a
                for a in self.template]
        return self.op(*args)


def _check(module, batches, path):
    """Build `module` on cpu-int8 (once per input shape); every batch must give torch.equal
    results to the reference kernels."""
    from qcompile.backends.tvm.backend import build
    gm, runners = torch.fx.symbolic_trace(module), {}
    for batch in batches:
        key = tuple(tuple(x.shape) for x in batch)
        if key not in runners:
            runners[key] = build(gm, QuantOptions(cpu_path=path, cache=False), batch)
        want, got = module(*batch), runners[key](*batch)
        assert got.dtype == want.dtype and torch.equal(got, want), \
            f"max diff {(got.long() - want.long()).abs().max()}"


def _int8(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-128, 128, shape, generator=g, dtype=torch.int8)


def _extremes(shape) -> list:
    lo, hi = torch.full(shape, -128, dtype=torch.int8), torch.full(shape, 127, dtype=torch.int8)
    alternating = torch.where(torch.arange(shape[-1]) % 2 == 0, lo, hi)
    g = torch.Generator().manual_seed(2)
    low = torch.randint(-128, -100, shape, generator=g, dtype=torch.int8)
    return [lo, hi, alternating, low, _int8(*shape, seed=1)]


# ---- softmax ---------------------------------------------------------------------------

SOFTMAX_CASES = [(0.1, -128, OutQ(1 / 256, -128)), (0.05, 127, OutQ(1 / 255, 127)),
                 (2.0, 0, OutQ(1 / 256, -128)), (1e-3, 3, OutQ(1 / 127, 0, -127, 127))]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", range(len(SOFTMAX_CASES)))
def test_softmax_with_masked_rows(case, path):
    in_scale, in_zp, out = SOFTMAX_CASES[case]
    args = softmax_params(in_scale, in_zp, out, factor=0.25)
    module = Call(Q.i_softmax.default, [("in", 0), *args, -1, ("in", 1)])
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[0, ..., -3:] = False
    mask[1] = False                                      # every position masked
    batches = [(x, mask) for x in _extremes((2, 3, 5, 7))]
    _check(module, batches, path)


@pytest.mark.parametrize("path", PATHS)
def test_softmax_long_rows_and_other_axis(path):
    args = softmax_params(0.08, -20, OutQ(1 / 256, -128))
    _check(Call(Q.i_softmax.default, [("in", 0), *args, -1]),
           [(x,) for x in _extremes((3, 1500))], path)
    _check(Call(Q.i_softmax.default, [("in", 0), *args, 1]),
           [(x,) for x in _extremes((2, 9, 4))], path)


# ---- GELU ------------------------------------------------------------------------------

@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("in_scale, in_zp, out", [
    (0.05, -128, OutQ(0.03, -128)), (0.1, 127, OutQ(0.05, 127)), (0.02, 0, OutQ(0.01, -100)),
    (1.5, 5, OutQ(0.5, 0))])
def test_gelu_every_int8_value(in_scale, in_zp, out, path):
    module = Call(Q.i_gelu.default, [("in", 0), *gelu_params(in_scale, in_zp, out)])
    every = torch.arange(-128, 128, dtype=torch.int16).to(torch.int8).reshape(2, 128)
    _check(module, [(every,), *((x,) for x in _extremes((3, 64)))], path)


# ---- LayerNorm, i_add, i_linear --------------------------------------------------------

def _layernorm(n, in_scale, in_zp, out, seed=0):
    g = torch.Generator().manual_seed(seed)
    consts = layernorm_params(in_scale, in_zp, torch.randn(n, generator=g) * 2,
                              torch.randn(n, generator=g), 1e-5, out, n)
    args = consts.args()
    return Call(Q.i_layernorm.default, [("in", 0), args[0], ("buf", "gamma"), ("buf", "beta"),
                                        *args[3:]], gamma=consts.gamma, beta=consts.beta)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("n, in_zp, out", [(32, -128, OutQ(0.05, -128)),
                                           (384, 127, OutQ(0.03, 127)),
                                           (4096, 0, OutQ(0.02, 3))])
def test_layernorm_int8_input(n, in_zp, out, path):
    module = _layernorm(n, 0.04, in_zp, out)
    constant = torch.full((2, n), 17, dtype=torch.int8)      # zero variance: den from eps
    _check(module, [(x,) for x in _extremes((3, n))] + [(constant,)], path)


@pytest.mark.parametrize("path", PATHS)
def test_layernorm_int32_input(path):
    n = 384
    module = _layernorm(n, 0.004, 0, OutQ(0.04, -5))
    g = torch.Generator().manual_seed(3)
    wide = torch.randint(-(1 << 15), 1 << 15, (2, 4, n), generator=g, dtype=torch.int32)
    outlier = wide.clone()
    outlier[..., 7] = (1 << 15) - 1                          # one huge channel
    small = torch.randint(-3, 4, (2, 4, n), generator=g, dtype=torch.int32)
    ends = torch.where(torch.arange(n) % 2 == 0, -(1 << 15), (1 << 15) - 1).to(torch.int32)
    _check(module, [(wide,), (outlier,), (small,), (ends.expand(2, 4, n).contiguous(),)], path)


@pytest.mark.parametrize("path", PATHS)
def test_add_int8_and_int32_operands(path):
    a_zp, m_a, b_zp, m_b, shift = add_params(0.05, -128, 0.002, 0, 0.01)
    module = Call(Q.i_add.default, [("in", 0), a_zp, m_a, ("in", 1), b_zp, m_b, shift])
    g = torch.Generator().manual_seed(4)
    wide = torch.randint(-(1 << 15), 1 << 15, (3, 5, 16), generator=g, dtype=torch.int32)
    batches = [(x, wide) for x in _extremes((3, 5, 16))]
    batches.append((_int8(3, 5, 16), torch.full((3, 5, 16), (1 << 15) - 1, dtype=torch.int32)))
    _check(module, batches, path)
    args = add_params(0.05, 127, 0.03, -128, 0.2)
    module = Call(Q.i_add.default, [("in", 0), args[0], args[1], ("in", 1), *args[2:]])
    _check(module, [(x, y) for x, y in zip(_extremes((4, 8)), reversed(_extremes((4, 8))))],
           path)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("x_zp, with_bias, k", [(-128, True, 384), (127, False, 64),
                                                (0, True, 1536)])
def test_linear_to_16_bits(x_zp, with_bias, k, path):
    g = torch.Generator().manual_seed(k)
    w = torch.randint(-127, 128, (48, k), generator=g, dtype=torch.int8)
    w[0] = 127                                               # the largest accumulator
    w[1] = -127
    w_scales = torch.rand(48, generator=g) * 0.01 + 1e-3
    bias = torch.randn(48, generator=g) if with_bias else None
    bias_q, mult, shift = wide_linear_params(0.05, w_scales, bias, 1e-3)
    buffers = dict(w=w, multiplier=mult, shift=shift)
    if with_bias:
        buffers["bias"] = bias_q
    template = [("in", 0), x_zp, ("buf", "w"), ("buf", "bias") if with_bias else None,
                ("buf", "multiplier"), ("buf", "shift")]
    module = Call(Q.i_linear.default, template, **buffers)
    _check(module, [(x,) for x in _extremes((2, 3, k))], path)


# ---- isqrt over the range i_layernorm hands it -----------------------------------------

def _isqrt_inputs() -> torch.Tensor:
    """0 <= n < 2**63: every n below 2**20, s*s - 1, s*s, s*s + 1 for roots s spread over
    [2**10, 2**31.5), 2**k - 1, 2**k, 2**k + 1, the values (var << 12) + eps of i_layernorm,
    and random n."""
    g = torch.Generator().manual_seed(0)
    roots = torch.unique(torch.cat([
        torch.logspace(10, 31.5, 20000, base=2, dtype=torch.float64).to(torch.int64),
        torch.randint(1 << 10, 3037000499, (20000,), generator=g)]))
    squares = roots * roots
    powers = torch.tensor([1 << k for k in range(63)], dtype=torch.int64)
    shaped = (torch.randint(0, 1 << 50, (20000,), generator=g) << 12) + \
        torch.randint(0, 1 << 40, (20000,), generator=g)
    values = torch.cat([torch.arange(1 << 20), squares - 1, squares, squares + 1, powers - 1,
                        powers, powers + 1, shaped, torch.randint(0, 2 ** 63 - 1, (50000,),
                                                                  generator=g),
                        torch.tensor([2 ** 63 - 1, 2 ** 62])])
    return values[(values >= 0)]


@pytest.mark.parametrize("path", PATHS)
def test_isqrt_fixed_rounds_equal_the_newton_loop(path):
    import tvm
    from tvm import relax

    from qcompile.backends.tvm.cpu_features import llvm_target
    from qcompile.backends.tvm.relax_int_math import isqrt
    from qcompile.backends.tvm.schedule import relax_pipeline
    bb = relax.BlockBuilder()
    n = relax.Var("n", relax.TensorType((tvm.tirx.Var("m", "int64"), 1), "int64"))
    with bb.function("main", [n]):
        with bb.dataflow():
            out = bb.emit_output(isqrt(n))
        bb.emit_func_output(out)
    target = llvm_target(path)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=target,
                                          relax_pipeline=relax_pipeline(target)), tvm.cpu())
    values = _isqrt_inputs()[:, None]
    got = torch.from_dlpack(vm["main"](tvm.runtime.from_dlpack(values)))
    want = reference_isqrt(values)
    exact = torch.tensor([math.isqrt(v) for v in values.flatten().tolist()])
    assert torch.equal(got, want) and torch.equal(got.flatten(), exact)


# ---- whole models ----------------------------------------------------------------------

@pytest.mark.parametrize("path", PATHS)
def test_transformer_block_bit_exact(path):
    from tiny_models import EncoderBlock as Block
    from tiny_models import encoder_calibration as _calibration
    from tiny_models import encoder_inputs as _inputs
    torch.manual_seed(0)
    model, x = Block().eval(), _inputs(7)
    kwargs = dict(example_inputs=x, calibration_data=_calibration(8),
                  options={"integer_only": True, "cpu_path": path, "cache": False})
    ref = qcompile.compile(model, target="reference", **kwargs)
    cpu = qcompile.compile(model, target="cpu-int8", **kwargs)
    for scale in (1.0, 30.0):                              # 30: saturates every int8 step
        batch = (x[0] * scale, x[1])
        assert torch.equal(ref(*batch), cpu(*batch))
    kernels = {r.kernel.split(":")[1] for r in cpu.report.nodes if r.kernel}
    assert {"i_softmax", "i_layernorm", "i_gelu", "i_add", "i_linear"} <= kernels


def test_transformer_block_on_npu_int8_c_model():
    """npu-int8 reuses these converters on the generic path: every integer-only op runs in
    its C model (no float kernel, static isqrt), with the reference's integers."""
    pytest.importorskip("qcompile.backends.npu.backend")
    from tiny_models import EncoderBlock as Block
    from tiny_models import encoder_calibration as _calibration
    from tiny_models import encoder_inputs as _inputs
    torch.manual_seed(0)
    model, x = Block().eval(), _inputs(7)
    kwargs = dict(example_inputs=x, calibration_data=_calibration(8),
                  options={"integer_only": True, "cache": False})
    ref = qcompile.compile(model, target="reference", **kwargs)
    npu = qcompile.compile(model, target="npu-int8", **kwargs)
    for scale in (1.0, 30.0):
        assert torch.equal(ref(x[0] * scale, x[1]), npu(x[0] * scale, x[1]))
    kernels = {r.kernel for r in npu.report.nodes if r.kernel}
    assert {f"npu-c:{op}" for op in ("i_softmax", "i_layernorm", "i_gelu", "i_add",
                                      "i_linear")} <= kernels


MAX_LENGTH = 32


@pytest.mark.slow
def test_minilm_integer_only_bit_exact():
    minilm = pytest.importorskip("qcompile.zoo.minilm")
    from qcompile.zoo.sentences import calibration_sentences, evaluation_sentences
    model, tokenizer = minilm.load_minilm()
    encoder = minilm.MiniLMEncoder(model).eval()
    calibration = calibration_sentences()[:16]
    batches = [minilm.tokenize(tokenizer, calibration[i:i + 8], MAX_LENGTH) for i in (0, 8)]
    kwargs = dict(example_inputs=minilm.tokenize(tokenizer, calibration[:2], MAX_LENGTH),
                  calibration_data=batches, options={"integer_only": True, "cache": False})
    ref = qcompile.compile(encoder, target="reference", **kwargs)
    cpu = qcompile.compile(encoder, target="cpu-int8", **kwargs)
    sentences = evaluation_sentences()[:8]
    for chunk in (sentences[:2], sentences[2:]):
        ids, mask = minilm.tokenize(tokenizer, chunk, MAX_LENGTH)
        assert torch.equal(ref(ids, mask), cpu(ids, mask))
