"""quantize-kv-cache: the KV cache held as int8 (or fp8) codes at its writes, dequantized at
its reads; kv_quantize / kv_dequantize reference kernels; option kv_cache."""
import warnings

import pytest
import torch

import qcompile
from qcompile.errors import RecipeError
from qcompile.ops import kv_cache as kv
from qcompile.recipes import KV_CACHE_MODES, resolve_recipe
from qcompile.zoo.decoder import DecoderConfig, DecoderLM, PrefillWithCache

warnings.filterwarnings("ignore", category=qcompile.QCompileWarning)
Q = torch.ops.qcompile
aten = torch.ops.aten
MODES = ("int8-per-head", "int8-per-token", "fp8")
KV_PIPELINE = "canonicalize,quantize-kv-cache"
TINY = DecoderConfig(n_layers=2, d_model=32, n_heads=2, context=16)


def tiny_decoder():
    torch.manual_seed(0)
    model = DecoderLM(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.15)
    return model.eval()


def _tokens(seed, batch=2, length=8):
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def _decode_inputs(model, seed=0):
    """A decode step of 4 tokens at positions 6..9 after a 6-token prefill."""
    k, v = model.empty_cache(2)
    with torch.no_grad():
        _, k, v = model(_tokens(seed, length=6), k, v, torch.arange(6))
    return _tokens(seed + 1, length=4), k, v, torch.arange(6, 10)


def _compile(model, args, mode, pipeline=KV_PIPELINE, recipe="w8a8", calibration=None):
    return qcompile.compile(model, example_inputs=args, recipe=recipe, pipeline=pipeline,
                            calibration_data=calibration or [args],
                            options={"kv_cache": mode})


def _calls(gm, target):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target == target]


def _reaches(node, target, depth=3):
    frontier = {node}
    for _ in range(depth):
        frontier = {u for n in frontier for u in n.users}
        if any(n.target == target for n in frontier):
            return True
    return False


@pytest.mark.parametrize("mode", MODES)
def test_pass_quantizes_every_cache_write_and_dequantizes_at_the_read(mode):
    model = tiny_decoder()
    cm = _compile(model, _decode_inputs(model), mode)
    writes = 2 * TINY.n_layers
    assert len(_calls(cm.graph, Q.kv_quantize.default)) == 2 * writes   # new values + cache in
    reads = _calls(cm.graph, Q.kv_dequantize.default)
    assert len(reads) == writes
    written = sorted(r.output.split("[")[0] for r in cm.report.nodes if r.op == "aten.index_copy")
    expected = {"int8-per-head": ["i8"] * writes, "fp8": ["u8"] * writes,
                "int8-per-token": ["f32"] * writes + ["i8"] * writes}[mode]
    assert written == expected                    # codes (and per-token scales) are written
    assert any(p == "quantize-kv-cache" and f"{writes} cache write(s)" in text
               for _, p, text in cm.report.diagnostics)
    for read in reads:
        assert _reaches(read, aten.matmul.default), f"{read.name} is not read by attention"
        assert _reaches(read, aten.stack.default), f"{read.name} is not a cache output"


class GrowingCache(torch.nn.Module):
    """Attention over a cache written by cat (grows) or slice_scatter (fixed size)."""

    def __init__(self, how):
        super().__init__()
        self.how = how

    def forward(self, q, k_new, k_past):
        if self.how == "cat":
            k_all = torch.cat([k_past, k_new], dim=2)
        else:
            k_all = k_past.slice_scatter(k_new, dim=2, start=1, end=4)
        return torch.matmul(q, k_all.transpose(-2, -1)), k_all


@pytest.mark.parametrize("how", ["cat", "slice_scatter"])
def test_pass_writes_through_cat_and_slice_scatter(how):
    args = (torch.randn(2, 2, 3, 8), torch.randn(2, 2, 3, 8), torch.randn(2, 2, 5, 8))
    cm = _compile(GrowingCache(how).eval(), args, "int8-per-token")
    assert len(_calls(cm.graph, Q.kv_dequantize.default)) == 1
    op = "aten.cat" if how == "cat" else "aten.slice_scatter"
    assert sorted(r.output.split("[")[0] for r in cm.report.nodes if r.op == op) == \
        ["f32", "i8"]
    ref = GrowingCache(how).eval()(*args)
    for a, b in zip(ref, cm(*args)):
        assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.999


