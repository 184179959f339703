"""cuda-int8 engine: plan, tactics, cross-build, emulated run bit-exact with reference."""
import pytest
import torch
from torch import nn

import qcompile
from qcompile.backends.cuda import toolchain

if toolchain.problems():
    pytest.skip(f"CUDA pip packages missing: {toolchain.problems()}", allow_module_level=True)

from qcompile.backends.cuda.device import probe  # noqa: E402
from qcompile.backends.cuda.engine import Engine  # noqa: E402
from qcompile.backends.cuda.tactics import TimingCache, choose  # noqa: E402
from qcompile.errors import BackendError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
NO_GPU = not probe().present


class Mlp(nn.Module):
    def __init__(self, k=32, hidden=48, out=16):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(k, hidden), nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, out)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _data(k=32, count=3):
    torch.manual_seed(1)
    return [(torch.randn(5, k) * 3,) for _ in range(count)]


def _compile(target, options=None, model=None, k=32, tmp=None):
    data = _data(k)
    opts = {"cache_dir": str(tmp)} if tmp else {}
    return qcompile.compile((model or Mlp(k)).eval(), target=target, example_inputs=data[0],
                            calibration_data=data, options={**opts, **(options or {})}), data


@pytest.mark.skipif(not NO_GPU, reason="checks the error given on a machine without a GPU")
def test_without_gpu_the_error_names_the_options(tmp_path):
    with pytest.raises(BackendError, match="arch=.*emulate=True"):
        _compile("cuda-int8", tmp=tmp_path)


def test_emulated_engine_equals_reference(tmp_path):
    ref, data = _compile("reference")
    cm, _ = _compile("cuda-int8", {"emulate": True}, tmp=tmp_path)
    kernels = {n.name: n.meta["qc"].kernel.name for n in cm.graph.graph.nodes
               if n.meta.get("qc") is not None and n.meta["qc"].kernel is not None}
    assert sum(k.startswith("qc_gemm_int8") for k in kernels.values()) == 2, kernels
    assert kernels["x_q"] == "qc_quantize"
    for (x,) in data + [(torch.full((5, 32), 1e6),), (torch.full((5, 32), -1e6),)]:
        assert torch.equal(cm(x), ref(x))


def test_report_lists_fallbacks_memory_and_tactics(tmp_path):
    cm, _ = _compile("cuda-int8", {"emulate": True}, tmp=tmp_path)
    info = cm._runner.build_info if hasattr(cm, "_runner") else cm._runner.build_info
    ops = {op for _, op, _ in info["fallbacks"]}
    assert ops == {"qlinear_f32"}                       # float-output GEMM: no kernel yet
    assert all("no engine kernel" in reason for _, _, reason in info["fallbacks"])
    memory = info["memory"]
    assert 0 < memory["activation_bytes"] <= memory["naive_activation_bytes"]
    assert memory["weight_bytes"] >= 32 * 48 + 48 * 48 + 48 * 16
    assert set(info["tactics"].values()) <= {"64x64", "128x128"}


def test_k_not_multiple_of_16_falls_back_with_the_reason(tmp_path):
    cm, data = _compile("cuda-int8", {"emulate": True}, model=Mlp(k=20), k=20, tmp=tmp_path)
    info = cm._runner.build_info
    reasons = [r for _, op, r in info["fallbacks"] if op == "qlinear"]
    assert reasons and "K=20" in reasons[0]
    ref, _ = _compile("reference", model=Mlp(k=20), k=20)
    assert torch.equal(cm(*data[0]), ref(*data[0]))


def test_fallback_off_names_the_node(tmp_path):
    with pytest.raises(BackendError, match="cuda-int8 cannot run qlinear_f32"):
        _compile("cuda-int8", {"emulate": True, "fallback": False}, tmp=tmp_path)


@pytest.mark.skipif(not NO_GPU, reason="a cross-build is for machines without that GPU")
def test_cross_build_saves_loads_and_refuses_to_run_here(tmp_path):
    cm, data = _compile("cuda-int8", {"arch": "sm_90"}, tmp=tmp_path)
    assert cm._runner.build_info["arch"] == "sm_90"
    assert cm._runner.engine.cubin and ".target sm_80" in cm._runner.engine.ptx
    with pytest.raises(BackendError, match="built for sm_90"):
        cm(*data[0])
    path = tmp_path / "m.qcm"
    cm.save(path)
    loaded = qcompile.load(path)
    assert loaded._runner.engine.cubin == cm._runner.engine.cubin
    assert loaded._runner.engine.tactics == cm._runner.engine.tactics


