"""The three data stages chained through the real `mlflow run`, each fed the previous URI."""

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.artifacts import download_artifacts

from mlpipe_vision import artifacts, datasets, idx_files, shards, stats
from tests.conftest import FASHION_MNIST_DIR, mlflow_run
from tests.unit.test_image_folders import make_image_folder

pytestmark = pytest.mark.integration


def read_json(uri: str) -> dict:
    return json.loads(Path(download_artifacts(uri)).read_text())


def run_chain(tracking, **get_data_parameters) -> dict:
    """Run get_data, explore_data and preprocess in a row; return their results."""
    get_data = mlflow_run(tracking, "get_data", **get_data_parameters)
    data_uri = f"runs:/{get_data['run_id']}/dataset"
    assert f"-P data={data_uri}" in get_data["output"]
    explore = mlflow_run(tracking, "explore_data", data=data_uri)
    stats_uri = f"runs:/{explore['run_id']}/stats.json"
    assert f"-P stats={stats_uri}" in explore["output"]
    preprocess = mlflow_run(
        tracking, "preprocess", data=data_uri, stats=stats_uri, validation_fraction=0.2
    )
    assert (
        f"mlflow run . -e train -P data=runs:/{preprocess['run_id']}/preprocessed"
        in (preprocess["output"])
    )
    return {"get_data": get_data, "explore": explore, "preprocess": preprocess}


def test_chain_on_a_synthetic_idx_mirror(tracking, use_tracking, idx_mirror_dir):
    client = tracking["client"]
    runs = run_chain(tracking, dataset="mnist", source=idx_mirror_dir, verify="false")

    get_data_run = client.get_run(runs["get_data"]["run_id"])
    meta = read_json(f"runs:/{get_data_run.info.run_id}/dataset/meta.json")
    assert meta["image_shape"] == [28, 28, 1]
    assert meta["counts"] == {"train": 300, "test": 100}
    assert meta["verified"] is False
    files = read_json(f"runs:/{get_data_run.info.run_id}/dataset/files.json")
    assert len(files) == 4 and all(len(f["sha256"]) == 64 for f in files)
    assert get_data_run.inputs.dataset_inputs[0].dataset.digest == meta["files_digest"][:8]
    assert get_data_run.inputs.dataset_inputs, "the dataset is logged as an MLflow input"

    explore_run = client.get_run(runs["explore"]["run_id"])
    stats = read_json(f"runs:/{explore_run.info.run_id}/stats.json")
    assert stats["splits"]["train"]["count"] == 300
    assert explore_run.data.metrics["mean"] == pytest.approx(stats["train_pixels"]["mean"])
    plots = {a.path for a in client.list_artifacts(explore_run.info.run_id, "plots")}
    assert plots == {
        "plots/samples.png",
        "plots/class_balance.png",
        "plots/pixel_histogram.png",
    }

    preprocess_run = client.get_run(runs["preprocess"]["run_id"])
    assert preprocess_run.data.tags["mlpipe.input_uri"] == (
        f"runs:/{get_data_run.info.run_id}/dataset"
    )
    preprocessed_dir = download_artifacts(f"runs:/{preprocess_run.info.run_id}/preprocessed")
    split_arrays, meta = artifacts.load_preprocessed(Path(preprocessed_dir))
    assert len(split_arrays["validation"][1]) == 60
    assert len(split_arrays["test"][1]) == 100
    assert meta["counts"] == {"train": 240, "validation": 60, "test": 100}
    assert split_arrays["train"][0].dtype == np.uint8
    normalization = read_json(f"runs:/{preprocess_run.info.run_id}/normalization.json")
    assert normalization["mean"] == [pytest.approx(stats["train_pixels"]["mean"])]


def test_checksum_failure_fails_the_run_and_names_the_file(tracking, idx_mirror_dir):
    result = mlflow_run(tracking, "get_data", check=False, dataset="mnist", source=idx_mirror_dir)
    assert result["returncode"] != 0
    assert "checksum mismatch for train-images-idx3-ubyte.gz" in result["output"]
    assert tracking["client"].get_run(result["run_id"]).info.status == "FAILED"


def test_unknown_dataset_lists_valid_names(tracking):
    result = mlflow_run(tracking, "get_data", check=False, dataset="cifar")
    assert result["returncode"] != 0
    assert "unknown dataset 'cifar'; expected one of mnist, fashion_mnist" in result["output"]


def test_wrong_uri_says_what_was_expected(tracking, idx_mirror_dir):
    get_data = mlflow_run(tracking, "get_data", dataset="mnist", source=idx_mirror_dir, verify=0)
    result = mlflow_run(
        tracking, "explore_data", check=False, data=f"runs:/{get_data['run_id']}/nothing"
    )
    assert result["returncode"] != 0
    assert "expected runs:/<get_data_run_id>/dataset" in result["output"]


def test_image_folder_through_get_data(tracking, tmp_path):
    folder = make_image_folder(tmp_path / "cell_images", colour=True)
    result = mlflow_run(tracking, "get_data", dataset="image_dir", source=folder, image_size=32)
    assert "16 train / 4 test images of shape (32, 32, 3), 2 classes" in result["output"]


@pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist (apt-get install)"
)
def test_chain_on_real_fashion_mnist(tracking):
    runs = run_chain(tracking, dataset="fashion_mnist")
    assert (
        "60000 train / 10000 test images of shape (28, 28, 1), 10 classes (verified)"
        in (runs["get_data"]["output"])
    )
    assert "mean 72.9404, std 90.0212" in runs["explore"]["output"]
    assert "48000 train, 12000 validation, 10000 test" in runs["preprocess"]["output"]


@pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist (apt-get install)"
)
def test_streamed_statistics_equal_the_in_memory_ones_on_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "SHARD_BYTES", 28 * 28 * 7000)  # 8 shards of train, not 1
    dataset = idx_files.load_idx_dataset("fashion_mnist", source=str(FASHION_MNIST_DIR))
    meta = datasets.save_dataset(dataset, tmp_path / "dataset")
    assert len(meta["shards"]["train"]) == 9
    streamed = stats.compute_stats(tmp_path / "dataset", meta)["train_pixels"]
    pixels = dataset.train_images.astype(np.float64)
    assert streamed["mean"] == pytest.approx(pixels.mean(), rel=1e-12)
    assert streamed["std"] == pytest.approx(pixels.std(), rel=1e-12)
    assert (round(streamed["mean"], 2), round(streamed["std"], 2)) == (72.94, 90.02)
