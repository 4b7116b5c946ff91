"""`main` end to end through `mlflow run`: the run tree, reuse, force, failure and resume."""

import re

import pytest

from tests.conftest import mlflow_run

pytestmark = pytest.mark.integration

STAGES = ["get_data", "explore_data", "preprocess", "train", "package"]


def children(client, experiment_id: str, parent_run_id: str) -> dict[str, object]:
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )
    return {run.data.tags["mlflow.project.entryPoint"]: run for run in runs}


def stage_run_ids(client, main_run_id: str) -> dict[str, str]:
    tags = client.get_run(main_run_id).data.tags
    return {stage: tags[f"mlpipe.run.{stage}"] for stage in STAGES}


@pytest.fixture(scope="module")
def first_main(tracking, idx_mirror_dir):
    # force: other tests in this store may already have run these data stages.
    return mlflow_run(
        tracking,
        "main",
        force="true",
        dataset="mnist",
        source=idx_mirror_dir,
        verify="false",
        epochs=1,
        registered_model_name="main_digits",
    )


def test_main_runs_every_stage_under_it(tracking, first_main):
    client = tracking["client"]
    tree = children(client, tracking["experiment_id"], first_main["run_id"])
    assert set(tree) == set(STAGES)
    assert all(run.info.status == "FINISHED" for run in tree.values())
    ids = stage_run_ids(client, first_main["run_id"])
    train_input = client.get_run(ids["train"]).data.tags["mlpipe.input_uri"]
    assert train_input == f"runs:/{ids['preprocess']}/preprocessed"
    assert client.get_model_version_by_alias("main_digits", "champion")
    output = first_main["output"]
    assert "mlflow models serve -m models:/main_digits@champion -p 5000" in output
    assert "curl -s -X POST" in output


def test_main_names_its_runs_and_prints_what_matters(tracking, first_main):
    client = tracking["client"]
    tree = children(client, tracking["experiment_id"], first_main["run_id"])
    names = {stage: run.info.run_name for stage, run in tree.items()}
    network = tree["train"].data.params["network"]
    assert names == {
        "get_data": "get_data mnist",
        "explore_data": "explore_data mnist",
        "preprocess": "preprocess mnist",
        "train": f"train mnist: {network}, 1 epoch",
        "package": "package main_digits",
    }
    assert client.get_run(first_main["run_id"]).info.run_name == "main mnist"
    output = first_main["output"]
    for stage in STAGES:
        assert f"[{stage}] running with" in output
    # main runs the next stage itself; the stages' own INFO lines and bars stay quiet.
    assert "next: mlflow run" not in output
    assert "Downloading artifacts" not in output
    assert "Running command 'python download.py" not in output
    assert "Add type hints" not in output
    assert "interpreted in multiple ways" not in output
    assert "Could not find cuda" not in output  # TensorFlow's start-up lines
    assert re.search(r"test accuracy 0\.\d+", output), output[-5000:]


def test_verbose_shows_what_the_quiet_console_hides(tracking, first_main):
    ids = stage_run_ids(tracking["client"], first_main["run_id"])
    data = f"runs:/{ids['preprocess']}/preprocessed"
    # Not main's train parameters: a later main must not reuse these runs.
    train = {"data": data, "epochs": 1, "conv_filters": 8}
    quiet = mlflow_run(tracking, "train", **train)
    verbose = mlflow_run(dict(tracking, env={"MLPIPE_VERBOSE": "1"}), "train", **train)
    # Run alone, a stage says what to run next; the network's table is in model_summary.txt.
    assert "next: mlflow run . -e package" in quiet["output"]
    assert re.search(r"network \w+: [\d,]+ parameters", quiet["output"])
    assert "Layer (type)" not in quiet["output"]
    assert "Layer (type)" in verbose["output"]


def test_second_main_reuses_every_stage_and_force_reruns(tracking, idx_mirror_dir, first_main):
    parameters = {
        "dataset": "mnist",
        "source": idx_mirror_dir,
        "verify": "false",
        "epochs": 1,
        "registered_model_name": "main_digits",
    }
    second = mlflow_run(tracking, "main", **parameters)
    for stage in STAGES:
        assert f"[{stage}] reusing finished run" in second["output"]
    client = tracking["client"]
    assert stage_run_ids(client, second["run_id"]) == stage_run_ids(client, first_main["run_id"])
    champion = client.get_model_version_by_alias("main_digits", "champion").version
    forced = mlflow_run(tracking, "main", force="true", promote="never", **parameters)
    rerun_ids = stage_run_ids(client, forced["run_id"])
    first_ids = stage_run_ids(client, first_main["run_id"])
    assert all(rerun_ids[stage] != first_ids[stage] for stage in STAGES)
    # promote=never: the new version is registered, the alias stays, and main says so.
    assert "the alias did not move: promote=never" in forced["output"]
    assert client.get_model_version_by_alias("main_digits", "champion").version == champion
    assert "serve:  mlflow models serve -m models:/main_digits/" in forced["output"]


def test_a_failing_stage_stops_the_chain_and_a_rerun_resumes(tracking, idx_mirror_dir, first_main):
    client = tracking["client"]
    common = {"dataset": "mnist", "source": idx_mirror_dir, "verify": "false", "epochs": 1}
    # 1% of 30 images per class leaves one per class: too few to split off validation.
    failed = mlflow_run(tracking, "main", check=False, percentage=1, **common)
    assert failed["returncode"] != 0
    assert "stage preprocess failed: class 0 has 1 example(s)" in failed["output"]
    tree = children(client, tracking["experiment_id"], failed["run_id"])
    assert tree["preprocess"].info.status == "FAILED"
    assert "train" not in tree
    assert client.get_run(failed["run_id"]).info.status == "FAILED"

    resumed = mlflow_run(tracking, "main", percentage=50, **common)
    assert "[get_data] reusing finished run" in resumed["output"]
    assert "[explore_data] reusing finished run" in resumed["output"]
    assert "[preprocess] running" in resumed["output"]
    assert "[train] running" in resumed["output"]


def test_main_with_a_sweep_packages_the_best_trial(tracking, idx_mirror_dir, first_main):
    study_storage = f"sqlite:///{tracking['root'] / 'optuna.db'}"
    result = mlflow_run(
        tracking,
        "main",
        dataset="mnist",
        source=idx_mirror_dir,
        verify="false",
        epochs=3,  # the sweep's own epochs=1 wins
        sweep=f"conv_filters=4,8;epochs=1;study_storage={study_storage}",
        registered_model_name="swept_digits",
    )
    assert "[get_data] reusing finished run" in result["output"]
    assert "[train_batch] running" in result["output"]
    client = tracking["client"]
    version = client.get_model_version_by_alias("swept_digits", "champion")
    package_run = client.get_run(version.run_id)
    sweep_run_id = client.get_run(result["run_id"]).data.tags["mlpipe.run.train_batch"]
    best_run_id = client.get_run(sweep_run_id).data.tags["mlpipe.best_run_id"]
    assert package_run.data.tags["mlpipe.train_run_id"] == best_run_id
    assert client.get_run(best_run_id).data.params["epochs"] == "1"
