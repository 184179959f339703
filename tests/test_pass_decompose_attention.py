"""decompose-attention: SDPA -> transpose, matmul, scale, mask, softmax, matmul (same values)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytestmark = pytest.mark.usefixtures("one_thread")

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default


class Attn(nn.Module):
    def __init__(self, scale=None, causal=False, dropout=0.0):
        super().__init__()
        self.scale, self.causal, self.dropout = scale, causal, dropout

    def forward(self, q, k, v, mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout,
                                              is_causal=self.causal, scale=self.scale)


def qkv(seed=0, heads=2, tokens=5, head_dim=8):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, heads, tokens, head_dim, generator=g) for _ in range(3))


def float_mask(tokens=5):
    g = torch.Generator().manual_seed(7)
    return torch.randn(tokens, tokens, generator=g)


def bool_mask(tokens=5):
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(tokens, tokens, generator=g) > 0.4
    mask[:, 0] = True                          # every query keeps at least one key
    return mask


def scale_of(qc, gm) -> float:
    (mul,) = qc.calls(gm, aten.mul.Tensor)
    return float(mul.args[1])


CASES = {
    "no-mask": (None, None),
    "float-mask": (float_mask(), None),
    "bool-mask": (bool_mask(), None),
    "explicit-scale": (None, 0.3),
    "bool-mask-and-scale": (bool_mask(), 0.05),
}


@pytest.mark.parametrize("case", CASES)
def test_decomposed_graph_matches_sdpa(qc, case):
    mask, scale = CASES[case]
    model = Attn(scale=scale)
    inputs = qkv() + ((mask,) if mask is not None else ())
    gm, ctx = qc.context(model, inputs)
    assert qc.calls(gm, SDPA)
    gm, records = qc.apply(gm, ctx, "decompose-attention")
    assert records[0].stats == {"decomposed": 1, "kept": 0}
    targets = qc.targets(gm)
    assert SDPA not in targets
    assert len(qc.calls(gm, aten.matmul.default)) == 2
    assert len(qc.calls(gm, aten.softmax.int)) == 1
    expected_scale = scale if scale is not None else 1.0 / math.sqrt(8)
    assert scale_of(qc, gm) == pytest.approx(expected_scale, rel=1e-12)
    is_bool = mask is not None and mask.dtype == torch.bool
    assert (aten.masked_fill.Scalar in targets) == is_bool
    assert (aten.logical_not.default in targets) == is_bool
    assert (aten.add.Tensor in targets) == (mask is not None and not is_bool)
    torch.testing.assert_close(gm(*inputs), model(*inputs), rtol=1e-5, atol=1e-5)


def test_scores_are_q_times_k_transposed(qc):
    gm, _ = qc.run(Attn(), qkv(), "decompose-attention")
    (transpose,) = qc.calls(gm, aten.transpose.int)
    assert transpose.args[0].name == "k" and tuple(transpose.args[1:]) == (-2, -1)
    first, second = qc.calls(gm, aten.matmul.default)
    assert first.args == (qc.node(gm, "q"), transpose)
    assert second.args[1].name == "v" and second.args[0].target is aten.softmax.int


def test_bool_mask_semantics_true_means_attend(qc):
    """A key masked out (False) must get zero weight: changing its value changes nothing."""
    q, k, v = qkv()
    mask = torch.ones(5, 5, dtype=torch.bool)
    mask[:, 2] = False
    gm, _ = qc.run(Attn(), (q, k, v, mask), "decompose-attention")
    v2 = v.clone()
    v2[..., 2, :] += 100.0
    torch.testing.assert_close(gm(q, k, v, mask), gm(q, k, v2, mask), rtol=0, atol=1e-6)


@pytest.mark.parametrize("flags", [{"causal": True}, {"dropout": 0.1}])
def test_causal_and_dropout_attention_kept_whole(qc, flags):
    gm, ctx = qc.context(Attn(**flags), qkv())
    gm, records = qc.apply(gm, ctx, "decompose-attention")
    assert len(qc.calls(gm, SDPA)) == 1
    assert records[0].stats == {"decomposed": 0, "kept": 1}
    assert not records[0].changed
    assert any("kept whole" in text for _, _, text in ctx.diagnostics.messages)


def test_attention_matmuls_become_integer_after_quantization(qc):
    model = Attn()
    inputs = qkv()
    calibration = [qkv(seed) for seed in range(1, 4)]
    gm, _ = qc.run(model, inputs, "canonicalize,fuse,observe,calibrate,insert-qdq,lower-int8",
                   calibration=calibration)
    Q = qc.Q
    assert len(qc.calls(gm, Q.qmatmul.default) + qc.calls(gm, Q.qmatmul_f32.default)) == 2
    assert not qc.calls(gm, aten.matmul.default)
    out, want = gm(*inputs), model(*inputs)
    from qcompile.instruments import sqnr_db
    assert sqnr_db(want, out) > 20
