"""Faults as users meet them, through the real `mlflow run`: damaged shards, another stage's
artifact, impossible parameters and paths that do not exist. Each gets one line, no traceback,
before any work is done."""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pytest

from mlpipe_vision import datasets
from tests.conftest import REPO_DIR, mlflow_run, mlflow_run_command
from tests.integration.test_train import gray_images, write_preprocessed

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def preprocessed_dir(tmp_path_factory) -> Path:
    images, labels = gray_images(200, 10)
    folder = tmp_path_factory.mktemp("faults") / "preprocessed"
    write_preprocessed(folder, images, labels, [str(digit) for digit in range(10)], "mnist")
    return folder


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    images, labels = gray_images(120, 10)
    dataset = datasets.Dataset(
        train_images=images[30:],
        train_labels=labels[30:],
        test_images=images[:30],
        test_labels=labels[:30],
        class_names=[str(digit) for digit in range(10)],
        name="mnist",
        source="synthetic",
    )
    folder = tmp_path_factory.mktemp("faults") / "dataset"
    datasets.save_dataset(dataset, folder)
    return folder


def error_lines(result: dict) -> list[str]:
    """The stage's own error lines (MLflow's `=== Run ... failed ===` lines aside)."""
    return [line for line in result["output"].splitlines() if line.startswith("error: ")]


def assert_one_clear_line(result: dict, *expected: str) -> str:
    assert result["returncode"] != 0
    assert "Traceback" not in result["output"], result["output"][-3000:]
    lines = error_lines(result)
    assert len(lines) == 1, result["output"][-3000:]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:  # one byte changed, the size kept
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])


@pytest.mark.parametrize(
    ("split", "how"), [("train", "truncated"), ("validation", "empty"), ("test", "flipped")]
)
def test_a_damaged_shard_stops_train_before_epoch_1(
    tracking, preprocessed_dir, tmp_path, split, how
):
    copy = tmp_path / "preprocessed"
    shutil.copytree(preprocessed_dir, copy)
    shard = copy / f"{split}-00000.npz"
    damage(shard, how)
    result = mlflow_run(tracking, "train", check=False, data=f"file://{copy}", epochs=1)
    assert_one_clear_line(result, str(shard), "rerun preprocess")
    assert "Epoch 1" not in result["output"]
    assert tracking["client"].get_run(result["run_id"]).info.status == "FAILED"


def test_a_missing_folder_is_named(tracking, tmp_path):
    missing = tmp_path / "no" / "such" / "folder"
    result = mlflow_run(tracking, "train", check=False, data=f"file://{missing}")
    assert_one_clear_line(result, f"{missing} does not exist")


def test_each_stage_names_the_artifact_it_was_given_and_the_one_it_reads(
    tracking, dataset_dir, preprocessed_dir
):
    preprocessed = f"file://{preprocessed_dir}"
    dataset = f"file://{dataset_dir}"
    explore = mlflow_run(tracking, "explore_data", check=False, data=preprocessed)
    assert_one_clear_line(explore, "is a preprocess output", "explore_data reads")
    preprocess = mlflow_run(tracking, "preprocess", check=False, data=preprocessed)
    assert_one_clear_line(preprocess, "is a preprocess output", "preprocess reads")
    train = mlflow_run(tracking, "train", check=False, data=dataset)
    assert_one_clear_line(train, "is a get_data output (dataset/)", "train reads a preprocess")


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"image_size": 0}, "image_size must be a whole number from 1 to 4096"),
        ({"image_size": -5}, "got -5"),
        ({"test_fraction": 1.5}, "test_fraction must be between 0 and 1"),
        ({"channels": 2}, "channels must be 1, 3 or 0"),
    ],
)
def test_impossible_get_data_parameters_are_one_line(tracking, tmp_path, parameters, message):
    folder = tmp_path / "images"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
    result = mlflow_run(
        tracking, "get_data", check=False, dataset="image_dir", source=folder, **parameters
    )
    assert_one_clear_line(result, message)


def test_a_damaged_dataset_shard_stops_explore_data(tracking, dataset_dir, tmp_path):
    copy = tmp_path / "dataset"
    shutil.copytree(dataset_dir, copy)
    shard = copy / "train-00000.npz"
    damage(shard, "flipped")
    result = mlflow_run(tracking, "explore_data", check=False, data=f"file://{copy}")
    assert_one_clear_line(result, str(shard), "rerun get_data")
    assert np.load(dataset_dir / "train-00000.npz")["images"].dtype == np.uint8  # original kept


# ------------------------------------------------------------------------ killed commands


