import gzip
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from mlpipe_vision import datasets, shards
from tests.conftest import idx_bytes, write_idx_mirror


def spec_for(
    folder: Path, mirrors: tuple[str, ...] = (), system_dirs=()
) -> datasets.IdxDatasetSpec:
    """A dataset spec whose official checksums are those of the files in `folder`."""
    files = {}
    for role, name in (
        ("train_images", "train-images-idx3-ubyte.gz"),
        ("train_labels", "train-labels-idx1-ubyte.gz"),
        ("test_images", "t10k-images-idx3-ubyte.gz"),
        ("test_labels", "t10k-labels-idx1-ubyte.gz"),
    ):
        raw = (folder / name).read_bytes()
        files[role] = datasets.IdxFile(
            name,
            hashlib.sha256(raw).hexdigest(),
            hashlib.sha256(gzip.decompress(raw)).hexdigest(),
        )
    return datasets.IdxDatasetSpec(
        mirrors=mirrors,
        class_names=tuple(str(i) for i in range(10)),
        files=files,
        system_dirs=tuple(str(d) for d in system_dirs),
    )


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.array([3, 1, 4, 1, 5], dtype=np.uint8),
    ],
)
def test_parse_idx_round_trips(array):
    np.testing.assert_array_equal(datasets.parse_idx(idx_bytes(array), "x"), array)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x02\x03\x04rest", "bad magic number"),
        (b"", "bad magic number"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated inside its IDX header"),
        (idx_bytes(np.zeros((2, 3, 4), np.uint8))[:-1], "truncated or corrupt"),
    ],
)
def test_parse_idx_refuses_malformed_files(data, message):
    with pytest.raises(ValueError, match=message):
        datasets.parse_idx(data, "broken.idx")


def test_load_from_folder_with_verification(tmp_path):
    mirror = write_idx_mirror(tmp_path / "mirror")
    dataset = datasets.load_idx_dataset("mnist", source=str(mirror), spec=spec_for(mirror))
    assert dataset.train_images.shape == (300, 28, 28, 1)
    assert dataset.test_labels.shape == (100,)
    assert dataset.verified
    assert {record["name"] for record in dataset.files} == {
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    }


def test_recompressed_copy_is_verified_by_its_content(tmp_path):
    mirror = write_idx_mirror(tmp_path / "mirror")
    spec = spec_for(mirror)
    recompressed = tmp_path / "recompressed"
    recompressed.mkdir()
    for path in mirror.iterdir():
        content = gzip.decompress(path.read_bytes())
        (recompressed / path.name).write_bytes(gzip.compress(content, mtime=0, compresslevel=1))
    dataset = datasets.load_idx_dataset("mnist", source=str(recompressed), spec=spec)
    assert dataset.verified


def test_uncompressed_files_are_accepted(tmp_path):
    mirror = write_idx_mirror(tmp_path / "mirror")
    spec = spec_for(mirror)
    plain = tmp_path / "plain"
    plain.mkdir()
    for path in mirror.iterdir():
        (plain / path.name.removesuffix(".gz")).write_bytes(gzip.decompress(path.read_bytes()))
    assert datasets.load_idx_dataset("mnist", source=str(plain), spec=spec).verified


def test_checksum_mismatch_names_file_and_both_hashes(tmp_path):
    official = write_idx_mirror(tmp_path / "official", seed=1)
    other = write_idx_mirror(tmp_path / "other", seed=2)
    spec = spec_for(official)
    found = hashlib.sha256((other / "train-images-idx3-ubyte.gz").read_bytes()).hexdigest()
    with pytest.raises(ValueError) as raised:
        datasets.load_idx_dataset("mnist", source=str(other), spec=spec)
    message = str(raised.value)
    assert "train-images-idx3-ubyte.gz" in message
    assert spec.files["train_images"].gzip_sha256 in message
    assert found in message
    assert "verify=false" in message


def test_verify_false_accepts_other_files_and_records_them_unverified(tmp_path):
    official = write_idx_mirror(tmp_path / "official", seed=1)
    other = write_idx_mirror(tmp_path / "other", seed=2, train_count=50, test_count=20)
    dataset = datasets.load_idx_dataset(
        "mnist", source=str(other), verify=False, spec=spec_for(official)
    )
    assert not dataset.verified
    assert len(dataset.train_labels) == 50


