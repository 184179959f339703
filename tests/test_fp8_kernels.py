"""fp8 reference kernels: saturating round-to-nearest-even quantization and the exact
accumulator, checked against slow implementations in Python fractions and integers."""
import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

import qcompile  # noqa: F401  (registers the qcompile ops)
from qcompile.ops import fp8

Q = torch.ops.qcompile
FORMATS = ("e4m3", "e5m2")


def finite_values(fmt: str) -> torch.Tensor:
    """Every finite value of the format, from all 256 bit patterns."""
    values = torch.arange(256, dtype=torch.uint8).view(fp8.FORMATS[fmt].dtype).float()
    return values[torch.isfinite(values)]


def random_fp8(shape, fmt: str, generator) -> torch.Tensor:
    """Uniform over all finite codes: max finite values, subnormals and zeros included."""
    values = finite_values(fmt)
    index = torch.randint(len(values), shape, generator=generator)
    return values[index].to(fp8.FORMATS[fmt].dtype)


def nearest_even(x: float, fmt: str) -> float:
    """The finite value nearest to x, ties to the even code; beyond +-max saturates."""
    top = fp8.FORMATS[fmt].max
    x = min(max(x, -top), top)
    codes = torch.arange(256, dtype=torch.uint8)
    values = codes.view(fp8.FORMATS[fmt].dtype).double()
    best = None
    for code, value in zip(codes.tolist(), values.tolist()):
        if not math.isfinite(value):
            continue
        key = (abs(value - x), code & 1)
        if best is None or key < best[0]:
            best = (key, value)
    return best[1]


def round_to_float32(q: Fraction) -> float:
    """An exact rational rounded to float32, to nearest even (normal range)."""
    if q == 0:
        return 0.0
    sign, q = (-1 if q < 0 else 1), abs(q)
    e = q.numerator.bit_length() - q.denominator.bit_length()
    e += 1 if q >= Fraction(2) ** (e + 1) else (-1 if q < Fraction(2) ** e else 0)
    significand = round(q / Fraction(2) ** (e - 23))          # Fraction round: half to even
    return sign * significand * 2.0 ** (e - 23)


def slow_linear(x8, x_scale, w8, w_scale, bias):
    """Per output element: exact Fraction dot product, then the float32 epilogue."""
    xs, ws = x8.double().tolist(), w8.double().tolist()
    out = torch.empty(len(xs), len(ws))
    for i, row in enumerate(xs):
        for c, col in enumerate(ws):
            exact = sum(Fraction(a) * Fraction(b) for a, b in zip(row, col))
            dot = torch.tensor(round_to_float32(exact), dtype=torch.float32)
            scale = torch.tensor(x_scale, dtype=torch.float32) * w_scale[c % len(w_scale)]
            out[i, c] = dot * scale + (bias[c] if bias is not None else 0.0)
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantize_rounds_to_nearest_even_and_saturates(fmt):
    gen = torch.Generator().manual_seed(0)
    values = finite_values(fmt).double().unique()
    mids = (values[1:] + values[:-1]) / 2                       # exact halfway points
    top = fp8.FORMATS[fmt].max
    x = torch.cat([mids, values, torch.randn(300, generator=gen) * top / 4,
                   torch.tensor([top * 1.01, -top * 3, 1e30, float("inf"), float("-inf")])])
    x = x.float()
    got = Q.quantize_fp8(x, 1.0, fmt).double().tolist()
    assert got == [nearest_even(float(v), fmt) for v in x.double().tolist()]
    nan = Q.quantize_fp8(torch.tensor([float("nan")]), 1.0, fmt)
    assert nan.float().item() == 0.0


