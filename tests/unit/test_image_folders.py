"""Folders of images, one subfolder per class, written as a `dataset/`."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from mlpipe_vision import datasets, image_folders, shards


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(path.suffix, image)
    assert ok
    path.write_bytes(encoded.tobytes())


def make_image_folder(root: Path, colour: bool, per_class: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for class_name in ("Parasitized", "Uninfected"):
        for index in range(per_class):
            shape = (40 + index, 30, 3) if colour else (40 + index, 30)
            write_png(
                root / class_name / f"cell_{index}.png",
                rng.integers(0, 255, size=shape, dtype=np.uint8),
            )
    return root


def load_image_folder(folder: Path, **kwargs) -> datasets.Dataset:
    """Write the folder as a `dataset/` next to it and read that back whole."""
    dataset_dir = folder.parent / f"dataset_{len(list(folder.parent.iterdir()))}"
    image_folders.write_image_folder(str(folder), dataset_dir, **kwargs)
    return datasets.read_dataset(dataset_dir)


@pytest.mark.parametrize(("colour", "channels"), [(False, 1), (True, 3)])
def test_image_folder_keeps_one_channel_only_when_all_are_gray(tmp_path, colour, channels):
    folder = make_image_folder(tmp_path / "cells", colour)
    dataset = load_image_folder(folder, image_size=16, test_fraction=0.2, seed=1)
    assert dataset.class_names == ["Parasitized", "Uninfected"]
    assert dataset.image_shape == (16, 16, channels)
    assert len(dataset.train_labels) == 16
    assert np.bincount(dataset.test_labels).tolist() == [2, 2]
    assert len(dataset.files) == 20


def test_image_folder_channels_parameter_overrides(tmp_path):
    folder = make_image_folder(tmp_path / "cells", colour=False)
    dataset = load_image_folder(folder, image_size=16, channels=3)
    assert dataset.image_shape == (16, 16, 3)


def test_gray_folder_decided_after_the_pass_equals_one_channel_asked_for(tmp_path):
    folder = make_image_folder(tmp_path / "cells", colour=False, per_class=300)
    decided = load_image_folder(folder, image_size=16)
    asked = load_image_folder(folder, image_size=16, channels=1)
    assert decided.image_shape == (16, 16, 1)
    np.testing.assert_array_equal(decided.train_images, asked.train_images)
    np.testing.assert_array_equal(decided.test_labels, asked.test_labels)


def test_image_folder_is_stored_shuffled_in_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "SHARD_BYTES", 16 * 16 * 50)
    folder = make_image_folder(tmp_path / "cells", colour=False, per_class=200)
    meta = image_folders.write_image_folder(
        str(folder), tmp_path / "dataset", image_size=16, channels=1
    )
    assert [shard["count"] for shard in meta["shards"]["train"]] == [50] * 6 + [20]
    labels = shards.read_labels(tmp_path / "dataset", meta, "train")
    # Class folders are read one after the other; stored in file order, the first shard
    # would hold one class only.
    assert 10 < labels[:50].sum() < 40


def test_image_folder_skips_unreadable_files_and_records_them(tmp_path):
    folder = make_image_folder(tmp_path / "cells", colour=False)
    (folder / "Uninfected" / "broken.png").write_bytes(b"not a png")
    (folder / "Uninfected" / "Thumbs.db").write_bytes(b"ignored: not an image name")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        meta = image_folders.write_image_folder(str(folder), tmp_path / "dataset", image_size=16)
    assert meta["skipped"] == [str(folder / "Uninfected" / "broken.png")]
    assert meta["counts"]["train"] + meta["counts"]["test"] == 20


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "does not exist"),
        ("empty", "0 class subfolder"),
        ("one_class", "1 class subfolder"),
        ("unreadable_class", "no readable image in class folder"),
    ],
)
def test_image_folder_refusals_name_the_folder(tmp_path, layout, message):
    root = tmp_path / "cells"
    if layout == "empty":
        root.mkdir()
    elif layout == "one_class":
        make_image_folder(root, colour=False)
        for path in (root / "Uninfected").iterdir():
            path.unlink()
    elif layout == "unreadable_class":
        make_image_folder(root, colour=False)
        for path in (root / "Uninfected").iterdir():
            path.write_bytes(b"")
    with pytest.raises(ValueError, match=message) as raised:
        image_folders.write_image_folder(str(root), tmp_path / "dataset", image_size=16)
    assert str(root) in str(raised.value)
