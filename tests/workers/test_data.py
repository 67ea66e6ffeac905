import numpy as np

from workers.data.digits import load


def test_digits_split_is_fixed_disjoint_and_stratified():
    a, b = load(), load(minival_per_class=10)
    assert np.array_equal(a.train_y, b.train_y)
    assert a.train_x.dtype == np.uint8 and a.train_x.shape[1:] == (1, 8, 8)
    total = len(a.train_y) + len(a.minival_y) + len(a.test_y)
    assert total == 1797
    assert np.all(np.bincount(a.minival_y) == 10)
    test_counts = np.bincount(a.test_y)
    assert test_counts.min() >= 34 and test_counts.max() <= 37  # 20% of 174..183 per class


def test_split_indices_are_disjoint_and_cover_everything():
    from sklearn.datasets import load_digits

    from workers.data import stratified_split
    from workers.data.digits import SPLIT_SEED

    y = load_digits().target
    tr, mv, te = stratified_split(y, 10, 0.2, 10, SPLIT_SEED)
    assert len(set(tr) | set(mv) | set(te)) == len(y) == len(tr) + len(mv) + len(te)
    tr2, _, _ = stratified_split(y, 10, 0.2, 10, SPLIT_SEED + 1)
    assert not np.array_equal(tr, tr2)


def test_upsampling_repeats_pixels():
    s8, s16 = load(), load(image_size=16)
    assert s16.train_x.shape[1:] == (1, 16, 16)
    assert np.array_equal(s16.train_x[:, :, ::2, ::2], s8.train_x)
