"""docs/methods.md §4.1: exact counts, no duplicates, seeded, per-class independence, uniformity."""

import numpy as np

from workers.config import Named
from workers.selectors import SelectContext
from workers.selectors.random import select


def ctx(labels, ipc, seed):
    return SelectContext(
        labels=labels, num_classes=int(labels.max()) + 1, ipc=ipc, seed=seed, selector=Named.make("random")
    )


LABELS = np.repeat(np.arange(3), [5, 8, 6])


def test_counts_sorted_unique_and_seeded():
    idx = select(ctx(LABELS, 4, 0))
    assert np.array_equal(np.bincount(LABELS[idx]), [4, 4, 4])
    assert np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, select(ctx(LABELS, 4, 0)))
    assert not np.array_equal(idx, select(ctx(LABELS, 4, 1)))


def test_a_class_draw_ignores_other_classes():
    other = LABELS.copy()
    other[other == 2] = 3  # relabel class 2 -> 3; classes 0 and 1 untouched
    other[:0] = 0
    a = select(ctx(LABELS, 3, 7))
    lab = np.concatenate([LABELS, [2, 2, 2]])  # class 2 gets more candidates
    b = select(ctx(lab, 3, 7))
    assert np.array_equal(a[LABELS[a] < 2], b[lab[b] < 2])


def test_each_index_is_drawn_uniformly():
    counts = np.zeros(len(LABELS))
    for seed in range(2000):
        counts[select(ctx(LABELS, 2, seed))] += 1
    expected = 2000 * 2 / np.bincount(LABELS)[LABELS]
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))


def test_too_few_candidates_names_the_class():
    import pytest

    from workers.selectors import SelectionError

    with pytest.raises(SelectionError, match="class 0 has 5"):
        select(ctx(LABELS, 6, 0))