def test_no_cache_write_warns_and_changes_nothing():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8)).eval()
    with pytest.warns(qcompile.QCompileWarning, match="no KV-cache write"):
        cm = _compile(model, (torch.randn(2, 8),), "int8-per-token")
    assert not _calls(cm.graph, Q.kv_quantize.default)


def _half_step_bound(x, scales):
    return scales / 2 * (1 + 1e-6) + 1e-30


@pytest.mark.parametrize("mode", ["int8-per-token", "int8-per-head"])
def test_int8_round_trip_within_half_a_step(mode):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 16, generator=gen) * torch.logspace(-3, 3, 7).reshape(1, 1, 7, 1)
    scale = kv.head_scales(x.abs().amax(dim=(0, 2, 3)), mode) if mode == "int8-per-head" else None
    codes, scales = Q.kv_quantize(x, mode, scale)
    assert codes.dtype == torch.int8 and int(codes.abs().max()) == 127
    back = Q.kv_dequantize(codes, scales, mode)
    assert ((back - x).abs() <= _half_step_bound(x, scales)).all()
    expected_shape = (2, 3, 7, 1) if mode == "int8-per-token" else (1, 3, 1, 1)
    assert tuple(scales.shape) == expected_shape


def test_int8_per_token_extremes_and_zero_rows():
    x = torch.zeros(1, 2, 4, 8)
    x[0, 0, 0] = torch.tensor([3e38, -3e38, 1.0, 0, 0, 0, 0, 0])
    x[0, 0, 1] = torch.tensor([1e-38, -1e-38, 5e-39, 0, 0, 0, 0, 0])
    x[0, 1, 2] = torch.tensor([-1.0] * 8)                  # row 3 of head 0 and others: zero
    codes, scales = Q.kv_quantize(x, "int8-per-token", None)
    assert int(codes.min()) >= -127 and int(codes.max()) <= 127
    back = Q.kv_dequantize(codes, scales, "int8-per-token")
    assert torch.isfinite(back).all()
    assert ((back - x).abs() <= _half_step_bound(x, scales)).all()
    zero_rows = x.abs().amax(dim=-1) == 0
    assert (scales[zero_rows] == 1).all() and (back[zero_rows] == 0).all()
    assert codes[0, 1, 2].tolist() == [-127] * 8


def test_int8_per_head_saturates_beyond_the_calibrated_range():
    scale = kv.head_scales(torch.tensor([1.0, 0.0]), "int8-per-head")
    assert scale.flatten().tolist() == [pytest.approx(1 / 127), 1.0]
    x = torch.tensor([5.0, -5.0, 0.5, 0.0]).reshape(1, 1, 4, 1).expand(1, 2, 4, 1).contiguous()
    codes, _ = Q.kv_quantize(x, "int8-per-head", scale)
    assert codes[0, 0, :, 0].tolist() == [127, -127, 64, 0]      # 63.5 rounds half to even
    assert codes[0, 1, :, 0].tolist() == [5, -5, 0, 0]


def test_fp8_codes_are_e4m3_with_per_head_scale():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 5, 8, generator=gen)
    x[0, 1, 0, 0] = 0.0
    scale = kv.head_scales(x.abs().amax(dim=(0, 2, 3)), "fp8")
    codes, scales = Q.kv_quantize(x, "fp8", scale)
    assert codes.dtype == torch.uint8
    back = Q.kv_dequantize(codes, scales, "fp8")
    expected = (x / scale).to(torch.float8_e4m3fn).to(torch.float32) * scale
    assert torch.equal(back, expected)
    normal = (x / scale).abs() >= 2 ** -6
    assert ((back - x).abs()[normal] <= x.abs()[normal] * 2 ** -4 * (1 + 1e-6)).all()
    assert back[0, 1, 0, 0] == 0
    big, _ = Q.kv_quantize(x * 10, "fp8", scale)
    assert Q.kv_dequantize(big, scale, "fp8").abs().max() <= 448 * scale.max() * (1 + 1e-6)


@pytest.mark.parametrize("mode", ["int8-per-token", "int8-per-head", "fp8"])
def test_requantizing_a_written_cache_gives_the_same_codes(mode):
    x = torch.randn(2, 2, 6, 8, generator=torch.Generator().manual_seed(2))
    scale = None if mode == "int8-per-token" else kv.head_scales(x.abs().amax(dim=(0, 2, 3)), mode)
    codes, scales = Q.kv_quantize(x, mode, scale)
    again, _ = Q.kv_quantize(Q.kv_dequantize(codes, scales, mode), mode, scale)
    assert torch.equal(codes, again)


