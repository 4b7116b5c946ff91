"""Resolving artifact URIs between stages."""

import mlflow
import pytest

from mlpipe_vision import lineage


def test_an_artifact_in_a_local_store_is_read_in_place_not_copied(use_tracking, tmp_path):
    made = tmp_path / "made"
    made.mkdir()
    (made / "meta.json").write_text("{}")
    with mlflow.start_run(experiment_id=use_tracking["experiment_id"]) as run:
        mlflow.log_artifacts(str(made), "dataset")
    copies = tmp_path / "copies"
    copies.mkdir()
    resolved = lineage.resolve_artifact_dir(
        f"runs:/{run.info.run_id}/dataset", "meta.json", "a dataset", dst_path=str(copies)
    )
    assert resolved.is_relative_to(use_tracking["root"] / "artifacts")
    assert (resolved / "meta.json").read_text() == "{}"
    assert not any(copies.iterdir())


def test_an_unknown_run_is_refused_with_what_was_expected(use_tracking):
    with pytest.raises(ValueError, match="expected runs:/<get_data_run_id>/dataset"):
        lineage.resolve_artifact_dir(
            "runs:/0123456789abcdef0123456789abcdef/dataset",
            "meta.json",
            "runs:/<get_data_run_id>/dataset",
        )