def test_quantize_divides_by_the_scale_in_float32():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(1)) * 3
    scale = 0.0173
    want = fp8.saturate_to_fp8(x / torch.tensor(scale, dtype=torch.float32), fp8.FORMATS["e4m3"])
    assert torch.equal(Q.quantize_fp8(x, scale, "e4m3").view(torch.uint8), want.view(torch.uint8))
    with pytest.raises(ValueError, match="e4m3, e5m2"):
        Q.quantize_fp8(x, 1.0, "e3m4")
    with pytest.raises(ValueError, match="positive"):
        Q.quantize_fp8(x, 0.0, "e4m3")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_linear_matches_exact_fractions(fmt, per_channel):
    gen = torch.Generator().manual_seed(2)
    x8, w8 = random_fp8((4, 37), fmt, gen), random_fp8((5, 37), fmt, gen)
    w_scale = torch.rand(5 if per_channel else 1, generator=gen) + 0.01
    bias = torch.randn(5, generator=gen)
    got = Q.linear_fp8(x8, 0.37, w8, w_scale, bias)
    assert torch.equal(got, slow_linear(x8, 0.37, w8, w_scale, bias))


@pytest.mark.parametrize("fmt", FORMATS)
def test_extreme_operands_match_exact_fractions(fmt):
    top, tiny = fp8.FORMATS[fmt].max, 2.0 ** fp8.FORMATS[fmt].unit_log2
    dtype = fp8.FORMATS[fmt].dtype
    rows = [[top] * 8, [top, -top] * 4, [tiny] * 8, [top, tiny, -top, tiny, 0.0, -0.0, top, -tiny]]
    x8 = torch.tensor(rows).to(dtype)
    w8 = torch.tensor([[top] * 8, [-top] * 8, [tiny, top] * 4, [1.0, -tiny] * 4]).to(dtype)
    got = Q.linear_fp8(x8, 1.0, w8, torch.ones(1), None)
    assert torch.equal(got, slow_linear(x8, 1.0, w8, torch.ones(1), None))
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_ties_round_to_even_once(fmt):
    # 256 products of 2^16 plus one of `extra`: the exact sum lies on or near a float32 tie
    dtype = fp8.FORMATS[fmt].dtype
    for extra in (1.0, 2.0, 3.0, 0.5):
        x8 = torch.tensor([[256.0] * 256 + [extra]]).to(dtype)
        w8 = torch.tensor([[256.0] * 256 + [1.0]]).to(dtype)
        got = Q.linear_fp8(x8, 1.0, w8, torch.ones(1), None)
        assert got.item() == round_to_float32(Fraction(2 ** 24) + Fraction(extra))


@pytest.mark.parametrize("fmt", FORMATS)
def test_permuting_k_gives_bit_identical_results(fmt):
    gen = torch.Generator().manual_seed(3)
    x8, w8 = random_fp8((6, 300), fmt, gen), random_fp8((7, 300), fmt, gen)
    scales = torch.rand(7, generator=gen) + 0.1
    base = Q.linear_fp8(x8, 0.5, w8, scales, None)
    for _ in range(3):
        perm = torch.randperm(300, generator=gen)
        assert torch.equal(Q.linear_fp8(x8[:, perm], 0.5, w8[:, perm], scales, None), base)


