"""The train_batch stage through the real `mlflow run`: grid, Optuna, failures and resuming."""

import time

import optuna
import pytest

from mlpipe_vision import artifacts, search_space, sweep_study
from tests.conftest import mlflow_run
from tests.integration.test_train import gray_images, write_preprocessed
from tests.unit.test_sweeps import trial_of_a_dead_worker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sweep_data(tmp_path_factory) -> str:
    images, labels = gray_images(240, 4)
    folder = tmp_path_factory.mktemp("sweep") / "preprocessed"
    return write_preprocessed(folder, images, labels, ["a", "b", "c", "d"], "mnist")


def child_runs(tracking: dict, parent_run_id: str) -> list:
    return tracking["client"].search_runs(
        [tracking["experiment_id"]],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        order_by=["tags.`mlpipe.trial_number` ASC"],
    )


def test_grid_sweep_runs_each_point_as_a_child_and_survives_a_failed_trial(
    tracking, sweep_data, tmp_path
):
    result = mlflow_run(
        tracking,
        "train_batch",
        data=sweep_data,
        conv_filters="4,0,8",
        epochs=1,
        convolutions=2,
        workers=2,
        study_storage=f"sqlite:///{tmp_path / 'grid.db'}",
    )
    client = tracking["client"]
    parent = client.get_run(result["run_id"])
    children = child_runs(tracking, result["run_id"])
    assert [child.data.params["conv_filters"] for child in children] == ["4", "0", "8"]
    assert [child.info.status for child in children] == ["FINISHED", "FAILED", "FINISHED"]
    for child in children:
        assert child.data.tags["mlpipe.stage"] == "train"
        assert child.data.tags["mlpipe.input_uri"] == sweep_data
        assert "train.log" in {item.path for item in client.list_artifacts(child.info.run_id)}
    finished = [child for child in children if child.info.status == "FINISHED"]
    for child in finished:
        assert child.data.params["convolutions"] == "2"
        assert {"val_accuracy", "test_accuracy"} <= set(child.data.metrics)
    best = max(finished, key=lambda child: child.data.metrics["val_accuracy"])

    assert parent.data.tags["mlpipe.stage"] == "train_batch"
    assert parent.data.tags[artifacts.BEST_RUN_TAG] == best.info.run_id
    assert parent.data.tags[artifacts.BEST_MODEL_TAG] == f"runs:/{best.info.run_id}/model"
    assert parent.data.tags["mlpipe.best.conv_filters"] == best.data.params["conv_filters"]
    assert parent.data.metrics["best_val_accuracy"] == best.data.metrics["val_accuracy"]
    plots = {item.path for item in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/objective_by_parameter.png"}
    assert "trial 1 (conv_filters=0) FAILED" in result["output"]
    assert "error: conv_filters must be at least 1, got 0" in result["output"]
    assert (
        f"next: mlflow run . -e package -P model=runs:/{best.info.run_id}/model --env-manager local"
        in result["output"]
    )


def test_a_killed_sweep_started_again_reruns_only_its_interrupted_trial(
    tracking, sweep_data, tmp_path
):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    settings = {
        "data": sweep_data,
        "learning_rate": "1e-3:1e-1:log",
        "convolutions": "1",
        "epochs": "1",
        "study_name": "resume",
        "study_storage": storage,
    }
    first = mlflow_run(tracking, "train_batch", n_trials=2, **settings)
    first_children = child_runs(tracking, first["run_id"])
    assert len(first_children) == 2
    assert tracking["client"].get_run(first["run_id"]).data.tags["mlpipe.sampler"] == "tpe"

    # A worker on this machine killed during its trial (its heartbeats stopped, the trial is
    # still RUNNING in the study, its run RUNNING in MLflow). Optuna notices it once the
    # grace period (here 2 s) is over.
    space = search_space.parse_search_space({"learning_rate": settings["learning_rate"]})
    killed_run = tracking["client"].create_run(
        tracking["experiment_id"], tags={"mlflow.parentRunId": first["run_id"]}
    )
    interrupted = trial_of_a_dead_worker(
        storage,
        "resume",
        space.distributions(),
        **{sweep_study.RUN_ID_ATTRIBUTE: killed_run.info.run_id},
    )
    time.sleep(3)

    grace = {**tracking, "env": {"MLPIPE_SWEEP_GRACE_SECONDS": "2"}}
    second = mlflow_run(grace, "train_batch", n_trials=4, **settings)
    assert "2 trial(s) finished before, 1 requeued from dead workers" in second["output"]
    assert f"sweep run: run {first['run_id']}" in second["output"]
    assert tracking["client"].get_run(killed_run.info.run_id).info.status == "KILLED"
    children = [
        child
        for child in child_runs(tracking, first["run_id"])
        if "mlpipe.trial_number" in child.data.tags
    ]
    assert len(children) == 4  # 2 + the rerun + 1 more: one sweep, one parent
    rerun = [float(child.data.params["learning_rate"]) for child in children[2:]]
    assert interrupted.params["learning_rate"] == pytest.approx(rerun[0])
    states = [
        trial.state.name for trial in optuna.load_study(study_name="resume", storage=storage).trials
    ]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    worker_run = tracking["client"].get_run(second["run_id"])
    assert worker_run.data.tags[artifacts.SWEEP_WORKER_TAG] == first["run_id"]
    best_run_id = tracking["client"].get_run(first["run_id"]).data.tags[artifacts.BEST_RUN_TAG]
    assert best_run_id in {child.info.run_id for child in children}
