"""Shared fixtures: the pass-test harness (capture a tiny model, run a pipeline prefix,
inspect), the default MLP, one intra-op thread. Shared models live in tiny_models.py."""
from __future__ import annotations

import warnings

import pytest
import torch

import qcompile.passes  # noqa: F401  (registers the built-in passes)
from qcompile.capture import capture
from qcompile.context import PassContext
from qcompile.graph_edit import constant_value
from qcompile.pass_manager import PassManager
from qcompile.pipeline import Pipeline
from qcompile.recipes import resolve_recipe

from tiny_models import MLP


class PassHarness:
    """capture -> PassContext -> PassManager(pipeline), and small graph queries."""

    aten = torch.ops.aten
    Q = torch.ops.qcompile

    @staticmethod
    def context(model, inputs, calibration=None, recipe="w8a8", options=None):
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            captured = capture(model.eval(), inputs)
        ctx = PassContext(recipe=resolve_recipe(recipe, options), example_inputs=inputs,
                          input_specs=captured.input_specs,
                          calibration_data=calibration if calibration is not None else [inputs])
        return captured.graph_module, ctx

    @staticmethod
    def apply(gm, ctx, pipeline: str):
        """Run `pipeline` on gm; returns (graph module, pass records)."""
        manager = PassManager(Pipeline.parse(pipeline))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = manager(gm, ctx).graph_module
        return out, manager.records

    def run(self, model, inputs, pipeline: str, **kwargs):
        """Capture `model` and run `pipeline`; returns (graph module, ctx)."""
        gm, ctx = self.context(model, inputs, **kwargs)
        gm, _ = self.apply(gm, ctx, pipeline)
        return gm, ctx

    @staticmethod
    def calls(gm, target=None) -> list:
        return [n for n in gm.graph.nodes if n.op == "call_function"
                and (target is None or n.target is target)]

    @staticmethod
    def targets(gm) -> set:
        return {n.target for n in gm.graph.nodes if n.op == "call_function"}

    @staticmethod
    def const(gm, node) -> torch.Tensor:
        value = constant_value(gm, node)
        assert value is not None, f"{node} is not a constant"
        return value

    @staticmethod
    def node(gm, name):
        return next(n for n in gm.graph.nodes if n.name == name)

    @staticmethod
    def batches(shape, count=4, seed=0, scale=1.0):
        g = torch.Generator().manual_seed(seed)
        return [(torch.randn(*shape, generator=g) * scale,) for _ in range(count)]


@pytest.fixture
def qc() -> PassHarness:
    torch.manual_seed(0)
    return PassHarness()


@pytest.fixture
def mlp() -> MLP:
    """The default MLP (16 -> 32 -> 8), seeded, in eval mode: a fresh one per test."""
    torch.manual_seed(0)
    return MLP().eval()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a small machine shared with other jobs, OpenMP threads that
    wait on each other make compile times swing 5x; one thread keeps them predictable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """Compiled libraries and tuning records of this test session stay in a temporary dir."""
    import os
    if os.environ.get("QCOMPILE_CACHE_DIR"):
        yield
        return
    os.environ["QCOMPILE_CACHE_DIR"] = str(tmp_path_factory.mktemp("qcompile-cache"))
    yield
    os.environ.pop("QCOMPILE_CACHE_DIR", None)