def test_chunked_reduction_equals_single_pass(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    x8, w8 = random_fp8((3, 500), "e4m3", gen), random_fp8((4, 500), "e4m3", gen)
    whole = fp8.exact_dot(x8, w8.T)
    monkeypatch.setattr(fp8, "FLOAT64_EXACT", 2 ** 40)        # chunks of 20 products
    assert torch.equal(fp8.exact_dot(x8, w8.T), whole)


@pytest.mark.parametrize("fmt", FORMATS)
def test_longest_reduction_at_max_values_is_exact(fmt):
    top = fp8.FORMATS[fmt].max
    k = fp8.MAX_REDUCTION
    signs = torch.tensor([1.0, -1.0]).repeat(k // 2)
    x8 = torch.stack([torch.full((k,), top), signs * top]).to(fp8.FORMATS[fmt].dtype)
    w8 = torch.full((1, k), top).to(fp8.FORMATS[fmt].dtype)
    x8[1, -1] = 2.0 ** fp8.FORMATS[fmt].unit_log2                # a subnormal after cancellation
    got = fp8.exact_dot(x8, w8.T).flatten().tolist()
    unit = Fraction(2) ** fp8.FORMATS[fmt].unit_log2
    unit_sums = (x8.double() / float(unit)).to(torch.int64).sum(dim=1).tolist()   # exact
    assert got == [round_to_float32(s * unit * Fraction(top)) for s in unit_sums]
    with pytest.raises(ValueError, match="exceeds"):
        fp8.exact_dot(torch.zeros(1, k + 1).to(x8.dtype), torch.zeros(k + 1, 1).to(x8.dtype))


def test_pair_to_float32_rounds_to_nearest_even():
    gen = torch.Generator().manual_seed(5)
    his = torch.randint(-2 ** 40, 2 ** 40, (2000,), generator=gen)
    his = torch.cat([his, torch.tensor([0, 1, -1, 2 ** 52 - 1, -(2 ** 52)])])
    los = torch.randint(0, 2 ** 32, (his.numel(),), generator=gen)
    values = [h * 2 ** 32 + lo for h, lo in zip(his.tolist(), los.tolist())]
    # exact ties and their neighbours: v = odd * 2^s with 25 significant bits
    for s in (10, 31, 40, 60):
        tie = (2 ** 24 + 1) * 2 ** s
        values += [tie - 1, tie, tie + 1, tie + 2 ** (s + 1), -tie]
    his = torch.tensor([v >> 32 for v in values])
    los = torch.tensor([v & (2 ** 32 - 1) for v in values])
    got = fp8.pair_to_float32(his, los).tolist()
    assert got == [round_to_float32(Fraction(v)) for v in values]


@pytest.mark.parametrize("fmt", FORMATS)
def test_matmul_and_conv_match_exact_float64(fmt):
    # values within [-16, 16] on the format's grid: every float64 partial sum here is exact
    gen = torch.Generator().manual_seed(6)
    dtype = fp8.FORMATS[fmt].dtype
    a8 = (torch.randn(2, 3, 5, 9, generator=gen) * 4).clamp(-16, 16).to(dtype)
    b8 = (torch.randn(2, 1, 9, 4, generator=gen) * 4).clamp(-16, 16).to(dtype)
    want = torch.matmul(a8.double(), b8.double()).float() * (torch.tensor(0.5) * 0.25)
    assert torch.equal(Q.matmul_fp8(a8, 0.5, b8, 0.25), want)
    x8 = (torch.randn(2, 4, 7, 6, generator=gen) * 4).clamp(-16, 16).to(dtype)
    w8 = (torch.randn(6, 2, 3, 2, generator=gen) * 4).clamp(-16, 16).to(dtype)
    scales, bias = torch.rand(6, generator=gen) + 0.1, torch.randn(6, generator=gen)
    got = Q.conv2d_fp8(x8, 0.3, w8, scales, bias, [2, 1], [1, 2], [1, 2], 2)
    conv = F.conv2d(x8.double(), w8.double(), None, [2, 1], [1, 2], [1, 2], 2).float()
    want = conv * (torch.tensor(0.3) * scales).reshape(6, 1, 1) + bias.reshape(6, 1, 1)
    assert torch.equal(got, want)


def test_operands_of_two_formats_are_rejected():
    a = torch.ones(2, 3).to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="one format"):
        Q.linear_fp8(a, 1.0, torch.ones(4, 3).to(torch.float8_e5m2), torch.ones(1), None)
    with pytest.raises(ValueError, match="float8"):
        Q.linear_fp8(a.float(), 1.0, a, torch.ones(1), None)


def test_fake_kernels_agree_with_reference_kernels():
    gen = torch.Generator().manual_seed(7)
    x8 = random_fp8((2, 4, 6, 6), "e5m2", gen)
    w8, scales = random_fp8((6, 2, 3, 3), "e5m2", gen), torch.ones(6)
    cases = [(Q.quantize_fp8.default, (torch.randn(3, 5), 0.5, "e5m2")),
             (Q.linear_fp8.default, (x8[0, 0], 0.5, x8[1, 0], scales, torch.zeros(6))),
             (Q.matmul_fp8.default, (x8, 0.5, x8, 0.25)),
             (Q.conv2d_fp8.default, (x8, 0.5, w8, scales, None, [2, 1], [1], [1, 2], 2))]
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils="test_faketensor")
