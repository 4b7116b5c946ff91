"""The train stage through the real `mlflow run`, on tiny preprocessed datasets."""

import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from mlpipe_vision import datasets, preprocessing, stats
from tests.conftest import REPO_DIR, mlflow_run, synthetic_images

pytestmark = pytest.mark.integration

PER_EPOCH = ("accuracy", "loss", "val_accuracy", "val_loss")
TWO_CLASS = ("auc", "precision", "recall")


def write_preprocessed(
    folder: Path, images: np.ndarray, labels: np.ndarray, class_names: list[str], name: str
) -> str:
    """Split, normalize and save like the preprocess stage; return the folder's file:// URI."""
    test_count = len(labels) // 4
    dataset = datasets.Dataset(
        train_images=images[test_count:],
        train_labels=labels[test_count:],
        test_images=images[:test_count],
        test_labels=labels[:test_count],
        class_names=class_names,
        name=name,
        source="synthetic",
    )
    normalization = preprocessing.normalization_from_stats(
        {"train_pixels": stats.pixel_stats(dataset.train_images)}, images.shape[-1]
    )
    split_arrays = preprocessing.make_splits(dataset, 0.2, 100.0, seed=0)
    preprocessing.save_preprocessed(split_arrays, normalization, dataset, folder)
    return f"file://{folder}"


def gray_images(count: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    labels = np.resize(np.arange(classes), count)
    np.random.default_rng(seed).shuffle(labels)
    return synthetic_images(labels, seed=seed)[..., np.newaxis], labels


def color_images(count: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes: a red bar at the top or a blue bar at the bottom, on noise."""
    rng = np.random.default_rng(seed)
    labels = np.resize(np.arange(2), count)
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(count, size, size, 3)).astype(np.uint8)
    images[labels == 0, 1:4, :, 0] = 230
    images[labels == 1, size - 4 : size - 1, :, 2] = 230
    return images, labels


@pytest.fixture(scope="module")
def gray_data(tmp_path_factory) -> str:
    images, labels = gray_images(400, 10)
    folder = tmp_path_factory.mktemp("gray") / "preprocessed"
    return write_preprocessed(folder, images, labels, [str(digit) for digit in range(10)], "mnist")


@pytest.fixture(scope="module")
def color_data(tmp_path_factory) -> str:
    images, labels = color_images(160, 24)
    folder = tmp_path_factory.mktemp("color") / "preprocessed"
    return write_preprocessed(folder, images, labels, ["red", "blue"], "image_dir")


def artifact_paths(client, run_id: str, path: str = "") -> set[str]:
    paths = set()
    for item in client.list_artifacts(run_id, path):
        paths |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return paths


def test_train_one_epoch_logs_metrics_plots_and_model(tracking, use_tracking, gray_data):
    result = mlflow_run(tracking, "train", data=gray_data, epochs=1)
    run_id = result["run_id"]
    client = tracking["client"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlpipe.stage"] == "train"
    assert run.data.tags["mlpipe.input_uri"] == gray_data
    assert run.data.params["network"] == "cnn_3x48"
    assert run.data.params["epochs"] == "1"
    for name in PER_EPOCH:
        assert [point.step for point in client.get_metric_history(run_id, name)] == [0]
    assert {"test_accuracy", "test_loss", "best_epoch"} <= set(run.data.metrics)
    assert not set(TWO_CLASS) & set(run.data.metrics)
    assert {
        "model_summary.txt",
        "confusion_matrix.json",
        "plots/learning_curves.png",
        "plots/confusion_matrix.png",
        "plots/misclassified.png",
    } <= artifact_paths(client, run_id)

    model_uri = f"runs:/{run_id}/model"
    info = mlflow.models.get_model_info(model_uri)
    assert info.signature.inputs.inputs[0].shape == (-1, 28, 28, 1)
    assert info.signature.outputs.inputs[0].shape == (-1, 10)
    assert info.saved_input_example_info["type"] == "ndarray"
    model = mlflow.keras.load_model(model_uri)
    example = np.asarray(mlflow.models.Model.load(model_uri).load_input_example(), np.float32)
    probabilities = model.predict_on_batch(example)
    assert probabilities.shape == (len(example), 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)

    assert f"train run ID: {run_id}" in result["output"]
    assert (
        f"next: mlflow run . -e package -P model={model_uri} --env-manager local"
        in (result["output"])
    )


def test_vgg16_transfer_with_fine_tuning_on_small_rgb_images(tracking, color_data):
    result = mlflow_run(
        tracking,
        "train",
        data=color_data,
        convolutions=0,
        weights="none",
        epochs=1,
        fine_tune_epochs=1,
        dense_units=16,
        batch_size=32,
        early_stopping_patience=0,
    )
    client = tracking["client"]
    run = client.get_run(result["run_id"])
    assert run.data.params["network"] == "vgg16_transfer"
    assert run.data.tags["mlpipe.positive_class"] == "blue"
    for name in (*PER_EPOCH, *TWO_CLASS, *(f"val_{name}" for name in TWO_CLASS)):
        history = client.get_metric_history(result["run_id"], name)
        assert [point.step for point in history] == [0, 1], name
    assert {f"test_{name}" for name in ("accuracy", "loss", *TWO_CLASS)} <= set(run.data.metrics)
    assert "fine-tuning VGG16's top block (4 layers) for 1 epochs" in result["output"]


def test_a_uri_without_preprocessed_is_refused(tracking, tmp_path):
    (tmp_path / "meta.json").write_text("{}")
    result = mlflow_run(tracking, "train", check=False, data=f"file://{tmp_path}")
    assert result["returncode"] != 0
    assert "meta.json lists no 'train' shards" in result["output"]
    assert (
        "expected runs:/<preprocess_run_id>/preprocessed from a preprocess run"
        in (result["output"])
    )


def test_too_many_blocks_are_refused_before_training(tracking, gray_data):
    result = mlflow_run(tracking, "train", check=False, data=gray_data, convolutions=5)
    assert result["returncode"] != 0
    assert "error: convolutions=5 needs images of at least 32x32" in result["output"]
    assert "use at most 4 block(s)" in result["output"]
    assert "Epoch 1" not in result["output"]


def train_script(
    tracking: dict,
    data: str,
    seed: int,
    arguments: tuple[str, ...] = ("--epochs", "2"),
    variables: dict[str, str] | None = None,
) -> tuple[str, str]:
    """Run train.py as a user would, with nothing set but the tracking store (and `variables`)."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("TF_", "MLFLOW_", "MLPIPE_LOGICAL"))
    }
    environment.update(
        MLFLOW_TRACKING_URI=tracking["uri"],
        MLFLOW_EXPERIMENT_ID=tracking["experiment_id"],
        **(variables or {}),
    )
    completed = subprocess.run(
        [sys.executable, "train.py", "--data", data, "--seed", str(seed), *arguments],
        cwd=REPO_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    run_id = re.search(r"train run ID: ([0-9a-f]+)", completed.stdout).group(1)
    return run_id, completed.stdout + completed.stderr


def test_same_seed_same_metrics_on_a_quiet_console(tracking, gray_data):
    client = tracking["client"]
    first_id, first_output = train_script(tracking, gray_data, seed=7)
    second_id, _ = train_script(tracking, gray_data, seed=7)
    first, second = (client.get_run(run_id).data.metrics for run_id in (first_id, second_id))
    first.pop("epoch_seconds")
    second.pop("epoch_seconds")
    assert first == second
    noise = [
        line
        for line in first_output.splitlines()
        if re.match(r"[IWE]\d{4} |WARNING: All log messages", line) or "cuda" in line.lower()
    ]
    assert noise == []
