"""Training under MirroredStrategy over two logical CPUs, against single-device runs.

Three train.py runs on one tiny dataset, shared by the tests: seeds 1 and 2 on one device
(their difference is the seed-to-seed spread), and seed 1 on MLPIPE_LOGICAL_CPUS=2.
"""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from mlpipe_vision import artifacts, shards, training
from mlpipe_vision.images import normalize
from tests.integration.test_train import gray_images, train_script, write_preprocessed

pytestmark = pytest.mark.integration

# Small enough for seconds per run, large enough to learn the four bars in two epochs (test
# accuracy 1.0 on one device and on two, measured with seeds 1 and 2).
ARGUMENTS = (
    *("--epochs", "2", "--batch_size", "16", "--learning_rate", "0.01", "--convolutions", "2"),
    *("--conv_filters", "8", "--dense_units", "16", "--dropout_rate", "0.2"),
)
CLASSES = 4
# A system metric point every second, so that a run of a few seconds has some.
QUICK_SYSTEM_METRICS = {
    "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1",
    "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING": "1",
}
ACCURACIES = ("test_accuracy", "val_accuracy")
LOSSES = ("test_loss", "val_loss", "loss")


@pytest.fixture(scope="module")
def runs(tracking, tmp_path_factory) -> dict:
    """The preprocessed folder and the runs: "seed 1", "seed 2" and "mirrored" (seed 1)."""
    images, labels = gray_images(400, CLASSES)
    folder = tmp_path_factory.mktemp("devices") / "preprocessed"
    data = write_preprocessed(
        folder, images, labels, [str(digit) for digit in range(CLASSES)], "mnist"
    )
    client = tracking["client"]
    found = {"folder": folder}
    for name, seed, cpus in (("seed 1", 1, "1"), ("seed 2", 2, "1"), ("mirrored", 1, "2")):
        variables = {**QUICK_SYSTEM_METRICS, "MLPIPE_LOGICAL_CPUS": cpus}
        run_id, output = train_script(tracking, data, seed, ARGUMENTS, variables)
        found[name] = {"run": client.get_run(run_id), "output": output}
    return found


def test_mirrored_metrics_are_within_the_seed_to_seed_spread(runs):
    single, other, mirrored = (
        runs[name]["run"].data.metrics for name in ("seed 1", "seed 2", "mirrored")
    )
    for name in ACCURACIES:
        # The mirrored run has seed 1's weights and data order; what differs is the order of
        # the sums, each replica's dropout draws and batch normalization over each replica's
        # half batch, changes of the size of another seed. So its distance to seed 1 may be
        # the seed-to-seed distance, or one test image (0.01) when two seeds agree exactly.
        tolerance = max(abs(single[name] - other[name]), 0.01)
        assert abs(mirrored[name] - single[name]) <= tolerance, (name, single, other, mirrored)
    for name in LOSSES:
        # Losses moved by up to 4x the seed-to-seed distance here (0.04 to 0.34 against
        # 0.005 to 0.08: the half-batch normalization trains slower), too noisy for a
        # distance; they must be real numbers below a network that learned nothing's.
        assert np.isfinite(mirrored[name]), name
        assert mirrored[name] < np.log(CLASSES), (name, mirrored)


def test_the_runs_record_their_devices_and_system_metrics(runs, tracking):
    mirrored, single = runs["mirrored"]["run"], runs["seed 1"]["run"]
    assert "on 2 logical cpus" in runs["mirrored"]["output"]
    tags = mirrored.data.tags
    assert tags[artifacts.STRATEGY_TAG] == "MirroredStrategy"
    assert tags[artifacts.REPLICAS_TAG] == "2"
    assert (tags[artifacts.DEVICE_KIND_TAG], tags[artifacts.DEVICE_COUNT_TAG]) == ("cpu", "2")
    assert tags[artifacts.DEVICE_TAG] == "2 logical cpus"
    assert single.data.tags[artifacts.REPLICAS_TAG] == "1"
    assert single.data.tags[artifacts.DEVICE_TAG] == "cpu"
    for run in (mirrored, single):
        assert run.data.tags[artifacts.GPU_NAMES_TAG] == "none"
        assert run.data.tags[artifacts.DTYPE_POLICY_TAG] == "float32"
        history = tracking["client"].get_metric_history(
            run.info.run_id, "system/cpu_utilization_percentage"
        )
        assert history, "no system metrics"
        assert "system/system_memory_usage_megabytes" in run.data.metrics
    # The global batch of 16 makes as many steps on 2 replicas as on one device.
    assert mirrored.data.params["steps_per_epoch"] == single.data.params["steps_per_epoch"]


def test_the_mirrored_model_predicts_on_one_device_as_it_was_evaluated(runs, use_tracking):
    run = runs["mirrored"]["run"]
    folder = runs["folder"]
    meta = json.loads(Path(folder, artifacts.META_FILE).read_text())
    labels = shards.read_labels(folder, meta, "test")
    images = normalize(
        shards.read_images(folder, meta, "test", np.arange(len(labels))), meta["normalization"]
    ).astype(np.float32)
    model_uri = artifacts.artifact_uri(run.info.run_id, artifacts.MODEL)
    keras_model = mlflow.keras.load_model(model_uri)
    probabilities = keras_model.predict_on_batch(images)
    # Outside any strategy, the logged model scores the test split as the run did under one.
    metrics = training.metrics_of_probabilities(labels, np.asarray(probabilities))
    assert metrics["accuracy"] == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-6)
    assert metrics["loss"] == pytest.approx(run.data.metrics["test_loss"], rel=1e-4)
    # And MLflow's generic loader of the logged model answers the same.
    served = mlflow.pyfunc.load_model(model_uri).predict(images)
    np.testing.assert_allclose(np.asarray(served), probabilities, rtol=1e-5, atol=1e-6)
