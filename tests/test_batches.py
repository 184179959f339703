"""ReplayableBatches: a one-shot generator is read once and replayed in the same order."""
from qcompile.batches import ReplayableBatches


def test_generator_read_once_and_replayed():
    reads = []

    def source():
        for i in range(3):
            reads.append(i)
            yield i

    batches = ReplayableBatches(source())
    assert list(batches) == [0, 1, 2]
    assert list(batches) == [0, 1, 2]
    assert reads == [0, 1, 2]


def test_partial_first_pass_then_full_replay():
    batches = ReplayableBatches(iter(range(4)))
    first = iter(batches)
    assert [next(first), next(first)] == [0, 1]
    assert list(batches) == [0, 1, 2, 3]


def test_list_is_not_copied_lazily():
    assert list(ReplayableBatches([5, 6])) == [5, 6]
