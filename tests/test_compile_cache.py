"""The whole-compile cache (option compile_cache): identical compiles load, any change misses."""
import pytest
import torch
from torch import nn

import qcompile
from qcompile.registry import register_pass, unregister_pass, PassResult

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed=0):
    torch.manual_seed(seed)            # BatchNorm: a 0-dim int64 buffer in the state dict
    return nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.Linear(32, 4)).eval()


def _data(seed=1):
    torch.manual_seed(seed)
    return [(torch.randn(8, 16),) for _ in range(3)]


def _compile(model, data, tmp_path, **kwargs):
    options = {"compile_cache": True, "cache_dir": str(tmp_path), **kwargs.pop("options", {})}
    return qcompile.compile(model, example_inputs=data[0], calibration_data=data,
                            options=options, **kwargs)


def _hit(cm) -> bool:
    return cm.report.build.get("compile_cache") == "hit"


def test_identical_compile_loads_the_saved_model(tmp_path):
    first = _compile(_model(), _data(), tmp_path)
    again = _compile(_model(), _data(), tmp_path)
    assert not _hit(first) and _hit(again)
    x = torch.randn(5, 16)
    assert torch.equal(first(x), again(x))
    assert str(again.graph.code) == str(first.graph.code)


@pytest.mark.parametrize("change", ["weights", "calibration", "recipe option", "target"])
def test_any_change_misses(tmp_path, change):
    _compile(_model(), _data(), tmp_path)
    model, data, kwargs = _model(), _data(), {}
    if change == "weights":
        model = _model(seed=5)
    elif change == "calibration":
        data = _data(seed=6)
    elif change == "recipe option":
        kwargs = {"options": {"calibration": "minmax"}}
    else:
        kwargs = {"target": "cpu-int8"}
    assert not _hit(_compile(model, data, tmp_path, **kwargs))


def test_a_changed_user_pass_misses(tmp_path):
    pipeline = "canonicalize,fuse,observe,calibrate,insert-qdq,lower-int8,cleanup,my-note"

    @register_pass("my-note", replace=True)
    def first_version(gm, ctx):
        return PassResult(gm, False, {})
    try:
        _compile(_model(), _data(), tmp_path, pipeline=pipeline)
        assert _hit(_compile(_model(), _data(), tmp_path, pipeline=pipeline))

        @register_pass("my-note", replace=True)
        def second_version(gm, ctx):
            ctx.note("changed")
            return PassResult(gm, False, {})
        assert not _hit(_compile(_model(), _data(), tmp_path, pipeline=pipeline))
    finally:
        unregister_pass("my-note")


def test_off_by_default_and_with_dumps(tmp_path):
    qcompile.compile(_model(), example_inputs=_data()[0], calibration_data=_data(),
                     options={"cache_dir": str(tmp_path)})
    assert not (tmp_path / "compiled").exists()
    _compile(_model(), _data(), tmp_path, dump_dir=str(tmp_path / "dumps"))
    assert not (tmp_path / "compiled").exists()
