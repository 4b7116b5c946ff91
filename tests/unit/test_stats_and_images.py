import numpy as np
import pytest

from mlpipe_vision import datasets, images, shards, stats
from tests.unit.test_preprocessing import tiny_dataset


def test_pixel_stats_overall_and_per_channel():
    data = np.zeros((2, 2, 2, 3), dtype=np.uint8)
    data[..., 0] = 255
    result = stats.pixel_stats(data)
    assert result["mean"] == pytest.approx(85.0)
    assert result["per_channel"]["mean"] == [255.0, 0.0, 0.0]
    assert result["max"] == 255.0
    assert "per_channel" not in stats.pixel_stats(data[..., :1])


def test_pixel_stats_from_histograms_equal_numpy_on_the_pixels():
    data = np.random.default_rng(0).integers(0, 256, (40, 9, 7, 3), dtype=np.uint8)
    chunks = [data[:13], data[13:31], data[31:]]
    histogram = sum(stats.pixel_histogram(chunk) for chunk in chunks)
    result = stats.stats_of_histogram(histogram)
    values = data.astype(np.float64)
    assert result["mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert result["std"] == pytest.approx(values.std(), rel=1e-12)
    assert result["per_channel"]["std"] == pytest.approx(values.std(axis=(0, 1, 2)), rel=1e-12)
    assert (result["min"], result["max"]) == (float(data.min()), float(data.max()))


def test_compute_stats_counts_every_class(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "SHARD_BYTES", 8 * 8 * 11)
    dataset = tiny_dataset()
    meta = datasets.save_dataset(dataset, tmp_path / "dataset")
    record = stats.compute_stats(tmp_path / "dataset", meta)
    assert record["splits"]["train"] == {"count": 60, "class_counts": {"a": 20, "b": 20, "c": 20}}
    assert record["splits"]["test"]["count"] == 30
    assert record["train_pixels"] == stats.pixel_stats(dataset.train_images)
    histogram, samples, labels = stats.scan_train_split(tmp_path / "dataset", meta, per_class=4)
    assert np.bincount(labels).tolist() == [4, 4, 4]
    assert samples.shape == (12, 8, 8, 1)


def test_fit_image_keeps_aspect_and_pads():
    tall = np.full((40, 20), 200, dtype=np.uint8)
    fitted = images.fit_image(tall, 28, 28, 1)
    assert fitted.shape == (28, 28, 1)
    assert fitted[:, :6].max() == 0 and fitted[:, -6:].max() == 0
    assert fitted[:, 10:18].min() == 200


@pytest.mark.parametrize(("channels", "shape"), [(1, (10, 10, 1)), (3, (10, 10, 3))])
def test_fit_image_converts_channels(channels, shape):
    colour = np.zeros((10, 10, 3), dtype=np.uint8)
    colour[..., 1] = 255
    assert images.fit_image(colour, 10, 10, channels).shape == shape


def test_fit_image_inverts_light_backgrounds_only_when_auto():
    drawing = np.full((30, 30), 255, dtype=np.uint8)
    drawing[10:20, 14:16] = 0
    inverted = images.fit_image(drawing, 30, 30, 1, invert="auto")
    assert inverted[0, 0, 0] == 0 and inverted[15, 15, 0] == 255
    dark = 255 - drawing
    assert images.fit_image(dark, 30, 30, 1, invert="auto")[15, 15, 0] == 255


def test_decode_image_refuses_empty_and_corrupt_bytes():
    with pytest.raises(ValueError, match="row 3 is empty"):
        images.decode_image(b"", "row 3")
    with pytest.raises(ValueError, match="not a readable image"):
        images.decode_image(b"\x89PNG broken", "upload.png")