def test_unknown_arch_is_a_clear_error(tmp_path):
    with pytest.raises(BackendError, match="sm_75.*sm_80"):
        _compile("cuda-int8", {"arch": "sm_75"}, tmp=tmp_path)


def test_engine_blob_round_trips_and_detects_damage(tmp_path):
    cm, _ = _compile("cuda-int8", {"emulate": True}, tmp=tmp_path)
    blob = cm._runner.library_bytes()
    again = Engine.from_bytes(blob)
    assert again.steps == cm._runner.engine.steps and again.tactics == cm._runner.engine.tactics
    damaged = bytearray(blob)
    damaged[-1] ^= 0xFF
    if cm._runner.engine.cubin or cm._runner.engine.ptx:
        with pytest.raises(BackendError, match="checksum"):
            Engine.from_bytes(bytes(damaged))
    with pytest.raises(BackendError, match="magic"):
        Engine.from_bytes(b"not an engine")


def test_timing_cache_keeps_timed_choices_and_retimes_heuristic_ones(tmp_path):
    cache = TimingCache(tmp_path, "sm_90")
    assert choose((1024, 1536, 384), cache).source == "heuristic"
    cache.save()
    reread = TimingCache(tmp_path, "sm_90")
    timed = choose((1024, 1536, 384), reread, timer=lambda tile, shape: {"64x64": 9.0}.get(tile, 5.0))
    assert timed.source == "timed" and timed.tile == "128x128"
    assert choose((1024, 1536, 384), reread, timer=lambda *a: 1 / 0).source == "cache"


class SmallCnn(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 16, 1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        y = y + torch.relu(self.pw(torch.relu(self.dw(y))))
        y = self.pool(y).mean(dim=(2, 3))
        return self.fc(y)


def test_emulated_cnn_equals_reference(tmp_path):
    torch.manual_seed(3)
    data = [(torch.randn(2, 3, 12, 12),) for _ in range(2)]
    compiled = {t: qcompile.compile(SmallCnn().eval(), target=t, example_inputs=data[0],
                                    calibration_data=data,
                                    options={"emulate": True, "cache_dir": str(tmp_path)}
                                    if t == "cuda-int8" else None)
                for t in ("reference", "cuda-int8")}
    kernels = {n.meta["qc"].kernel.name for n in compiled["cuda-int8"].graph.graph.nodes
               if n.meta.get("qc") is not None and n.meta["qc"].kernel is not None}
    assert {"qc_conv2d_int8_implicit", "qc_depthwise_conv2d_int8", "qc_qadd",
            "qc_qmax_pool2d"} <= kernels, kernels
    for (x,) in data:
        assert torch.equal(compiled["cuda-int8"](x), compiled["reference"](x))


def test_emulated_integer_only_encoder_equals_reference(tmp_path):
    from tiny_models import EncoderBlock, encoder_inputs
    model = EncoderBlock(dim=32, heads=2).eval()
    calibration = [encoder_inputs(seed) for seed in range(1, 4)]
    x = encoder_inputs(7)
    common = {"integer_only": True}
    ref = qcompile.compile(model, target="reference", example_inputs=x,
                           calibration_data=calibration, options=common)
    cm = qcompile.compile(model, target="cuda-int8", example_inputs=x,
                          calibration_data=calibration,
                          options={**common, "emulate": True, "cache_dir": str(tmp_path)})
    kernels = {n.meta["qc"].kernel.name for n in cm.graph.graph.nodes
               if n.meta.get("qc") is not None and n.meta["qc"].kernel is not None}
    assert {"qc_i_softmax", "qc_i_layernorm", "qc_i_gelu"} <= kernels, kernels
    assert any(k.startswith("qc_qmatmul_int8") for k in kernels), kernels
    assert torch.equal(cm(*x), ref(*x))
