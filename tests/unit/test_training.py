"""The streamed training data, and test metrics from one prediction pass."""

import keras
import numpy as np
import pytest

from mlpipe_vision import preprocessing, shards, training
from mlpipe_vision.images import normalize

NORMALIZATION = {"mean": [120.0], "std": [60.0]}


def write_preprocessed_split(folder, images, labels, shard_bytes=None):
    """A `preprocessed/`-like folder holding one "train" split; returns its meta."""
    records = shards.write_split(folder, "train", images, labels, shard_bytes)
    meta = preprocessing.preprocessed_meta(
        {"dataset": "t", "class_names": ["a"], "image_shape": images.shape[1:]},
        NORMALIZATION,
        {"train": records},
    )
    return meta


def test_streamed_dataset_yields_every_image_once_normalized_and_reshuffled(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (250, 5, 5, 1), dtype=np.uint8)
    labels = np.arange(250) % 3
    meta = write_preprocessed_split(tmp_path, images, labels, shard_bytes=25 * 40)
    assert len(meta["shards"]["train"]) == 7
    clock = training.EpochClock()
    data = training.make_dataset(tmp_path, meta, "train", 3, 32, shuffle_seed=5, clock=clock)
    assert int(data.cardinality()) == 8
    epochs = []
    for epoch in range(2):
        clock.on_epoch_begin(epoch)
        batches = list(data.as_numpy_iterator())
        assert [len(x) for x, _ in batches] == [32] * 7 + [26]
        epochs.append(np.concatenate([x for x, _ in batches]))
        one_hot = np.concatenate([y for _, y in batches])
        np.testing.assert_array_equal(
            np.sort(epochs[-1].reshape(250, -1), axis=0),
            np.sort(normalize(images, NORMALIZATION).reshape(250, -1), axis=0),
        )
        assert np.bincount(one_hot.argmax(axis=1)).tolist() == np.bincount(labels).tolist()
    assert not np.array_equal(epochs[0], epochs[1])
    # The order is the epoch's, not the iteration's: a resumed training sees epoch 1's order
    # on its first pass, as the uninterrupted one does on its second.
    resumed = training.make_dataset(tmp_path, meta, "train", 3, 32, shuffle_seed=5, clock=clock)
    np.testing.assert_array_equal(np.concatenate([x for x, _ in resumed]), epochs[1])
    clock.on_epoch_begin(0)
    np.testing.assert_array_equal(np.concatenate([x for x, _ in resumed]), epochs[0])
    in_order = training.make_dataset(tmp_path, meta, "train", 3, 100)
    np.testing.assert_array_equal(
        np.concatenate([x for x, _ in in_order]), normalize(images, NORMALIZATION)
    )


@pytest.mark.parametrize("num_classes", [2, 10])
def test_metrics_of_probabilities_match_evaluate(num_classes, tmp_path):
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).integers(0, 256, (300, 6, 6, 1), dtype=np.uint8)
    labels = np.random.default_rng(1).integers(0, num_classes, size=300)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(num_classes, activation="softmax"),
        ]
    )
    training.compile_model(model, "adam", 0.001, 10, num_classes)
    meta = write_preprocessed_split(tmp_path, images, labels)
    data = training.make_dataset(tmp_path, meta, "train", num_classes, 64)

    expected = model.evaluate(data, verbose=0, return_dict=True)
    got = training.metrics_of_probabilities(labels, model.predict(data, verbose=0))

    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(float(value), rel=1e-5, abs=1e-6), name


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ((300, 300), None),
        ((1000, 299), "only 299 training images of class 'b' (fewer than 300 per class)"),
        ((0, 500), "only 0 training images of class 'a'"),
    ],
)
def test_small_data_warning_names_the_class_with_the_fewest_images(counts, expected):
    labels = np.repeat(np.arange(len(counts)), counts)
    warning = training.small_data_warning(labels, ["a", "b"])
    if expected is None:
        assert warning is None
    else:
        assert expected in warning
        assert "augment=true" in warning
