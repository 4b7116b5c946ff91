"""A few thousand real images in class folders, as users bring them, end to end.

3,000 Fashion-MNIST training images (300 per class) are written as PNG files in one folder
per class; `get_data -P dataset=image_dir` holds out 20 % for testing, preprocess 10 % of
the rest for validation, and the train stage trains on about 2,160 images. The Keras
examples' CNN is trained on the very same arrays in the test, as the baseline.
"""

import gzip
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest

from bench.keras_example import fit_keras_example
from mlpipe_vision import idx_files
from tests.conftest import FASHION_MNIST_DIR, mlflow_run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow(reason="trains the default network and a baseline for minutes"),
    pytest.mark.skipif(
        not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
        reason="needs Fashion-MNIST: apt-get install dataset-fashion-mnist",
    ),
]

IMAGES_PER_CLASS = 300
EPOCHS = 5
# "Close to the baseline": within the spread of one run on a 600-image test set (one
# standard error of an accuracy near 0.8 is about 0.016).
TOLERANCE = 0.03


def read_idx(path: Path) -> np.ndarray:
    return idx_files.parse_idx(gzip.decompress(path.read_bytes()), path.name)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    images = read_idx(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz")
    folder = tmp_path_factory.mktemp("fashion_folders")
    for label, class_name in enumerate(idx_files.IDX_DATASETS["fashion_mnist"].class_names):
        class_dir = folder / class_name.replace("/", "-")
        class_dir.mkdir()
        for index in np.flatnonzero(labels == label)[:IMAGES_PER_CLASS]:
            cv2.imwrite(str(class_dir / f"{index}.png"), images[index])
    return folder


@pytest.fixture(scope="module")
def small_run(tracking, image_folder) -> dict:
    get_data = mlflow_run(
        tracking, "get_data", dataset="image_dir", source=image_folder, image_size=28, channels=1
    )
    preprocess = mlflow_run(tracking, "preprocess", data=f"runs:/{get_data['run_id']}/dataset")
    preprocessed_uri = f"runs:/{preprocess['run_id']}/preprocessed"
    train = mlflow_run(tracking, "train", data=preprocessed_uri, epochs=EPOCHS)
    return {"preprocessed_uri": preprocessed_uri, "train": train}


def baseline_test_accuracy(preprocessed_uri: str) -> float:
    """The Keras example CNN, trained on the stage's own arrays for the same epochs."""
    preprocessed_dir = Path(mlflow.artifacts.download_artifacts(preprocessed_uri))
    return fit_keras_example(preprocessed_dir, EPOCHS)["test_accuracy"]


def test_a_few_thousand_images_train_as_well_as_the_keras_example(use_tracking, small_run):
    client = use_tracking["client"]
    metrics = client.get_run(small_run["train"]["run_id"]).data.metrics
    baseline = baseline_test_accuracy(small_run["preprocessed_uri"])
    assert metrics["test_accuracy"] >= baseline - TOLERANCE, (metrics["test_accuracy"], baseline)


def test_validation_accuracy_tracks_training_accuracy_on_small_data(use_tracking, small_run):
    client = use_tracking["client"]
    run_id = small_run["train"]["run_id"]
    train = client.get_metric_history(run_id, "accuracy")[-1].value
    validation = client.get_metric_history(run_id, "val_accuracy")[-1].value
    assert abs(train - validation) <= 0.05, (train, validation)


def test_the_summary_says_how_many_steps_the_model_saw(use_tracking, small_run):
    run = use_tracking["client"].get_run(small_run["train"]["run_id"])
    steps_per_epoch = int(run.data.params["steps_per_epoch"])
    assert steps_per_epoch == int(np.ceil(int(run.data.params["train_examples"]) / 64))
    assert int(run.data.tags["mlpipe.training_steps"]) <= EPOCHS * steps_per_epoch
    assert "steps, batch 64" in small_run["train"]["output"]
    assert "fewer than 300 per class" in run.data.tags["mlpipe.warning"]
    assert "warning: only" in small_run["train"]["output"]
