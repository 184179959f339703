"""qlinear_f32 / qconv2d_f32 / qmatmul_f32 against an independent int64 + numpy float32
implementation, extreme values included (the epilogue is two float32 roundings)."""
import numpy as np
import pytest
import torch

from qcompile.ops import float_out


def _epilogue(acc: np.ndarray, scale: np.ndarray, bias) -> np.ndarray:
    y = acc.astype(np.float32) * scale.astype(np.float32)          # one rounding
    return y if bias is None else (y + bias.astype(np.float32))     # a second one


def _extreme_int8(shape, gen, lo=-128):
    x = torch.randint(lo, 128, shape, dtype=torch.int8, generator=gen)
    x.view(-1)[0], x.view(-1)[-1] = lo, 127
    return x


@pytest.mark.parametrize("x_zp", [-128, 0, 127])
@pytest.mark.parametrize("fill", [None, -128, 127])
def test_qlinear_f32(x_zp, fill):
    gen = torch.Generator().manual_seed(x_zp + 7)
    x = _extreme_int8((5, 300), gen) if fill is None else torch.full((5, 300), fill, dtype=torch.int8)
    w = _extreme_int8((7, 300), gen, lo=-127)
    scale = torch.rand(7, generator=gen) * 1e-3 + 1e-7
    bias = torch.randn(7, generator=gen) * 10
    acc = (x.numpy().astype(np.int64) - x_zp) @ w.numpy().astype(np.int64).T
    for b in (bias, None):
        got = float_out.qlinear_f32(x, x_zp, w, b, scale)
        want = _epilogue(acc, scale.numpy(), None if b is None else b.numpy())
        assert np.array_equal(got.numpy().view(np.int32), want.view(np.int32))


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 1, 1, 1), (2, 0, 1, 1),
                                                            (1, 2, 2, 4)])
def test_qconv2d_f32(stride, padding, dilation, groups):
    gen = torch.Generator().manual_seed(stride * 10 + groups)
    x, w = _extreme_int8((2, 8, 9, 9), gen), _extreme_int8((4, 8 // groups, 3, 3), gen, lo=-127)
    scale, bias, x_zp = torch.rand(4, generator=gen) * 1e-2, torch.randn(4, generator=gen), -128
    acc = torch.nn.functional.conv2d((x.to(torch.int64) - x_zp).double(), w.double(), None,
                                     stride, padding, dilation, groups).round().to(torch.int64)
    got = float_out.qconv2d_f32(x, x_zp, w, bias, scale, [stride] * 2, [padding] * 2,
                                [dilation] * 2, groups)
    want = _epilogue(acc.numpy(), scale.numpy()[None, :, None, None],
                     bias.numpy()[None, :, None, None])
    assert np.array_equal(got.numpy().view(np.int32), want.view(np.int32))


def test_qmatmul_f32_extremes():
    a = torch.full((2, 3, 600), -128, dtype=torch.int8)
    b = torch.full((2, 600, 4), 127, dtype=torch.int8)
    scale = float(np.float32(3e-5))
    got = float_out.qmatmul_f32(a, 127, b, -128, scale)
    acc = np.full((2, 3, 4), (-128 - 127) * (127 + 128) * 600, dtype=np.int64)
    assert np.array_equal(got.numpy(), acc.astype(np.float32) * np.float32(scale))
