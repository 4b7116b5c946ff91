import numpy as np
import pytest

from mlpipe_vision import splits


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_stratified_split_keeps_class_shares_and_is_disjoint(fraction):
    labels = np.repeat(np.arange(4), [100, 40, 60, 20])
    kept, split_off = splits.stratified_split(labels, fraction, seed=0)
    assert len(np.intersect1d(kept, split_off)) == 0
    assert len(kept) + len(split_off) == len(labels)
    for label, count in enumerate([100, 40, 60, 20]):
        assert np.sum(labels[split_off] == label) == round(count * fraction)


def test_stratified_split_is_seeded():
    labels = np.repeat(np.arange(3), 50)
    first = splits.stratified_split(labels, 0.2, seed=7)
    again = splits.stratified_split(labels, 0.2, seed=7)
    other = splits.stratified_split(labels, 0.2, seed=8)
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize(
    ("labels", "fraction", "message"),
    [
        (np.array([0, 0, 1, 1]), 0.0, "between 0 and 1"),
        (np.array([0, 0, 1, 1]), 1.0, "between 0 and 1"),
        (np.array([0, 0, 1]), 0.5, "class 1 has 1 example"),
    ],
)
def test_stratified_split_refusals(labels, fraction, message):
    with pytest.raises(ValueError, match=message):
        splits.stratified_split(labels, fraction, seed=0)


def test_stratified_subset_percentages():
    labels = np.repeat(np.arange(2), 100)
    assert len(splits.stratified_subset(labels, 100, seed=0)) == 200
    subset = splits.stratified_subset(labels, 10, seed=0)
    assert np.bincount(labels[subset]).tolist() == [10, 10]
    with pytest.raises(ValueError, match=r"percentage must be in \(0, 100\], got 150"):
        splits.stratified_subset(labels, 150, seed=0)
