"""The TFDS malaria loader, on TFDS's own mock data (no download)."""

import pytest

from mlpipe_vision import datasets, tfds_malaria


def test_tfds_malaria_loading_path_on_mocked_tfds(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=20):
        meta = tfds_malaria.write_tfds_malaria(
            tmp_path / "dataset", str(tmp_path / "tfds"), image_size=24, seed=0
        )
    dataset = datasets.read_dataset(tmp_path / "dataset")
    assert dataset.class_names == ["parasitized", "uninfected"]
    assert dataset.image_shape[:2] == (24, 24)
    assert len(dataset.train_labels) + len(dataset.test_labels) == 20
    assert meta["counts"] == {"train": 16, "test": 4}
    assert dataset.files and dataset.files[0]["name"] == "cell_images.zip"