def test_missing_file_in_source_folder_is_named(tmp_path):
    mirror = write_idx_mirror(tmp_path / "mirror")
    spec = spec_for(mirror)
    (mirror / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz is not in .*mirror"):
        datasets.load_idx_dataset("mnist", source=str(mirror), spec=spec)


def test_download_verifies_and_caches_then_reuses_the_cache(tmp_path):
    mirror = write_idx_mirror(tmp_path / "mirror")
    spec = spec_for(mirror, mirrors=(f"file://{mirror}/",))
    cache = tmp_path / "cache"
    first = datasets.load_idx_dataset("mnist", cache_dir=cache, spec=spec)
    assert first.verified
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(
        p.name for p in mirror.iterdir()
    )
    for path in mirror.iterdir():
        path.unlink()
    second = datasets.load_idx_dataset("mnist", cache_dir=cache, spec=spec)
    np.testing.assert_array_equal(first.train_images, second.train_images)
    assert all(str(cache) in record["source"] for record in second.files)


def test_corrupt_download_leaves_nothing_in_the_cache(tmp_path):
    official = write_idx_mirror(tmp_path / "official", seed=1)
    corrupt = write_idx_mirror(tmp_path / "corrupt", seed=3)
    spec = spec_for(official, mirrors=(f"file://{corrupt}/",))
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="checksum mismatch"):
        datasets.load_idx_dataset("mnist", cache_dir=cache, spec=spec)
    assert not any(path.is_file() for path in cache.rglob("*"))


def test_corrupt_cached_copy_is_replaced(tmp_path):
    mirror = write_idx_mirror(tmp_path / "mirror")
    spec = spec_for(mirror, mirrors=(f"file://{mirror}/",))
    cache = tmp_path / "cache"
    (cache / "mnist").mkdir(parents=True)
    (cache / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"half a file")
    with pytest.warns(UserWarning, match="removing"):
        dataset = datasets.load_idx_dataset("mnist", cache_dir=cache, spec=spec)
    assert dataset.verified


def test_system_copy_is_used_before_downloading(tmp_path):
    mirror = write_idx_mirror(tmp_path / "system")
    spec = spec_for(mirror, mirrors=("http://127.0.0.1:9/",), system_dirs=(mirror,))
    dataset = datasets.load_idx_dataset("mnist", cache_dir=tmp_path / "cache", spec=spec)
    assert all(record["source"].startswith(str(mirror)) for record in dataset.files)


def test_no_copy_and_no_network_says_where_it_looked(tmp_path):
    mirror = write_idx_mirror(tmp_path / "mirror")
    spec = spec_for(mirror, mirrors=("http://127.0.0.1:9/",), system_dirs=(tmp_path / "none",))
    with pytest.raises(ValueError) as raised:
        datasets.load_idx_dataset("mnist", cache_dir=tmp_path / "cache", spec=spec)
    message = str(raised.value)
    assert str(tmp_path / "cache") in message
    assert str(tmp_path / "none") in message
    assert "-P source=" in message


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(ValueError) as raised:
        datasets.write_dataset("cifar10", Path("unused"))
    for name in datasets.DATASET_NAMES:
        assert name in str(raised.value)
    assert "'cifar10'" in str(raised.value)


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
    datasets.write_image_folder(str(folder), dataset_dir, **kwargs)
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
    meta = datasets.write_image_folder(str(folder), tmp_path / "dataset", image_size=16, channels=1)
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
        meta = datasets.write_image_folder(str(folder), tmp_path / "dataset", image_size=16)
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
        datasets.write_image_folder(str(root), tmp_path / "dataset", image_size=16)
    assert str(root) in str(raised.value)


def test_tfds_malaria_loading_path_on_mocked_tfds(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=20):
        meta = datasets.write_tfds_malaria(
            tmp_path / "dataset", str(tmp_path / "tfds"), image_size=24, seed=0
        )
    dataset = datasets.read_dataset(tmp_path / "dataset")
    assert dataset.class_names == ["parasitized", "uninfected"]
    assert dataset.image_shape[:2] == (24, 24)
    assert len(dataset.train_labels) + len(dataset.test_labels) == 20
    assert meta["counts"] == {"train": 16, "test": 4}
    assert dataset.files and dataset.files[0]["name"] == "cell_images.zip"


def test_save_and_read_dataset_round_trip(tmp_path):
    mirror = write_idx_mirror(tmp_path / "mirror")
    dataset = datasets.load_idx_dataset("mnist", source=str(mirror), verify=False)
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
    dataset = datasets.load_idx_dataset("mnist", source=str(mirror), verify=False)
    datasets.save_dataset(dataset, tmp_path / "dataset")
    (tmp_path / "dataset" / "test-00000.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"test-00000.npz is missing or corrupt"):
        datasets.read_dataset(tmp_path / "dataset")
