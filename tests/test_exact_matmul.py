"""exact_matmul: chunked float32 GEMM equals int64 arithmetic at the extreme values."""
import pytest
import torch

from qcompile.ops.exact import FLOAT32_EXACT, exact_matmul


def _int64_matmul(a, b):
    return torch.einsum("...k,kn->...n", a.to(torch.int64), b.to(torch.int64))


@pytest.mark.parametrize("k", [1, 63, 518, 519, 1536, 4099])
def test_extremes_exact_across_chunk_boundaries(k):
    a = torch.full((3, k), 255, dtype=torch.int32)
    a[1] = -255
    a[2, ::2] = -255
    b = torch.full((k, 4), 127, dtype=torch.int32)
    b[:, 1] = -128
    b[::3, 2] = -128
    assert torch.equal(exact_matmul(a, b, 255, 128), _int64_matmul(a, b))


def test_random_batched_matches_int64():
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-255, 256, (2, 5, 7, 300), generator=gen, dtype=torch.int32)
    b = torch.randint(-255, 256, (2, 5, 300, 9), generator=gen, dtype=torch.int32)
    want = torch.matmul(a.to(torch.int64), b.to(torch.int64))
    assert torch.equal(exact_matmul(a, b, 255, 255), want)


def test_sums_beyond_float32_are_still_exact():
    k = 4 * FLOAT32_EXACT // (255 * 128)
    a = torch.full((1, k), 255, dtype=torch.int32)
    b = torch.full((k, 1), 127, dtype=torch.int32)
    b[-1, 0] = 126
    assert exact_matmul(a, b, 255, 128).item() == 255 * 127 * k - 255
    assert float(torch.tensor(255 * 127 * k - 255, dtype=torch.float32)) != 255 * 127 * k - 255


def test_reduced_precision_setting_falls_back_to_float64():
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        a = torch.randint(-255, 256, (4, 700), dtype=torch.int32)
        b = torch.randint(-128, 128, (700, 3), dtype=torch.int32)
        assert torch.equal(exact_matmul(a, b, 255, 128), _int64_matmul(a, b))
    finally:
        torch.set_float32_matmul_precision(previous)
