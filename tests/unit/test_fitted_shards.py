"""The chunk-fit-write loop that image folders and TFDS share."""

import numpy as np
import pytest

from mlpipe_vision import fitted_shards, images, shards


def stream(count: int, colour_at: int | None = None):
    """(split, image, label) triples, every third one "test", of assorted sizes."""
    rng = np.random.default_rng(0)
    for index in range(count):
        shape = (5 + index % 4, 7) if index != colour_at else (6, 7, 3)
        image = rng.integers(0, 255, size=shape, dtype=np.uint8)
        yield ("test" if index % 3 == 0 else "train"), image, index % 10


def test_each_split_is_written_in_stream_order_across_chunks(tmp_path):
    count = 2 * fitted_shards.CHUNK_IMAGES + 100
    split_shards, channels = fitted_shards.write_fitted_shards(
        tmp_path, stream(count), image_size=8, channels=None
    )
    assert channels == 1
    meta = {"shards": split_shards, "image_shape": [8, 8, 1]}
    expected = {"train": [], "test": []}
    for split, image, label in stream(count):
        expected[split].append((images.fit_image(image, 8, 8, 1), label))
    for split, pairs in expected.items():
        stored_images, stored_labels = shards.read_split(tmp_path, meta, split)
        assert stored_labels.tolist() == [label for _, label in pairs]
        np.testing.assert_array_equal(stored_images, np.stack([image for image, _ in pairs]))


def test_one_colour_image_keeps_three_channels(tmp_path):
    split_shards, channels = fitted_shards.write_fitted_shards(
        tmp_path, stream(30, colour_at=29), image_size=8, channels=None
    )
    assert channels == 3
    meta = {"shards": split_shards, "image_shape": [8, 8, 3]}
    assert shards.read_split(tmp_path, meta, "train")[0].shape == (20, 8, 8, 3)


def test_channels_other_than_one_or_three_are_refused(tmp_path):
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        fitted_shards.write_fitted_shards(tmp_path, stream(3), image_size=8, channels=2)
