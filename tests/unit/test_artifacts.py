"""Opening what stages hand each other: damaged shards, the wrong artifact, missing paths."""

import json

import numpy as np
import pytest

from mlpipe_vision import artifacts, datasets, preprocessing, shards


def write_dataset_folder(folder, count=40):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(count, 8, 8, 1), dtype=np.uint8)
    labels = np.resize(np.arange(2), count)
    dataset = datasets.Dataset(
        train_images=images[10:],
        train_labels=labels[10:],
        test_images=images[:10],
        test_labels=labels[:10],
        class_names=["a", "b"],
        name="tiny",
        source="synthetic",
    )
    datasets.save_dataset(dataset, folder)
    return folder


def test_shard_records_hold_size_and_checksum(tmp_path):
    folder = write_dataset_folder(tmp_path / "dataset")
    meta = artifacts.read_dataset_meta(folder)
    record = meta["shards"]["train"][0]
    path = folder / record["file"]
    assert record["bytes"] == path.stat().st_size
    assert len(record["sha256"]) == 64
    shards.verify(folder, meta, "get_data")


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("missing", "is missing; rerun get_data"),
        ("truncated", "meta.json says"),
        ("flipped", "does not match the SHA-256 in meta.json"),
    ],
)
def test_a_damaged_shard_is_named_with_the_stage_to_rerun(tmp_path, how, message):
    folder = write_dataset_folder(tmp_path / "dataset")
    path = folder / "test-00000.npz"
    data = path.read_bytes()
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(data[:100])
    else:
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ValueError, match=message) as error:
        shards.verify(folder, artifacts.read_dataset_meta(folder), "get_data")
    assert str(path) in str(error.value)


def test_a_shard_that_is_not_a_zip_is_one_message(tmp_path):
    folder = write_dataset_folder(tmp_path / "dataset")
    meta = artifacts.read_dataset_meta(folder)
    (folder / "train-00000.npz").write_bytes(b"PK\x03\x04 not really a zip file at all")
    with pytest.raises(ValueError, match="is missing or corrupt"):
        shards.load(folder, meta["shards"]["train"][0], "images")


def test_an_older_artifact_without_checksums_is_only_checked_to_exist(tmp_path):
    folder = write_dataset_folder(tmp_path / "dataset")
    meta = json.loads((folder / "meta.json").read_text())
    for records in meta["shards"].values():
        for record in records:
            del record["bytes"], record["sha256"]
    shards.verify(folder, meta, "get_data")


def test_another_stages_artifact_is_named(tmp_path):
    folder = write_dataset_folder(tmp_path / "dataset")
    opened = artifacts.open_preprocessed(str(folder), "train")
    with pytest.raises(ValueError, match="is a get_data output \\(dataset/\\); train reads"):
        opened.__enter__()
    meta = json.loads((folder / "meta.json").read_text())
    meta["normalization"] = {"mean": [0.0], "std": [1.0]}
    (folder / "meta.json").write_text(json.dumps(meta))
    opened = artifacts.open_dataset(str(folder), "explore_data")
    with pytest.raises(ValueError, match="is a preprocess output; explore_data reads"):
        opened.__enter__()


def test_a_path_that_does_not_exist_says_so(tmp_path):
    missing = tmp_path / "nowhere"
    for uri in (f"file://{missing}", str(missing)):
        with pytest.raises(ValueError, match=f"{missing} does not exist; expected runs:/"):
            artifacts.resolve_artifact_dir(uri, "meta.json", artifacts.PREPROCESSED_FROM)
    with pytest.raises(ValueError, match="neither an existing folder nor a URI"):
        artifacts.resolve_artifact_dir("nonsense", "meta.json", artifacts.PREPROCESSED_FROM)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((0, None, 0.2), "image_size must be a whole number from 1 to 4096"),
        ((-5, None, 0.2), "got -5"),
        ((100, 2, 0.2), "channels must be 1, 3 or 0"),
        ((100, None, 0.0), "test_fraction must be between 0 and 1"),
        ((100, None, 1.0), "test_fraction must be between 0 and 1"),
    ],
)
def test_impossible_get_data_parameters_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        datasets.check_parameters(*arguments)
    datasets.check_parameters(100, 3, 0.2)


def test_a_validation_fraction_that_leaves_no_training_images_is_refused():
    with pytest.raises(ValueError, match="1 would leave no training images"):
        preprocessing.run_preprocess("runs:/unused/dataset", validation_fraction=1.0)
