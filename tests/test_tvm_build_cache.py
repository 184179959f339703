"""cpu-int8 library cache, the library inside a saved artifact, and the kernel profile."""
import warnings

import pytest
import torch

import qcompile
from qcompile.artifact.backend_library import runner_for

from tiny_models import ConvMLP, image_batches

pytest.importorskip("tvm")
from qcompile.backends.tvm import backend  # noqa: E402
from qcompile.backends.tvm.build_cache import LibraryCache  # noqa: E402


def compile_cpu(model, batches, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return qcompile.compile(model, target="cpu-int8", example_inputs=batches[0],
                                calibration_data=batches, options=options)


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    return ConvMLP().eval(), image_batches()


def test_second_compile_reuses_the_library(model_and_data, tmp_path):
    model, batches = model_and_data
    first = compile_cpu(model, batches, cache_dir=str(tmp_path))
    second = compile_cpu(model, batches, cache_dir=str(tmp_path))
    assert first.report.build["cached"] is False and second.report.build["cached"] is True
    assert len(list((tmp_path / "tvm" / "lib").glob("*.so"))) == 1
    assert torch.equal(first(batches[1]), second(batches[1]))


def test_other_weights_get_another_library(model_and_data, tmp_path):
    model, batches = model_and_data
    compile_cpu(model, batches, cache_dir=str(tmp_path))
    other = ConvMLP().eval()
    with torch.no_grad():
        other.load_state_dict(model.state_dict())
        other.fc1.weight.mul_(-1)
    assert compile_cpu(other, batches, cache_dir=str(tmp_path)).report.build["cached"] is False
    assert len(list((tmp_path / "tvm" / "lib").glob("*.so"))) == 2


def test_corrupt_library_is_rebuilt_with_a_warning(model_and_data, tmp_path):
    model, batches = model_and_data
    good = compile_cpu(model, batches, cache_dir=str(tmp_path))
    (lib,) = (tmp_path / "tvm" / "lib").glob("*.so")
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    with pytest.warns(qcompile.QCompileWarning, match="corrupt"):
        again = qcompile.compile(model, target="cpu-int8", example_inputs=batches[0],
                                 calibration_data=batches, options={"cache_dir": str(tmp_path)})
    assert again.report.build["cached"] is False
    assert torch.equal(good(batches[2]), again(batches[2]))
    assert LibraryCache(tmp_path).lookup(again._runner.build_info["key"]) is not None


def test_cache_off_writes_nothing(model_and_data, tmp_path):
    model, batches = model_and_data
    compile_cpu(model, batches, cache=False, cache_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())


def test_artifact_carries_the_library(model_and_data, tmp_path, monkeypatch):
    model, batches = model_and_data
    cm = compile_cpu(model, batches)
    cm.save(str(tmp_path / "m.qcm"))

    def no_compile(*args, **kwargs):
        raise AssertionError("load compiled the graph again")
    monkeypatch.setattr(backend, "build", no_compile)
    loaded = qcompile.load(str(tmp_path / "m.qcm"))
    assert torch.equal(loaded(batches[3]), cm(batches[3]))


def test_library_from_another_toolchain_is_refused(model_and_data):
    model, batches = model_and_data
    cm = compile_cpu(model, batches)
    info = dict(cm._runner.build_info, versions={"tvm": "0.0", "tvm_ffi": "0.0"})
    with pytest.raises(qcompile.BackendError, match="built with tvm 0.0"):
        backend.load_library(cm.graph, cm._runner.library_bytes(), info)
    info = dict(cm._runner.build_info, path="no-such-path")
    with pytest.raises(qcompile.BackendError, match="cpu path 'no-such-path'"):
        backend.load_library(cm.graph, cm._runner.library_bytes(), info)


def test_unusable_library_falls_back_to_a_build(model_and_data):
    model, batches = model_and_data
    cm = compile_cpu(model, batches)
    data = torch.frombuffer(bytearray(cm._runner.library_bytes()), dtype=torch.uint8)
    header = {"backend_library": dict(cm._runner.build_info, path="no-such-path")}
    with pytest.warns(qcompile.QCompileWarning, match="rebuilding"):
        runner = runner_for(backend, cm.graph, header, {"__backend__.library": data},
                            (batches[0],), "m.qcm")
    assert torch.equal(runner(batches[1]), cm(batches[1]))


def test_profile_names_kernels_and_shares(model_and_data):
    model, batches = model_and_data
    cm = compile_cpu(model, batches, profile=True)
    rows = cm.report.kernel_times
    assert rows and abs(sum(r["share"] for r in rows) - 1.0) < 1e-2
    gemm_nodes = {r["node"] for r in rows if r["function"].startswith("gemm_")}
    lowered = {n.name for n in cm.graph.graph.nodes
               if "qlinear" in str(n.target) or "qconv2d" in str(n.target)}
    assert gemm_nodes == lowered
    assert "run time by kernel" in str(cm.report)
    again = cm.profile(batches[1], runs=1)
    assert {r["function"] for r in again} == {r["function"] for r in rows}
    assert all(r["calls"] == 1 for r in again if r["node"])
