"""Recipes and QuantOptions: resolution, normalisation (they are cache keys), validation."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import qcompile
from qcompile.recipes import CALIBRATION_METHODS, resolve_recipe

from tiny_models import MLP


def test_builtin_recipes():
    assert {"w8a8", "w8a8-dynamic"} <= set(qcompile.RECIPES)
    assert not resolve_recipe("w8a8").dynamic
    assert resolve_recipe("w8a8-dynamic").dynamic
    for recipe in qcompile.RECIPES.values():
        assert recipe.description


def test_defaults():
    options = resolve_recipe("w8a8").options
    assert options == qcompile.QuantOptions()
    assert options.calibration in CALIBRATION_METHODS
    assert options.symmetric_activations is False and options.numerics is True


def test_options_are_frozen_and_hashable():
    options = qcompile.QuantOptions(keep_float=("fc1",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.calibration = "minmax"      # type: ignore[misc]
    assert hash(options) == hash(qcompile.QuantOptions(keep_float=("fc1",)))
    assert hash(resolve_recipe("w8a8", {"keep_float": ["fc1"]}))


def test_dict_and_dataclass_resolve_to_equal_options():
    from_dict = resolve_recipe("w8a8", {"calibration": "percentile",
                                        "calibration_options": {"p": 99.9, "bins": 512},
                                        "keep_float": ["fc2"], "keep_float_ops": "add"})
    from_class = resolve_recipe("w8a8", qcompile.QuantOptions(
        calibration="percentile", calibration_options=(("bins", 512), ("p", 99.9)),
        keep_float=("fc2",), keep_float_ops=("add",)))
    assert from_dict == from_class
    assert from_dict.options.calibration_options == (("bins", 512), ("p", 99.9))
    assert from_dict.options.calibration_knobs() == {"bins": 512, "p": 99.9}
    assert from_dict.options.keep_float == ("fc2",)
    assert from_dict.options.keep_float_ops == ("add",)


def test_lists_in_a_dataclass_become_tuples():
    resolved = resolve_recipe("w8a8", qcompile.QuantOptions(keep_float=["fc2"]))
    assert resolved.options.keep_float == ("fc2",)
    hash(resolved)


def test_a_recipe_object_keeps_its_options():
    custom = dataclasses.replace(qcompile.RECIPES["w8a8"], name="w8a8-sym",
                                 options=qcompile.QuantOptions(symmetric_activations=True))
    assert resolve_recipe(custom).options.symmetric_activations is True
    merged = resolve_recipe(custom, {"numerics": False}).options
    assert merged.symmetric_activations is True and merged.numerics is False
    replaced = resolve_recipe(custom, qcompile.QuantOptions(numerics=False)).options
    assert replaced.symmetric_activations is False


@pytest.mark.parametrize("options, fragment", [
    ({"calibration": "median"}, "'median'"),
    ({"calibration": 3}, "calibration"),
    ({"symmetric_activations": 1}, "symmetric_activations"),
    ({"numerics": "no"}, "numerics"),
    ({"progress": "auto"}, "progress"),
    ({"keep_float": 7}, "keep_float"),
    ({"keep_float": [7]}, "keep_float"),
    ({"keep_float_ops": ["conv3d"]}, "conv3d"),
    ({"calibration_options": 5}, "calibration_options"),
    ({"weight_calibration": "median"}, "weight_calibration"),
    ({"colour": "red"}, "colour"),
    ("w8a8", "options must be"),
])
def test_invalid_options(options, fragment):
    with pytest.raises(qcompile.RecipeError) as info:
        resolve_recipe("w8a8", options)
    assert fragment in str(info.value)


@pytest.mark.parametrize("recipe", ["w4a4", "", None, ["w8a8"]])
def test_invalid_recipe(recipe):
    with pytest.raises(qcompile.RecipeError, match="unknown recipe"):
        resolve_recipe(recipe)


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    return MLP().eval()


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
def test_every_calibration_method_compiles_close_to_float(mlp, method):
    g = torch.Generator().manual_seed(3)
    cal = [torch.randn(8, 16, generator=g) for _ in range(4)]
    x = cal[0]
    cm = qcompile.compile(mlp, example_inputs=(x,), calibration_data=cal,
                          options={"calibration": method})
    assert cm.report.calibration["method"] == method
    expected = mlp(x)
    assert (cm(x) - expected).abs().max() <= 0.25 * expected.abs().max()
    assert cm.report.output_sqnr_db > 15       # entropy clips hardest on so few values


def test_calibration_knobs_reach_the_observers(mlp):
    g = torch.Generator().manual_seed(3)
    cal = [torch.randn(8, 16, generator=g) for _ in range(4)]
    cm = qcompile.compile(mlp, example_inputs=(cal[0],), calibration_data=cal,
                          options={"calibration": "percentile",
                                   "calibration_options": {"p": 99.0}})
    assert cm.report.calibration["knobs"] == {"p": 99.0}


def test_weight_calibration_options(mlp):
    x = torch.randn(4, 16)
    for method in ("minmax", "mse"):
        cm = qcompile.compile(mlp, example_inputs=(x,), calibration_data=[x],
                              options={"weight_calibration": method})
        assert cm.recipe.options.weight_calibration == method
