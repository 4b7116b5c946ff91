"""Which RUNNING runs are dead: a process gone here, a heartbeat stopped elsewhere, a run
MLflow never started; and that a live one is never touched."""

import subprocess
import sys
import time

import mlflow
import psutil
import pytest

from mlpipe_vision import artifacts, liveness


@pytest.fixture
def client(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return mlflow.MlflowClient(tracking_uri=uri)


def running_run(client, tags: dict, params: dict | None = None) -> str:
    run = client.create_run("0", tags=tags)
    for name, value in (params or {}).items():
        client.log_param(run.info.run_id, name, value)
    return run.info.run_id


def ended_process() -> dict[str, str]:
    """The liveness tags of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    watched = psutil.Process(process.pid)
    tags = liveness.process_tags(watched)
    process.wait()
    return tags


def test_a_run_whose_process_here_is_gone_is_closed_and_a_live_one_kept(client):
    dead = running_run(client, ended_process(), {"epochs": "1"})
    alive = running_run(client, liveness.process_tags(psutil.Process()), {"epochs": "1"})
    assert liveness.close_dead_runs("0", alive=set()) == [dead]
    closed = client.get_run(dead)
    assert closed.info.status == "KILLED"
    assert "on this machine is gone" in closed.data.tags[artifacts.CLOSED_BECAUSE_TAG]
    assert client.get_run(alive).info.status == "RUNNING"


def test_another_machines_run_is_judged_by_its_heartbeat(client):
    tags = {**liveness.process_tags(psutil.Process()), artifacts.HOST_TAG: "elsewhere/1"}
    fresh = running_run(client, tags, {"epochs": "1"})
    old = time.time() - liveness.STALE_SECONDS - 5
    stale = running_run(client, {**tags, artifacts.HEARTBEAT_TAG: f"{old:.0f}"}, {"epochs": "1"})
    assert liveness.close_dead_runs("0", alive=set()) == [stale]
    assert client.get_run(fresh).info.status == "RUNNING"


def test_a_run_mlflow_never_started_is_closed_after_a_while(client, monkeypatch):
    refused = running_run(client, {})  # no parameters: `mlflow run` refused them
    starting = running_run(client, {}, {"epochs": "1"})  # building its environment
    assert liveness.close_dead_runs("0", alive=set()) == []  # both younger than the grace
    monkeypatch.setattr(liveness, "FAILED_START_SECONDS", -1)
    assert liveness.close_dead_runs("0", alive=set()) == [refused]
    monkeypatch.setattr(liveness, "UNSTARTED_SECONDS", -1)
    assert liveness.close_dead_runs("0", alive=set()) == [starting]


def test_runs_known_alive_are_never_closed(client):
    dead = running_run(client, ended_process(), {"epochs": "1"})
    assert liveness.close_dead_runs("0", alive={dead}) == []
    assert client.get_run(dead).info.status == "RUNNING"


def test_a_pid_reused_by_another_process_is_not_the_run_s(client):
    tags = liveness.process_tags(psutil.Process())
    tags[artifacts.PROCESS_STARTED_TAG] = f"{psutil.Process().create_time() - 100:.2f}"
    reused = running_run(client, tags, {"epochs": "1"})
    assert liveness.close_dead_runs("0", alive=set()) == [reused]
