"""The cuda-int8 transformer kernels, run by the CPU emulator, against the reference kernels bit
for bit: qmatmul (tensor-core and CUDA-core paths), i_linear, i_softmax, i_layernorm, i_gelu,
i_add.

Shapes from MiniLM (hidden 384, 12 heads of 32, short sequences), small batches; int8 ends
and zero points at both ends, masks with fully masked rows and every broadcast pattern,
rows longer than a block, odd lengths, the int32 input of i_layernorm. One small case of
the tensor-core matmul and the softmax under ThreadSanitizer and AddressSanitizer; NVRTC
compiles for sm_80 and sm_90 with the SASS checked.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qcompile.backends.cuda import emulator, toolchain
from qcompile.backends.cuda import emulator_transformer as et
from qcompile.errors import BackendError
from qcompile.ops import integer_only as io
from qcompile.ops import integer_only_params as params
from qcompile.ops.reference import qmatmul
from qcompile.quant_math import MAX_SHIFT

INT32_MAX = 2**31 - 1
HIDDEN, HEADS, HEAD_DIM = 384, 12, 32


def ints(shape, seed: int, lo: int = -128, hi: int = 127, dtype=torch.int8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, shape, generator=g).to(dtype)


def assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    bad = (got != want).nonzero()
    assert bad.numel() == 0, f"{len(bad)} elements differ, first at {bad[:5].tolist()}"


# ---- qmatmul ------------------------------------------------------------------------------

REQUANT = (1518500250, 22, 3, -128, 127)   # multiplier, shift, out_zp, qmin, qmax


@pytest.mark.parametrize("seq", [16, 24, 17])
def test_attention_matmuls(seq):
    """Q.K^T (K = head dim, tensor cores) and P.V (K = seq: tensor cores at 16, else CUDA cores)."""
    q, k = ints((1, HEADS, seq, HEAD_DIM), seq), ints((1, HEADS, HEAD_DIM, seq), seq + 1)
    assert_same(et.qmatmul_emulated(q, 3, k, -5, *REQUANT), qmatmul(q, 3, k, -5, *REQUANT))
    p, v = ints((1, HEADS, seq, seq), seq + 2), ints((1, HEADS, seq, HEAD_DIM), seq + 3)
    assert_same(et.qmatmul_emulated(p, -128, v, 9, *REQUANT), qmatmul(p, -128, v, 9, *REQUANT))


@pytest.mark.parametrize("path", ["mma", "simt"])
@pytest.mark.parametrize("a_shape,b_shape", [
    ((2, 3, 20, 48), (48, 70)),          # b one matrix for every batch (stride 0)
    ((33, 64), (2, 64, 9)),              # a one matrix
    ((2, 1, 5, 16), (1, 3, 16, 66)),     # both broadcast: expanded in memory
])
def test_broadcast_batches_both_paths(path, a_shape, b_shape):
    a, b = ints(a_shape, 1), ints(b_shape, 2)
    assert_same(et.qmatmul_emulated(a, -7, b, 4, *REQUANT, path=path),
                qmatmul(a, -7, b, 4, *REQUANT))


@pytest.mark.parametrize("path", ["mma", "simt"])
@pytest.mark.parametrize("a_val,a_zp,b_val,b_zp", [
    (-128, 127, -128, 127), (127, -128, 127, -128), (127, -128, -128, 127), (-128, -128, 127, 127)])
def test_extreme_operands_and_requantize(path, a_val, a_zp, b_val, b_zp):
    """|acc| = K * 255 * 255 (past 2^26 at K = 1040), multipliers and shifts at their ends."""
    a = torch.full((3, 1040), a_val, dtype=torch.int8)
    b = torch.full((1040, 5), b_val, dtype=torch.int8)
    for mult, shift, lo, hi in [(INT32_MAX, MAX_SHIFT, -128, 127), (INT32_MAX, 31, -128, 127),
                                (2**30, 1, -3, 4), (0, 5, -128, 127)]:
        args = (mult, shift, -1, lo, hi)
        assert_same(et.qmatmul_emulated(a, a_zp, b, b_zp, *args, path=path),
                    qmatmul(a, a_zp, b, b_zp, *args))


def test_qmatmul_constraints():
    a, b = ints((4, 16), 0), ints((16, 4), 1)
    for bad in [dict(a=a.int()), dict(a_zp=128), dict(b=ints((15, 4), 2)),
                dict(path="mma", a=a[:, :8], b=b[:8]), dict(multiplier=-1), dict(shift=0)]:
        kw = dict(a=a, a_zp=0, b=b, b_zp=0, multiplier=2**30, shift=20, out_zp=0, qmin=-128,
                  qmax=127)
        path = bad.pop("path", None)
        with pytest.raises(emulator.KernelConstraintError):
            et.qmatmul_emulated(**{**kw, **bad}, path=path)
    assert issubclass(emulator.KernelConstraintError, BackendError)


# ---- i_linear -----------------------------------------------------------------------------

def linear_problem(m: int, n: int, k: int, seed: int, bias: bool = True) -> dict:
    w_scales = torch.rand(n, generator=torch.Generator().manual_seed(seed)) * 0.01 + 1e-3
    b = torch.randn(n, generator=torch.Generator().manual_seed(seed)) if bias else None
    bias_q, mult, shift = params.wide_linear_params(0.05, w_scales, b, 0.2)
    return dict(x=ints((2, m // 2, k), seed), x_zp=-11, w=ints((n, k), seed + 1, -127),
                bias=bias_q, multiplier=mult, shift=shift)


@pytest.mark.parametrize("path,k", [("mma", HIDDEN), ("simt", HIDDEN), (None, 40)])
def test_i_linear_matches_reference(path, k):
    problem = linear_problem(32, 72, k, k, bias=path != "simt")
    assert_same(et.i_linear_emulated(**problem, path=path), io.i_linear(**problem))


def test_i_linear_clamps_at_16_bits_and_extreme_channels():
    problem = linear_problem(4, 8, 64, 3)
    problem.update(x=torch.full((2, 2, 64), 127, dtype=torch.int8), x_zp=-128,
                   w=torch.full((8, 64), -128, dtype=torch.int8),
                   multiplier=torch.tensor([INT32_MAX, 1, 0, 2**30] * 2, dtype=torch.int32),
                   shift=torch.tensor([1, MAX_SHIFT, 7, 31, 20, 2, 40, 12], dtype=torch.int32))
    for path in ("mma", "simt"):
        assert_same(et.i_linear_emulated(**problem, path=path), io.i_linear(**problem))


# ---- i_softmax ----------------------------------------------------------------------------

def softmax_args(in_scale: float = 0.15, in_zp: int = -4) -> tuple:
    return params.softmax_params(in_scale, in_zp, params.OutQ(1 / 256, -128),
                                 factor=HEAD_DIM ** -0.5)


@pytest.mark.parametrize("seq", [16, 32, 23])
def test_softmax_attention_with_padding_mask(seq):
    """[B, 1, 1, S] key padding; batch 1 wholly masked (every row gives out_zp)."""
    scores = ints((2, HEADS // 2, seq, seq), seq)
    mask = torch.arange(seq).expand(2, 1, 1, seq) < torch.tensor([seq - 5, 0]).view(2, 1, 1, 1)
    args = softmax_args()
    got = et.i_softmax_emulated(scores, *args, -1, mask)
    assert_same(got, io.i_softmax(scores, *args, -1, mask))
    assert bool((got[1] == -128).all())


@pytest.mark.parametrize("mask_shape", [(20, 20), (2, 1, 20, 1), (3, 20, 20), (2, 3, 1, 20),
                                        (1, 3, 20, 20), (20,)])
def test_softmax_mask_broadcasts(mask_shape):
    scores = ints((2, 3, 20, 20), 5)
    mask = torch.rand(mask_shape, generator=torch.Generator().manual_seed(1)) > 0.5
    mask.view(-1)[:20] = False                                  # some row fully masked
    args = softmax_args(0.3, 11)
    assert_same(et.i_softmax_emulated(scores, *args, -1, mask),
                io.i_softmax(scores, *args, -1, mask))


@pytest.mark.parametrize("n,dim", [(301, -1), (129, 0), (7, 1)])
def test_softmax_long_rows_odd_lengths_other_dims(n, dim):
    shape = [3, 5]
    shape[dim] = n
    scores = ints(tuple(shape), n)
    mask = scores != 0                                           # same shape as the scores
    args = softmax_args(0.05, 0)
    assert_same(et.i_softmax_emulated(scores, *args, dim, mask),
                io.i_softmax(scores, *args, dim, mask))
    assert_same(et.i_softmax_emulated(scores, *args, dim), io.i_softmax(scores, *args, dim))


@pytest.mark.parametrize("in_zp,in_mult,in_shift", [(127, INT32_MAX, 1), (-128, INT32_MAX, 1),
                                                    (0, 2**30, MAX_SHIFT), (5, 1, 31)])
def test_softmax_extreme_inputs(in_zp, in_mult, in_shift):
    scores = torch.cat([torch.full((3, 40), -128), torch.full((3, 40), 127),
                        ints((3, 40), 9).long()]).to(torch.int8)
    scores[6:, ::3] = 127
    args = (in_zp, in_mult, in_shift, INT32_MAX, 31, -3, -128, 127)
    assert_same(et.i_softmax_emulated(scores, *args), io.i_softmax(scores, *args))


# ---- i_layernorm --------------------------------------------------------------------------

def layernorm_args(n: int, in_scale: float, in_zp: int, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    gamma, beta = torch.randn(n, generator=g) * 0.3 + 1, torch.randn(n, generator=g) * 0.1
    return params.layernorm_params(in_scale, in_zp, gamma, beta, 1e-12,
                                   params.OutQ(0.05, 3), n).args()


@pytest.mark.parametrize("n", [HIDDEN, 77])
def test_layernorm_int8_rows(n):
    x = ints((2, 16, n), n)
    x[1, 3] = 5                                                  # constant row: var 0, eps
    x[1, 4] = torch.where(torch.arange(n) % 2 == 0, -128, 127).to(torch.int8)
    args = layernorm_args(n, 0.1, -6, n)
    assert_same(et.i_layernorm_emulated(x, *args), io.i_layernorm(x, *args))


def test_layernorm_int32_residual_input():
    """The 16-bit int32 output of i_add, outlier channels included."""
    x = ints((3, 9, HIDDEN), 4, -3000, 3000, torch.int32)
    x[..., 17] = 32767
    x[2, :, 100] = -32768
    args = layernorm_args(HIDDEN, 0.002, 0, 4)
    assert_same(et.i_layernorm_emulated(x, *args), io.i_layernorm(x, *args))


@pytest.mark.parametrize("value,in_zp", [(-128, 127), (127, -128)])
def test_layernorm_extreme_ends(value, in_zp):
    x = torch.full((2, 200), value, dtype=torch.int8)
    x[1, ::7] = -value - 1
    gamma = torch.tensor([4095, -4095, 1, 0] * 50, dtype=torch.int32)
    beta = torch.tensor([2**20, -2**20, 0, 7] * 50, dtype=torch.int32)
    for eps, mult, shift in [(0, INT32_MAX, 40), (2**62, 2**30, 20), (12345, 1, 1)]:
        args = (in_zp, gamma, beta, eps, mult, shift, -2, -128, 127)
        assert_same(et.i_layernorm_emulated(x, *args), io.i_layernorm(x, *args))


# ---- i_gelu, i_add ------------------------------------------------------------------------

ALL_INT8 = torch.arange(-128, 128, dtype=torch.int8)


@pytest.mark.parametrize("in_scale,in_zp", [(0.05, -128), (0.02, 127), (0.3, 0)])
def test_gelu_every_code(in_scale, in_zp):
    args = params.gelu_params(in_scale, in_zp, params.OutQ(0.03, -120))
    x = torch.cat([ALL_INT8, ALL_INT8.flip(0)[:131]])[1:]      # odd length, offset 1
    assert_same(et.i_gelu_emulated(x, *args), io.i_gelu(x, *args))


def test_gelu_extreme_parameters():
    for args in [(127, INT32_MAX, 1, INT32_MAX, MAX_SHIFT, 0, -128, 127),
                 (-128, INT32_MAX, 31, 1, 1, -128, -128, 127), (0, 0, 5, 2**30, 30, 7, -5, 5)]:
        assert_same(et.i_gelu_emulated(ALL_INT8, *args), io.i_gelu(ALL_INT8, *args))


@pytest.mark.parametrize("a_dtype,b_dtype", [(torch.int8, torch.int8), (torch.int8, torch.int32),
                                             (torch.int32, torch.int32)])
def test_i_add_residual(a_dtype, b_dtype):
    ends = {torch.int8: (-128, 127), torch.int32: (-32768, 32767)}
    a = ints((2, 7, HIDDEN // 8), 1, *ends[a_dtype], a_dtype)
    b = ints((2, 7, HIDDEN // 8), 2, *ends[b_dtype], b_dtype)
    a.view(-1)[:2] = torch.tensor(ends[a_dtype] if a_dtype == torch.int8 else (-2**31, INT32_MAX))
    for args in [params.add_params(0.02, -3, 0.7, 0, 0.01), (127, INT32_MAX, -128, INT32_MAX, 1),
                 (-2**31, 1, INT32_MAX, 0, MAX_SHIFT)]:
        assert_same(et.i_add_emulated(a, args[0], args[1], b, *args[2:]),
                    io.i_add(a, args[0], args[1], b, *args[2:]))


# ---- the planner's view -------------------------------------------------------------------

def test_kernel_choice():
    kernel_for = et.transformer_kernel_for
    assert kernel_for("qmatmul", [(1, 12, 32, 32), (1, 12, 32, 32)])[0] == "qc_qmatmul_int8"
    assert kernel_for("qmatmul", [(1, 12, 24, 24), (1, 12, 24, 32)])[0] == "qc_qmatmul_int8_simt"
    assert kernel_for("qmatmul", [(2, 4, 8), (3, 8, 4)])[0] is None
    assert kernel_for("i_linear", [(2, 16, 384), (1536, 384)])[0] == "qc_i_linear"
    kernel, why = kernel_for("i_softmax", [(2, 12, 16, 16), (2, 1, 1, 16)])
    assert kernel == "qc_i_softmax" and "(r / 192) % 2" in why
    assert "expanded" in kernel_for("i_softmax", [(2, 3, 4, 5), (2, 1, 4, 1)])[1]
    assert "moved last" in kernel_for("i_softmax", [(2, 3, 4, 5), (2, 1, 4, 5)], dim=1)[1]
    assert kernel_for("i_layernorm", [(2, 9000)])[0] is None
    assert kernel_for("i_add", [(2, 3), (1, 3)])[0] is None
    assert kernel_for("i_gelu", [(5,)])[0] == "qc_i_gelu"
    assert kernel_for("qlinear", [(1, 2), (2, 2)])[0] is None


# ---- sanitizers --------------------------------------------------------------------------

DRIVER = r'''#include "transformer.cuh"
#include <fstream>

/* Problem: int32 batch, M, N, K, rows, n, then a [batch*M*K], bt [batch*N*K] int8, then
 * q [rows*n] int8 and mask [rows*n] uint8. Runs qc_qmatmul_int8 (zero points 3, -2) and
 * qc_i_softmax over 2 blocks; writes both outputs. */
static int8_t* alloc(size_t bytes) {
  return static_cast<int8_t*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64));
}

static int8_t* read(std::ifstream& in, size_t bytes) {
  int8_t* p = alloc(bytes);
  in.read(reinterpret_cast<char*>(p), static_cast<std::streamsize>(bytes));
  return p;
}

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  std::ifstream in(argv[1], std::ios::binary);
  int32_t h[6];
  in.read(reinterpret_cast<char*>(h), sizeof(h));
  size_t b = h[0], m = h[1], n = h[2], k = h[3], rows = h[4], len = h[5];
  int8_t *a = read(in, b * m * k), *bt = read(in, b * n * k), *q = read(in, rows * len);
  auto mask = reinterpret_cast<uint8_t*>(read(in, rows * len));
  if (!in) return 3;
  int8_t *y = alloc(b * m * n), *p = alloc(rows * len);
  int32_t args[8] = {0, 1518500250, 20, 1 << 30, 30, -128, -128, 127};
  int rc = qc_qmatmul_int8_launch(h[0], a, bt, y, h[1], h[2], h[3], m * k, n * k, 3, -2,
                                  1 << 30, 18, 0, -128, 127);
  rc |= qc_i_softmax_launch(q, mask, p, h[4], h[5], 1, h[4], args, 2);
  std::ofstream out(argv[2], std::ios::binary);
  out.write(reinterpret_cast<char*>(y), b * m * n).write(reinterpret_cast<char*>(p), rows * len);
  return rc;
}
'''


@pytest.mark.parametrize("sanitizer", ["thread", "address"])
def test_matmul_and_softmax_under_sanitizer(sanitizer):
    reason = emulator.sanitizer_unavailable_reason(sanitizer)
    if reason:
        pytest.skip(reason)
    a, b, q = ints((2, 20, 32), 1), ints((2, 32, 9), 2), ints((3, 150), 3)
    mask = (torch.arange(150) < torch.tensor([150, 0, 77]).view(3, 1)).to(torch.uint8)
    header = np.array([2, 20, 9, 32, 3, 150], dtype=np.int32).tobytes()
    payload = [a, b.transpose(-1, -2).contiguous(), q, mask]
    out = emulator.run_sanitized(DRIVER, sanitizer, header + b"".join(t.numpy().tobytes()
                                                                      for t in payload), "kernels")
    y = torch.frombuffer(bytearray(out), dtype=torch.int8)
    assert_same(y[:360].reshape(2, 20, 9), qmatmul(a, 3, b, -2, 2**30, 18, 0, -128, 127))
    softmax = io.i_softmax(q, 0, 1518500250, 20, 2**30, 30, -128, -128, 127, -1, mask.bool())
    assert_same(y[360:].reshape(3, 150), softmax)


# ---- NVRTC and SASS -----------------------------------------------------------------------

EXPECT = {
    "qc_qmatmul_int8": ("IMMA", "LDSM", "LDGSTS"), "qc_i_linear": ("IMMA", "LDSM", "LDGSTS"),
    "qc_qmatmul_int8_simt": ("BAR",), "qc_i_linear_simt": ("BAR",),
    "qc_i_softmax": ("SHFL", "BAR"), "qc_i_layernorm": ("SHFL", "BAR"),
    "qc_i_gelu": (), "qc_i_add": (),
}


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvrtc_sass(arch, tmp_path):
    if toolchain.problems():
        pytest.skip(f"CUDA pip packages missing: {toolchain.problems()}")
    from qcompile.backends.cuda import nvrtc, sass
    compiled = nvrtc.compile_kernel(et.SOURCE, "qc_transformer", arch, cache_dir=tmp_path,
                                    include_dirs=(str(emulator.KERNEL_DIR),))
    text = sass.sass_text(compiled.cubin)
    for kernel, expect in EXPECT.items():
        assert sass.check_kernel(compiled, expect, max_registers=128, max_shared=48 * 1024,
                                 function=kernel, sass=text) == []
    assert sass.sass_summary(text)["qc_qmatmul_int8"]["IMMA"] >= 16   # 4 warps x 32x32 per k-step
    assert compiled.resources["qc_i_softmax"]["shared"] == 8 * 4        # one int64 per warp
