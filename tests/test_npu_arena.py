"""The npu-int8 activation arena planner: lifetimes, offsets, limits."""
import random

import pytest
from qcompile.backends.npu.arena import ALIGN, Buffer, check, interference, plan

from qcompile.errors import BackendError


def _overlaps(a: Buffer, b: Buffer, offsets: dict) -> bool:
    live = a.first <= b.last and b.first <= a.last
    oa, ob = offsets[a.name], offsets[b.name]
    return live and oa < ob + b.size and ob < oa + a.size


@pytest.mark.parametrize("seed", range(20))
def test_live_buffers_never_share_bytes(seed):
    rng = random.Random(seed)
    buffers = []
    for i in range(rng.randint(1, 40)):
        first = rng.randint(0, 30)
        buffers.append(Buffer(f"b{i}", rng.randint(1, 5000), first, first + rng.randint(0, 6)))
    result = plan(buffers)
    check(buffers, result)
    for i, a in enumerate(buffers):
        assert result.offsets[a.name] % ALIGN == 0
        assert result.offsets[a.name] + a.size <= result.size
        assert not any(_overlaps(a, b, result.offsets) for b in buffers[i + 1:])
    assert result.size <= result.naive


def test_chain_reuses_memory():
    # y_i = f(y_{i-1}): only two neighbours are ever live together
    buffers = [Buffer(f"y{i}", 1000 + 10 * i, i, i + 1) for i in range(10)]
    result = plan(buffers)
    assert result.size < result.naive / 3
    assert result.naive == sum(-(-b.size // ALIGN) * ALIGN for b in buffers)


def test_interference_is_interval_overlap():
    graph = interference([Buffer("a", 8, 0, 2), Buffer("b", 8, 2, 3), Buffer("c", 8, 4, 4)])
    assert set(map(frozenset, graph.edges)) == {frozenset(("a", "b"))}


def test_limit_error_names_the_size_needed():
    buffers = [Buffer("a", 100, 0, 1), Buffer("b", 100, 1, 2)]
    needed = plan(buffers).size
    assert plan(buffers, limit=needed).size == needed
    with pytest.raises(BackendError, match=f"needs {needed} bytes.*arena_limit=50"):
        plan(buffers, limit=50)


def test_check_catches_an_overlapping_plan():
    buffers = [Buffer("a", 64, 0, 1), Buffer("b", 64, 1, 2)]
    bad = plan(buffers)
    bad.offsets["b"] = bad.offsets["a"]
    with pytest.raises(BackendError, match="overlaps"):
        check(buffers, bad)
