"""cpu-int8 tuning: GEMM workloads from the graph, the budget, the on-disk database (reused,
corrupt files set aside), the cpu_path option, and measuring through a TVM RPC tracker."""
import json
import socket
import warnings

import pytest
import torch

import qcompile

from tiny_models import ConvMLP, image_batches

pytest.importorskip("tvm")
from qcompile.backends.tvm import tune, tune_measure  # noqa: E402
from qcompile.backends.tvm.cpu_features import choose_path, detect  # noqa: E402
from qcompile.backends.tvm.tuning_db import TuningDatabase  # noqa: E402


def compile_model(model, batches, target="cpu-int8", **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return qcompile.compile(model, target=target, example_inputs=batches[0],
                                calibration_data=batches, options=options)


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(1)
    return ConvMLP().eval(), image_batches()


@pytest.fixture(scope="module")
def reference(model_and_data):
    model, batches = model_and_data
    return compile_model(model, batches, target="reference")


def test_workloads_come_from_the_graph(reference, model_and_data):
    batch = model_and_data[1][0]
    found = {(w.mode, w.n, w.k, w.m) for w in tune.gemm_workloads(reference.graph, "generic")}
    convs = [m for m in ConvMLP().modules() if isinstance(m, torch.nn.Conv2d)]
    conv = convs[0]
    rows = batch.shape[0] * batch.shape[2] * batch.shape[3]  # padding keeps H, W here
    assert ("int8", conv.out_channels, conv.in_channels * 9, rows) in found
    assert all(w.m >= 1 for w in tune.gemm_workloads(reference.graph, "generic"))


def test_budget_limits_measurements_and_results_stay_exact(model_and_data, reference, tmp_path):
    model, batches = model_and_data
    cm = compile_model(model, batches, cache_dir=str(tmp_path), tune_trials=2)
    (db_file,) = (tmp_path / "tvm" / "tuning").glob("*.json")
    records = json.loads(db_file.read_text())["records"]
    assert sum(len(r["us"]) for r in records.values()) == 2
    assert cm.report.build["tuned_gemm_shapes"] >= 1
    assert any("tuned" in (r.kernel or "") for r in cm.report.nodes)
    for x in batches:
        assert torch.equal(cm(x), reference(x))


def test_second_compile_measures_nothing_new(model_and_data, tmp_path, monkeypatch):
    model, batches = model_and_data
    compile_model(model, batches, cache_dir=str(tmp_path), tune_trials=3)

    def fail(*args, **kwargs):
        raise AssertionError("measured again")
    monkeypatch.setattr(tune, "measure", fail)
    again = compile_model(model, batches, cache_dir=str(tmp_path), tune_trials=3)
    assert again.report.build["cached"] is True


def test_corrupt_database_is_set_aside(tmp_path):
    db = TuningDatabase(tmp_path, "cpu", {"tvm": "x"})
    db.add("generic/int8/n8/k8", 4, (4, 2), 12.5)
    db.save()
    db.path.write_text("{not json")
    with pytest.warns(qcompile.QCompileWarning, match="unreadable"):
        fresh = TuningDatabase(tmp_path, "cpu", {"tvm": "x"})
    assert fresh.records == {} and db.path.with_suffix(".corrupt").exists()


def test_database_keeps_the_fastest_tile(tmp_path):
    db = TuningDatabase(tmp_path, "cpu", {})
    db.add("k", 8, (6, 4), 30.0)
    db.add("k", 8, (8, 3), 20.0)
    db.save()
    assert TuningDatabase(tmp_path, "cpu", {}).table() == {"k": [8, 3]}


def test_cpu_path_option_forces_a_lower_isa(model_and_data, reference):
    model, batches = model_and_data
    cm = compile_model(model, batches, cpu_path="generic")
    kernels = {r.kernel for r in cm.report.nodes if r.kernel}
    assert kernels and all(k.startswith("tvm-generic:") for k in kernels)
    assert torch.equal(cm(batches[1]), reference(batches[1]))
    with pytest.raises(qcompile.RecipeError, match="cpu_path"):
        compile_model(model, batches, cpu_path="avx9000")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_tuning_through_an_rpc_tracker(tmp_path):
    pytest.importorskip("tornado")
    from tvm.rpc.server import Server
    from tvm.rpc.tracker import Tracker
    port = _free_port()
    tracker = Tracker(host="127.0.0.1", port=port, port_end=port + 50, silent=True)
    server = Server(host="127.0.0.1", port=tracker.port + 60, port_end=tracker.port + 120,
                    tracker_addr=("127.0.0.1", tracker.port), key="qcompile-test", silent=True)
    try:
        runner = tune_measure.make_runner(f"127.0.0.1:{tracker.port}:qcompile-test")
        workload = tune_measure.Workload(choose_path(), 40, 24, "int8", 16)
        times = tune_measure.measure(runner, workload, [(4, 2), (2, 2)], str(tmp_path))
    finally:
        server.terminate()
        tracker.terminate()
    assert set(times) == {(4, 2), (2, 2)} and all(t > 0 for t in times.values())
    assert detect().supports(workload.path)


def test_failed_candidates_are_recorded_and_skipped(tmp_path):
    db = TuningDatabase(tmp_path, "cpu", {})
    db.add("k", 8, (6, 4), None)
    assert db.best("k") is None and db.table() == {} and "6x4" in db.measured("k")
    db.add("k", 8, (8, 3), 20.0)
    assert db.best("k") == (8, 3)


def test_spent_budget_is_remembered_per_graph(tmp_path):
    db = TuningDatabase(tmp_path, "cpu", {})
    db.add_spent("g", 5, 1.5)
    db.add_spent("g", 3, 0.5)
    db.save()
    assert TuningDatabase(tmp_path, "cpu", {}).spent("g") == {"trials": 8, "seconds": 2.0}
    assert TuningDatabase(tmp_path, "cpu", {}).spent("other") == {"trials": 0, "seconds": 0.0}