class Started:
    """An `mlflow run` in a process group of its own, its output collected as it comes."""

    def __init__(self, store: dict, entry_point: str, **parameters) -> None:
        command, env = mlflow_run_command(store, entry_point, **parameters)
        self.process = subprocess.Popen(
            command,
            env=env,
            cwd=REPO_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            # As from a terminal: a shell without job control starts background jobs with
            # SIGINT ignored, and the ignoring would be inherited (then Ctrl-C does nothing).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.process.poll() is None, "".join(self.lines)[-3000:]
            assert time.monotonic() < deadline, "".join(self.lines)[-3000:]
            time.sleep(0.2)

    def group(self) -> list[psutil.Process]:
        """Every process still running in the command's session (the command's tree)."""
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if os.getsid(process.pid) == self.process.pid and process.status() != "zombie":
                    found.append(process)
        return found

    def finish(self, timeout: float = 60) -> str:
        self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return "".join(self.lines)


@pytest.fixture
def store(tmp_path):
    """A store store of the test's own: what it finds RUNNING is its own doing."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("kills", artifact_location=str(tmp_path / "art"))
    return {"uri": uri, "experiment_id": experiment_id, "client": client}


def statuses(store: dict) -> dict[str, str]:
    runs = store["client"].search_runs([store["experiment_id"]])
    return {run.info.run_id: run.info.status for run in runs}


def test_a_killed_group_is_closed_by_the_next_command(store, preprocessed_dir):
    started = Started(
        store, "train", data=f"file://{preprocessed_dir}", epochs=200, early_stopping_patience=0
    )
    started.wait_for("Epoch 2/")
    os.killpg(started.process.pid, signal.SIGKILL)
    started.finish()
    killed = [rid for rid, status in statuses(store).items() if status == "RUNNING"]
    assert len(killed) == 1
    # Any later command on the store closes it; this one fails at once on its own.
    mlflow_run(store, "train", check=False, data="file:///no/such/folder")
    run = store["client"].get_run(killed[0])
    assert run.info.status == "KILLED"
    assert "its process" in run.data.tags["mlpipe.closed_because"]


def test_a_run_mlflow_refused_to_start_is_closed_by_the_next_command(store):
    refused = mlflow_run(store, "train", check=False, data="/no/such/folder")
    assert "Expected URI for parameter data" in refused["output"]  # MLflow's own check
    leftover = [rid for rid, status in statuses(store).items() if status == "RUNNING"]
    assert leftover
    mlflow_run(
        dict(store, env={"MLPIPE_FAILED_START_SECONDS": "0"}),
        "train",
        check=False,
        data="file:///no/such/folder",
    )
    for run_id in leftover:
        assert store["client"].get_run(run_id).info.status == "KILLED"


def test_killing_only_the_command_stops_its_stage(store, preprocessed_dir):
    started = Started(
        store, "train", data=f"file://{preprocessed_dir}", epochs=200, early_stopping_patience=0
    )
    started.wait_for("Epoch 2/")
    psutil.Process(started.process.pid).kill()  # the `mlflow run` alone, not its stage
    deadline = time.monotonic() + 30
    while started.group() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not started.group(), [process.cmdline() for process in started.group()]
    output = started.finish()
    assert "stopped (the command that started it" in output
    assert "RUNNING" not in statuses(store).values()
    assert "KILLED" in statuses(store).values()


def test_ctrl_c_is_one_line_and_the_run_is_killed(store, preprocessed_dir):
    started = Started(
        store, "train", data=f"file://{preprocessed_dir}", epochs=200, early_stopping_patience=0
    )
    started.wait_for("Epoch 2/")
    os.killpg(started.process.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    output = started.finish()
    ours = [line for line in output.splitlines() if line.startswith("stopped (")]
    assert ours == [
        line for line in ours if "Ctrl-C" in line and "The same command resumes" in line
    ]
    assert len(ours) == 1, output[-3000:]
    # The stage marks its run KILLED; `mlflow run`, interrupted too, then records FAILED
    # (MLflow 3.17's _maybe_set_run_terminated compares a status name with status numbers).
    assert set(statuses(store).values()) <= {"KILLED", "FAILED"}


def test_killing_only_main_stops_every_stage_and_registers_nothing(store, idx_mirror_dir):
    started = Started(
        store, "main", dataset="mnist", source=idx_mirror_dir, verify="false", epochs=200
    )
    started.wait_for("Epoch 2/")
    psutil.Process(started.process.pid).kill()
    deadline = time.monotonic() + 30
    while started.group() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not started.group(), [process.cmdline() for process in started.group()]
    started.finish()
    assert not store["client"].search_registered_models()
    assert "RUNNING" not in statuses(store).values(), statuses(store)
    runs = store["client"].search_runs([store["experiment_id"]])
    stopped = {run.data.tags.get("mlpipe.stage"): run.info.status for run in runs}
    # Each stage marks its run KILLED; main's in-process `mlflow run` of train, interrupted
    # too, may then record FAILED over it (MLflow 3.17's _maybe_set_run_terminated).
    assert {stopped["main"], stopped["train"]} <= {"KILLED", "FAILED"}, stopped


def test_ctrl_c_of_main_is_our_line_and_mlflows_two(store, idx_mirror_dir):
    started = Started(
        store, "main", dataset="mnist", source=idx_mirror_dir, verify="false", epochs=200
    )
    started.wait_for("Epoch 2/")
    before = len(started.lines)
    os.killpg(started.process.pid, signal.SIGINT)
    output = started.finish().splitlines()[before:]
    # Keras may finish the line of the epoch it was in.
    after = [line for line in output if line.strip() and not re.match(r"Epoch \d|\d+/\d+ ", line)]
    ours = [line for line in after if line.startswith("stopped (Ctrl-C): run ")]
    assert len(ours) == 1, after
    # The rest is the top `mlflow run`'s own: its "interrupted" log line and click's Aborted!.
    assert len(after) <= 3, after
    assert "Traceback" not in "\n".join(after)
