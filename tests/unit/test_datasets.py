"""The `dataset/` artifact (save and read) and the choice of source by name."""

from pathlib import Path

import numpy as np
import pytest

from mlpipe_vision import datasets, idx_files
from tests.conftest import write_idx_mirror


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(ValueError) as raised:
        datasets.write_dataset("cifar10", Path("unused"))
    for name in datasets.DATASET_NAMES:
        assert name in str(raised.value)
    assert "'cifar10'" in str(raised.value)


def test_save_and_read_dataset_round_trip(tmp_path):
    mirror = write_idx_mirror(tmp_path / "mirror")
    dataset = idx_files.load_idx_dataset("mnist", source=str(mirror), verify=False)
    datasets.save_dataset(dataset, tmp_path / "dataset")
    again = datasets.read_dataset(tmp_path / "dataset")
    # Stored in a seeded random order: the same images and labels, not the same order.
    order = np.lexsort(dataset.train_images.reshape(len(dataset.train_labels), -1).T)
    again_order = np.lexsort(again.train_images.reshape(len(again.train_labels), -1).T)
    np.testing.assert_array_equal(again.train_images[again_order], dataset.train_images[order])
    np.testing.assert_array_equal(again.train_labels[again_order], dataset.train_labels[order])
    assert again.class_names == dataset.class_names


def test_read_dataset_names_a_corrupt_split(tmp_path):
    mirror = write_idx_mirror(tmp_path / "mirror")
    dataset = idx_files.load_idx_dataset("mnist", source=str(mirror), verify=False)
    datasets.save_dataset(dataset, tmp_path / "dataset")
    (tmp_path / "dataset" / "test-00000.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"test-00000.npz is missing or corrupt"):
        datasets.read_dataset(tmp_path / "dataset")
