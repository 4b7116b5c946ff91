"""The pipeline against a team's tracking server, from machines that share nothing but its URL.

`team_stack.py` starts a real PostgreSQL and a real `mlflow server` with proxied artifacts
and basic-auth login. Each "machine" is a working folder of its own with only the server's
URL and credentials in its environment: no shared artifact folder, no shared sqlite file.
"""

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import psutil
import pytest

import team_stack
from mlpipe_vision import artifacts, sweep_study
from tests.conftest import FASHION_MNIST_DIR, REPO_DIR, free_port, mlflow_run, mlflow_run_command
from tests.integration.test_train import gray_images, write_preprocessed

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow(reason="starts PostgreSQL and an mlflow server, runs main twice"),
    pytest.mark.skipif(
        not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
        reason="needs Fashion-MNIST: apt-get install dataset-fashion-mnist",
    ),
]

STAGES = ("get_data", "explore_data", "preprocess", "train", "package")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A running team stack with fresh random passwords, stopped at the end."""
    if shutil.which("initdb") is None and not team_stack.POSTGRES_BIN_DIRS:
        pytest.fail("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
    secrets_env = {
        "PGPASSWORD": f"db-{secrets.token_hex(12)}",
        "MLFLOW_AUTH_ADMIN_PASSWORD": f"admin-{secrets.token_hex(12)}",
    }
    stack_dir = tmp_path_factory.mktemp("team")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in secrets_env.items():
            patch.setenv(name, value)
        state = team_stack.start(stack_dir, free_port(), free_port(), "mlpipe", workers=1)
    try:
        yield {**state, **secrets_env, "dir": stack_dir}
    finally:
        team_stack.stop(stack_dir)
        shutil.rmtree(Path(state["postgres_data"]).parent, ignore_errors=True)


def machine(stack: dict, folder: Path, experiment_id: str) -> dict:
    """What `mlflow_run` needs to run stages as a separate machine would."""
    folder.mkdir()
    return {
        "uri": stack["tracking_uri"],
        "experiment_id": experiment_id,
        "cwd": folder,
        "env": {
            "MLFLOW_TRACKING_USERNAME": stack["admin_username"],
            "MLFLOW_TRACKING_PASSWORD": stack["MLFLOW_AUTH_ADMIN_PASSWORD"],
            "PGPASSWORD": stack["PGPASSWORD"],
        },
    }


def add_user(stack: dict, username: str) -> str:
    """Create a login with team_stack.py add-user, as the admin would; return its password."""
    password = f"{username}-{secrets.token_hex(12)}"
    completed = subprocess.run(
        [sys.executable, "team_stack.py", "add-user", username, "--password-stdin"],
        cwd=REPO_DIR,
        input=password + "\n",
        env={
            **os.environ,
            "MLFLOW_TRACKING_URI": stack["tracking_uri"],
            "MLFLOW_TRACKING_USERNAME": stack["admin_username"],
            "MLFLOW_TRACKING_PASSWORD": stack["MLFLOW_AUTH_ADMIN_PASSWORD"],
        },
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert password not in completed.stdout + completed.stderr
    return password


@pytest.fixture(scope="module")
def two_mains(stack, tmp_path_factory):
    """`main` on 2 % of Fashion-MNIST from one folder as the admin, then from another folder as
    a user the admin added."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_USERNAME", stack["admin_username"])
        patch.setenv("MLFLOW_TRACKING_PASSWORD", stack["MLFLOW_AUTH_ADMIN_PASSWORD"])
        client = mlflow.MlflowClient(tracking_uri=stack["tracking_uri"])
        experiment_id = client.create_experiment("team")
    root = tmp_path_factory.mktemp("machines")
    parameters = {"source": FASHION_MNIST_DIR, "percentage": 2, "epochs": 1}
    first = mlflow_run(machine(stack, root / "a", experiment_id), "main", **parameters)
    alice_password = add_user(stack, "alice")
    alice = machine(stack, root / "b", experiment_id)
    alice["env"].update(MLFLOW_TRACKING_USERNAME="alice", MLFLOW_TRACKING_PASSWORD=alice_password)
    second = mlflow_run(alice, "main", **parameters)
    return {
        "first": first,
        "second": second,
        "experiment_id": experiment_id,
        "alice_password": alice_password,
    }


