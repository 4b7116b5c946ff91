import functools

import numpy as np
import pytest

from mlpipe_vision import artifacts, datasets, preprocessing, shards
from mlpipe_vision.images import normalize


def tiny_dataset(channels: int = 1) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    train_labels = np.repeat(np.arange(3), 20)
    test_labels = np.repeat(np.arange(3), 10)
    return datasets.Dataset(
        train_images=rng.integers(0, 256, (60, 8, 8, channels), dtype=np.uint8),
        train_labels=train_labels,
        test_images=rng.integers(0, 256, (30, 8, 8, channels), dtype=np.uint8),
        test_labels=test_labels,
        class_names=["a", "b", "c"],
        name="tiny",
        source="test",
    )


@pytest.mark.parametrize(
    ("mean", "std", "channels", "expected"),
    [
        (10.0, 2.0, 1, {"mean": [10.0], "std": [2.0]}),
        (10.0, 2.0, 3, {"mean": [10.0] * 3, "std": [2.0] * 3}),
        ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], 3, {"mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0]}),
    ],
)
def test_make_normalization_broadcasts_per_channel(mean, std, channels, expected):
    assert preprocessing.make_normalization(mean, std, channels) == expected


@pytest.mark.parametrize(("mean", "std"), [(0.0, 0.0), (0.0, -1.0), (float("nan"), 1.0)])
def test_make_normalization_refuses_bad_values(mean, std):
    with pytest.raises(ValueError, match="std must be positive"):
        preprocessing.make_normalization(mean, std, 1)


def test_normalize_gives_zero_mean_unit_std():
    images = np.random.default_rng(0).integers(0, 256, (50, 4, 4, 1), dtype=np.uint8)
    normalization = {"mean": [float(images.mean())], "std": [float(images.std())]}
    normalized = normalize(images, normalization)
    assert normalized.dtype == np.float32
    assert abs(normalized.mean()) < 1e-4
    assert abs(normalized.std() - 1) < 1e-4


def test_resolve_normalization_sources(tmp_path):
    dataset = tiny_dataset()
    meta = datasets.save_dataset(dataset, tmp_path / "dataset")
    resolve = functools.partial(preprocessing.resolve_normalization, tmp_path / "dataset", meta)
    explicit, origin = resolve(1.0, 2.0, "")
    assert (explicit, origin) == ({"mean": [1.0], "std": [2.0]}, "explicit")
    computed, origin = resolve(None, None, "")
    assert origin == "computed"
    assert computed["mean"][0] == pytest.approx(dataset.train_images.mean())
    assert computed["std"][0] == pytest.approx(dataset.train_images.std())
    with pytest.raises(ValueError, match="give both mean and std"):
        resolve(1.0, None, "")


def test_streamed_splits_equal_the_in_memory_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "SHARD_BYTES", 8 * 8 * 7)  # many shards of 7 images
    dataset = tiny_dataset()
    meta = datasets.save_dataset(dataset, tmp_path / "dataset")
    stored = datasets.read_dataset(tmp_path / "dataset")
    chosen = preprocessing.choose_splits(stored.train_labels, stored.test_labels, 0.2, 50, 3)
    normalization = preprocessing.make_normalization(100.0, 50.0, 1)
    written = preprocessing.write_splits(
        tmp_path / "dataset", meta, chosen, normalization, tmp_path / "pre"
    )
    loaded, _ = artifacts.load_preprocessed(tmp_path / "pre")
    expected = preprocessing.make_splits(stored, 0.2, 50, 3)
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(loaded[split][0], expected[split][0])
        np.testing.assert_array_equal(loaded[split][1], expected[split][1])
        assert loaded[split][0].dtype == np.uint8
    assert written["counts"] == {"train": 24, "validation": 6, "test": 15}
    assert len(written["shards"]["train"]) == 4


def test_make_splits_never_uses_test_for_validation():
    dataset = tiny_dataset()
    split_arrays = preprocessing.make_splits(
        dataset, validation_fraction=0.25, percentage=100, seed=0
    )
    assert [len(split_arrays[s][1]) for s in ("train", "validation", "test")] == [45, 15, 30]
    np.testing.assert_array_equal(split_arrays["test"][0], dataset.test_images)
    train_and_validation = np.concatenate([split_arrays["train"][0], split_arrays["validation"][0]])
    assert sorted(map(bytes, train_and_validation)) == sorted(map(bytes, dataset.train_images))


def test_make_splits_percentage_keeps_a_stratified_subset():
    split_arrays = preprocessing.make_splits(
        tiny_dataset(), validation_fraction=0.2, percentage=50, seed=0
    )
    labels = np.concatenate([split_arrays["train"][1], split_arrays["validation"][1]])
    assert np.bincount(labels).tolist() == [10, 10, 10]
    assert np.bincount(split_arrays["test"][1]).tolist() == [5, 5, 5]


def test_save_and_load_preprocessed(tmp_path):
    dataset = tiny_dataset(channels=3)
    normalization = preprocessing.make_normalization(100.0, 50.0, 3)
    split_arrays = preprocessing.make_splits(dataset, 0.2, 100, 0)
    preprocessing.save_preprocessed(split_arrays, normalization, dataset, tmp_path / "pre")
    loaded, meta = artifacts.load_preprocessed(tmp_path / "pre")
    assert meta["image_shape"] == [8, 8, 3]
    assert meta["normalization"] == normalization
    np.testing.assert_array_equal(loaded["test"][0], split_arrays["test"][0])
