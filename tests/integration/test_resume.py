"""A train run killed mid-way resumes at its last finished epoch and ends as if never killed.

Through the real `mlflow run`, on the CPU: one uninterrupted 4-epoch run, then the same
command killed (SIGKILL of its whole process group) as soon as epoch 2's checkpoint is in its
artifacts, then the same command again. The last one resumes at epoch 3 in a new run linked
to the killed one, its per-epoch metrics continuous from epoch 1, and its results equal the
uninterrupted run's.
"""

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from mlpipe_vision import artifacts
from tests.conftest import mlflow_run
from tests.integration.test_faults import Started, statuses
from tests.integration.test_faults import store as store  # noqa: F401 (a fixture)
from tests.integration.test_train import PER_EPOCH, gray_images, write_preprocessed

pytestmark = pytest.mark.integration

EPOCHS = 4
KILL_AFTER = 2
# dropout_rate > 0: the resumed run must also restore the dropout layers' random state.
PARAMETERS = {"epochs": EPOCHS, "conv_filters": 8, "dense_units": 32, "dropout_rate": 0.3}


@pytest.fixture(scope="module")
def data_uri(tmp_path_factory) -> str:
    images, labels = gray_images(3000, 10)
    folder = tmp_path_factory.mktemp("resume") / "preprocessed"
    return write_preprocessed(folder, images, labels, [str(d) for d in range(10)], "mnist")


def checkpoint_epoch(artifact_root: Path, other_than: str) -> int:
    """The highest epoch a run's checkpoint under `artifact_root` has reached so far."""
    epochs = [0]
    for path in artifact_root.glob(f"*/artifacts/{artifacts.CHECKPOINT}/*.json"):
        if path.parts[-4] != other_than:
            with contextlib.suppress(ValueError, KeyError, OSError):  # being written
                epochs.append(int(json.loads(path.read_text())["epoch"]))
    return max(epochs)


def history(client, run_id: str) -> dict[str, list[float]]:
    return {
        name: [
            m.value for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
        ]
        for name in PER_EPOCH
    }


def test_a_killed_train_resumes_at_its_next_epoch_and_ends_as_the_uninterrupted_run(
    store,  # noqa: F811
    data_uri,
    tmp_path,
):
    client = store["client"]
    whole = mlflow_run(store, "train", data=data_uri, **PARAMETERS)["run_id"]

    started = Started(store, "train", data=data_uri, **PARAMETERS)
    deadline = time.monotonic() + 600
    while checkpoint_epoch(tmp_path / "art", whole) < KILL_AFTER:
        assert started.process.poll() is None, "".join(started.lines)[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(started.process.pid, signal.SIGKILL)
    started.finish()
    killed = [rid for rid, status in statuses(store).items() if status == "RUNNING"]
    assert len(killed) == 1

    resumed = mlflow_run(store, "train", data=data_uri, **PARAMETERS)
    assert f"resuming train run {killed[0]} at epoch {KILL_AFTER + 1}" in resumed["output"]
    assert f"Epoch {KILL_AFTER + 1}/{EPOCHS}" in resumed["output"]
    assert "Epoch 1/" not in resumed["output"]
    run = client.get_run(resumed["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags[artifacts.RESUMED_FROM_TAG] == killed[0]
    assert run.data.tags[artifacts.RESUMED_AT_EPOCH_TAG] == str(KILL_AFTER)
    assert client.get_run(killed[0]).info.status == "KILLED"

    expected, got = history(client, whole), history(client, resumed["run_id"])
    for name in PER_EPOCH:
        assert len(got[name]) == EPOCHS, name
        assert got[name] == pytest.approx(expected[name], abs=1e-6), name
    for name in ("test_accuracy", "test_loss"):
        assert run.data.metrics[name] == pytest.approx(
            client.get_run(whole).data.metrics[name], abs=1e-6
        )


def test_a_killed_sweep_trial_resumes_from_its_checkpoint(store, data_uri, tmp_path):  # noqa: F811
    """A worker killed in a trial's epoch 3: the next worker requeues the trial, which resumes."""
    client = store["client"]
    sweep = {
        "data": data_uri,
        **{name: str(value) for name, value in PARAMETERS.items()},
        "dense_units": "32,16",  # a grid of two; the first trial is the one killed
        "study_name": "killed_trial",
        "study_storage": f"sqlite:///{tmp_path / 'optuna.db'}",
    }
    # A short grace period: the killed worker's trial counts as dead 2 s after its last beat.
    graced = dict(store, env={"MLPIPE_SWEEP_GRACE_SECONDS": "2"})
    started = Started(graced, "train_batch", **sweep)
    deadline = time.monotonic() + 600
    while checkpoint_epoch(tmp_path / "art", other_than="") < KILL_AFTER:
        assert started.process.poll() is None, "".join(started.lines)[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(started.process.pid, signal.SIGKILL)
    started.finish()
    time.sleep(3)

    again = mlflow_run(graced, "train_batch", **sweep)
    assert "1 requeued from dead workers" in again["output"], again["output"][-3000:]
    assert f"at epoch {KILL_AFTER + 1} from its checkpoint" in again["output"]
    resumed = [
        run
        for run in client.search_runs([store["experiment_id"]])
        if artifacts.RESUMED_FROM_TAG in run.data.tags
    ]
    assert len(resumed) == 1 and resumed[0].info.status == "FINISHED"
    killed = client.get_run(resumed[0].data.tags[artifacts.RESUMED_FROM_TAG])
    assert killed.info.status in {"KILLED", "FAILED"}
    assert len(history(client, resumed[0].info.run_id)["loss"]) == EPOCHS