@pytest.fixture
def team_client(stack, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", stack["admin_username"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack["MLFLOW_AUTH_ADMIN_PASSWORD"])
    return mlflow.MlflowClient(tracking_uri=stack["tracking_uri"])


def test_main_runs_every_stage_with_artifacts_through_the_server(stack, two_mains, team_client):
    runs = team_client.search_runs([two_mains["experiment_id"]])
    stage_runs = {run.data.tags.get("mlpipe.stage"): run for run in runs}
    assert set(STAGES) <= set(stage_runs), sorted(filter(None, stage_runs))
    for stage in STAGES:
        run = stage_runs[stage]
        assert run.info.status == "FINISHED", stage
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    # The artifacts are in the server's store, not in either working folder.
    assert any((stack["dir"] / "artifacts").rglob("meta.json"))
    assert "models:/fashion_mnist_classifier@champion" in two_mains["first"]["output"]


def test_another_user_from_another_folder_reuses_every_stage(two_mains, team_client):
    output = two_mains["second"]["output"]
    for stage in STAGES:
        assert f"[{stage}] reusing finished run" in output, output[-3000:]
    mains = team_client.search_runs(
        [two_mains["experiment_id"]], "tags.mlpipe.stage = 'main'", order_by=["start_time"]
    )
    assert [run.data.tags["mlflow.user"] for run in mains] == ["admin", "alice"]


def test_no_password_is_stored_or_printed(stack, two_mains):
    passwords = [
        stack["PGPASSWORD"],
        stack["MLFLOW_AUTH_ADMIN_PASSWORD"],
        two_mains["alice_password"],
    ]
    printed = two_mains["first"]["output"] + two_mains["second"]["output"]
    files = [path for path in stack["dir"].rglob("*") if path.is_file()]
    import psycopg

    with psycopg.connect(
        host="127.0.0.1",
        port=int(stack["study_storage"].rsplit(":", 1)[1].split("/")[0]),
        user="mlpipe",
        dbname="mlflow",
        password=stack["PGPASSWORD"],
    ) as connection:
        rows = [
            str(row)
            for table in ("params", "tags", "latest_metrics", "runs", "experiment_tags")
            for row in connection.execute(f"SELECT * FROM {table}").fetchall()
        ]
    assert len(rows) > 50 and files
    for password in passwords:
        assert password not in printed
        assert not any(password in row for row in rows)
        assert not [path for path in files if password.encode() in path.read_bytes()]


def test_a_wrong_password_is_refused_with_a_message_that_names_the_login(stack, tmp_path):
    wrong = machine(stack, tmp_path / "c", "0")
    wrong["env"]["MLFLOW_TRACKING_PASSWORD"] = "not-the-password"
    result = mlflow_run(wrong, "get_data", check=False, source=FASHION_MNIST_DIR)
    assert result["returncode"] != 0
    assert "401" in result["output"] or "not authenticated" in result["output"].lower()


def start_worker(stack: dict, folder: Path, experiment_id: str, **parameters) -> subprocess.Popen:
    """`mlflow run -e train_batch` in the background, as a worker on its own machine."""
    tracking = machine(stack, folder, experiment_id)
    tracking["env"]["MLPIPE_SWEEP_GRACE_SECONDS"] = "6"
    command, env = mlflow_run_command(tracking, "train_batch", **parameters)
    log = (folder / "worker.log").open("w")
    return subprocess.Popen(
        command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def running_trial_of(storage: str, worker: subprocess.Popen) -> optuna.trial.FrozenTrial:
    """Wait for a trial of this worker's process tree in study "shared" to be training."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        pids = {worker.pid} | {child.pid for child in psutil.Process(worker.pid).children(True)}
        try:
            trials = optuna.load_study(study_name="shared", storage=storage).get_trials(
                states=(optuna.trial.TrialState.RUNNING,)
            )
        except KeyError:  # not created yet
            trials = []
        for trial in trials:
            worker_pid = int(
                trial.user_attrs.get(sweep_study.WORKER_ATTRIBUTE, ":0").rsplit(":", 1)[1]
            )
            if worker_pid in pids and sweep_study.RUN_ID_ATTRIBUTE in trial.user_attrs:
                return trial
        assert worker.poll() is None, "the worker ended before it ran a trial"
        time.sleep(1)
    raise AssertionError("no trial started in 10 minutes")


def test_one_grid_sweep_over_two_workers_survives_a_killed_worker(stack, team_client, tmp_path):
    images, labels = gray_images(240, 4)
    folder = write_preprocessed(tmp_path / "preprocessed", images, labels, list("abcd"), "mnist")
    experiment_id = team_client.create_experiment("sweep")
    data_run = team_client.create_run(experiment_id)
    team_client.log_artifacts(data_run.info.run_id, folder.removeprefix("file://"), "preprocessed")
    settings = {
        "data": f"runs:/{data_run.info.run_id}/preprocessed",
        "conv_filters": "4,6,8",
        "convolutions": "1",
        "epochs": "1",
        "study_name": "shared",
        "study_storage": stack["study_storage"],
    }
    first = start_worker(stack, tmp_path / "a", experiment_id, **settings)
    second = start_worker(stack, tmp_path / "b", experiment_id, **settings)
    os.environ["PGPASSWORD"] = stack["PGPASSWORD"]
    try:
        killed = running_trial_of(stack["study_storage"], first)
        os.killpg(first.pid, signal.SIGKILL)
        assert second.wait(timeout=900) == 0, (tmp_path / "b" / "worker.log").read_text()[-3000:]
        study = optuna.load_study(study_name="shared", storage=stack["study_storage"])
        trials = study.trials
    finally:
        del os.environ["PGPASSWORD"]
        for worker in (first, second):
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)

    completed = [trial for trial in trials if trial.state.name == "COMPLETE"]
    assert sorted(trial.params["conv_filters"] for trial in completed) == [4, 6, 8]
    assert [trial.number for trial in trials if trial.state.name == "FAIL"] == [killed.number]
    assert not [trial for trial in trials if trial.state.name in ("RUNNING", "WAITING")]

    parent_id = study.user_attrs[sweep_study.PARENT_RUN_ATTRIBUTE]
    trial_runs = {trial.user_attrs[sweep_study.RUN_ID_ATTRIBUTE]: trial for trial in trials}
    for run_id in trial_runs:
        run = team_client.get_run(run_id)
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["mlflow.user"] == stack["admin_username"]  # the login
    assert (
        team_client.get_run(killed.user_attrs[sweep_study.RUN_ID_ATTRIBUTE]).info.status == "KILLED"
    )
    for trial in completed:
        assert team_client.get_run(trial.user_attrs[sweep_study.RUN_ID_ATTRIBUTE]).info.status == (
            "FINISHED"
        )
    # The sweep run and the killed worker's own run (when it is not the sweep run) are
    # closed, not RUNNING forever.
    assert team_client.get_run(parent_id).info.status == "FINISHED"
    killed_worker_run = killed.user_attrs[sweep_study.WORKER_RUN_ATTRIBUTE]
    if killed_worker_run != parent_id:
        assert team_client.get_run(killed_worker_run).info.status == "KILLED"
    parent = team_client.get_run(parent_id)
    assert (
        parent.data.tags[artifacts.BEST_RUN_TAG]
        == (max(completed, key=lambda trial: trial.value).user_attrs[sweep_study.RUN_ID_ATTRIBUTE])
    )

    package = mlflow_run(
        machine(stack, tmp_path / "c", experiment_id), "package", model=f"runs:/{parent_id}"
    )
    assert package["returncode"] == 0