@pytest.mark.parametrize("mode", MODES)
def test_compiled_decode_step_and_prefill_close_to_float(mode):
    model = tiny_decoder()
    args = _decode_inputs(model)
    calibration = [_decode_inputs(model, seed) for seed in (10, 20, 30)]
    cm = _compile(model, args, mode, calibration=calibration)
    with torch.no_grad():
        ref = model(*args)
    out = cm(*args)
    cos = torch.nn.functional.cosine_similarity
    assert cos(out[0].flatten(), ref[0].flatten(), dim=0) > 0.99
    assert cos(out[1].flatten(), ref[1].flatten(), dim=0) > 0.99
    net, tokens = PrefillWithCache(model).eval(), _tokens(3, length=TINY.context)
    full = _compile(net, (tokens,), mode, recipe="w8a8", pipeline=None,
                    calibration=[(_tokens(s, length=TINY.context),) for s in (4, 5)])
    with torch.no_grad():
        assert cos(full(tokens).flatten(), net(tokens).flatten(), dim=0) > 0.99


def test_decoder_cache_path_matches_prefill():
    model, tokens = tiny_decoder(), _tokens(8, length=10)
    k, v = model.empty_cache(2)
    with torch.no_grad():
        full = model.prefill(tokens)
        first, k, v = model(tokens[:, :6], k, v, torch.arange(6))
        rest, _, _ = model(tokens[:, 6:], k, v, torch.arange(6, 10))
    assert torch.allclose(torch.cat([first, rest], dim=1), full, atol=1e-4)


def test_decode_loop_carries_a_cache_on_the_int8_grid():
    model = tiny_decoder()
    k, v = model.empty_cache(2)
    tokens = _tokens(7, length=8)
    cm = _compile(model, (tokens[:, :2], k, v, torch.arange(2)), "int8-per-token")
    qk, qv, fk, fv = k, v, k, v
    for step in range(4):
        chunk, pos = tokens[:, 2 * step:2 * step + 2], torch.arange(2 * step, 2 * step + 2)
        logits, qk, qv = cm(chunk, qk, qv, pos)
        with torch.no_grad():
            ref, fk, fv = model(chunk, fk, fv, pos)
        assert torch.nn.functional.cosine_similarity(logits.flatten(), ref.flatten(), dim=0) > 0.99
    for cache in (qk, qv):
        rows = cache[:, :, :, :8]                       # the 8 written positions
        steps = rows / (rows.abs().amax(dim=-1, keepdim=True) / 127)
        assert torch.allclose(steps, steps.round(), atol=1e-3)
    assert (qk[:, :, :, 8:] == 0).all()


@pytest.mark.parametrize("bad", ["int4", "INT8-per-head", 8])
def test_option_validation_names_valid_values(bad):
    with pytest.raises(RecipeError, match="int8-per-head, int8-per-token, fp8"):
        resolve_recipe("w8a8", {"kv_cache": bad})
    with pytest.raises(RecipeError, match="kv_cache"):
        qcompile.compile(torch.nn.Linear(4, 4).eval(), example_inputs=(torch.randn(2, 4),),
                         options={"kv_cache": bad})


def test_option_values_match_the_kernels():
    assert KV_CACHE_MODES == kv.KV_MODES
    assert resolve_recipe("w8a8", {"kv_cache": None}).options.kv_cache is None


@pytest.mark.slow
def test_trained_decoder_int8_kv_cache_keeps_perplexity(monkeypatch):
    """Reads weights from the session cache or the user's (~/.cache/qcompile); trains nothing."""
    from pathlib import Path

    from qcompile.zoo.decoder import load_decoder, weights_path
    from qcompile.zoo.decoder_data import TRAIN_SETTINGS, held_out_windows, perplexity
    user_cache = Path.home() / ".cache" / "qcompile"
    if not weights_path(DecoderConfig(), TRAIN_SETTINGS).exists() and user_cache.is_dir():
        monkeypatch.setenv("QCOMPILE_CACHE_DIR", str(user_cache))
    try:
        model = load_decoder(train_if_missing=False)
    except FileNotFoundError as err:
        pytest.skip(f"no cached decoder weights (python scripts/train_decoder.py): {err}")
    net = PrefillWithCache(model).eval()
    calibration = [(w[:, :-1],) for w in held_out_windows(16, 128).split(8)]
    evaluation = held_out_windows(16, 128, offset=512)
    cm = _compile(net, calibration[0], "int8-per-token", calibration=calibration)
    base = perplexity(model.prefill, evaluation)
    assert perplexity(cm, evaluation) < base * 1.02
