"""Resolving artifact URIs between stages; naming stage runs; the next command."""

import mlflow
import pytest

from mlpipe_vision import artifacts, lineage


def test_an_artifact_in_a_local_store_is_read_in_place_not_copied(use_tracking, tmp_path):
    made = tmp_path / "made"
    made.mkdir()
    (made / "meta.json").write_text("{}")
    with mlflow.start_run(experiment_id=use_tracking["experiment_id"]) as run:
        mlflow.log_artifacts(str(made), "dataset")
    copies = tmp_path / "copies"
    copies.mkdir()
    resolved = artifacts.resolve_artifact_dir(
        f"runs:/{run.info.run_id}/dataset", "meta.json", "a dataset", dst_path=str(copies)
    )
    assert resolved.is_relative_to(use_tracking["root"] / "artifacts")
    assert (resolved / "meta.json").read_text() == "{}"
    assert not any(copies.iterdir())


def test_an_unknown_run_is_refused_with_what_was_expected(use_tracking):
    with pytest.raises(ValueError, match="expected runs:/<get_data_run_id>/dataset"):
        artifacts.resolve_artifact_dir(
            "runs:/0123456789abcdef0123456789abcdef/dataset",
            "meta.json",
            "runs:/<get_data_run_id>/dataset",
        )


def test_a_stage_run_is_named_for_what_it_is_and_a_trial_keeps_its_name_and_input(
    use_tracking, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    with lineage.start_stage_run("train", name="train mnist: cnn_3x48, 2 epochs") as run:
        pass
    stored = use_tracking["client"].get_run(run.info.run_id)
    assert stored.info.run_name == "train mnist: cnn_3x48, 2 epochs"
    assert stored.data.tags["mlflow.user"] == "alice"
    trial = use_tracking["client"].create_run(
        use_tracking["experiment_id"],
        run_name="trial 3: conv_filters=16",
        tags={artifacts.TRIAL_NUMBER_TAG: "3", artifacts.INPUT_URI_TAG: "runs:/abc/preprocessed"},
    )
    monkeypatch.setenv("MLFLOW_RUN_ID", trial.info.run_id)
    # The trial reads the copy its sweep downloaded; its run keeps the URI the sweep gave.
    with lineage.start_stage_run("train", "/tmp/copy", name="train mnist: cnn_1x16, 1 epoch"):
        pass
    stored = use_tracking["client"].get_run(trial.info.run_id)
    assert stored.info.run_name == "trial 3: conv_filters=16"
    assert stored.data.tags[artifacts.INPUT_URI_TAG] == "runs:/abc/preprocessed"


def test_the_next_command_is_printed_unless_main_runs_the_chain(capsys):
    lineage.print_next("train", data="runs:/abc/preprocessed")
    with lineage.chained():
        lineage.print_next("package", model="runs:/abc/model")
    lineage.print_next("explore_data", data="runs:/abc/dataset")
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "next: mlflow run . -e train -P data=runs:/abc/preprocessed --env-manager local",
        "next: mlflow run . -e explore_data -P data=runs:/abc/dataset --env-manager local",
    ]
