"""@champion moves only to a version at least as good on the same test set, through `mlflow run`."""

import pytest

from mlpipe_vision import artifacts
from tests.conftest import mlflow_run

pytestmark = pytest.mark.integration

NAME = "promoted_digits"


def package(tracking: dict, train_run_id: str, **parameters) -> dict:
    return mlflow_run(
        tracking,
        "package",
        model=f"runs:/{train_run_id}/model",
        registered_model_name=NAME,
        **parameters,
    )


def champion_run(client) -> str:
    return client.get_model_version_by_alias(NAME, "champion").tags[artifacts.TRAIN_RUN_TAG]


@pytest.fixture(scope="module")
def contenders(tracking, packaged):
    """The packaged fixture's train run and a worse one on the same data, best first."""
    client = tracking["client"]
    # A hundredth of the rate for one epoch leaves the network near chance.
    slow = mlflow_run(
        tracking,
        "train",
        data=packaged["preprocessed_uri"],
        epochs=1,
        batch_size=32,
        learning_rate=0.00001,
    )
    runs = [packaged["train_run_id"], slow["run_id"]]
    scores = {run: client.get_run(run).data.metrics["test_loss"] for run in runs}
    best, worst = sorted(runs, key=scores.get)
    assert scores[best] < scores[worst]
    return {"best": best, "worst": worst, "scores": scores}


def test_a_worse_model_leaves_the_champion_and_says_why(tracking, contenders):
    client = tracking["client"]
    best, worst = contenders["best"], contenders["worst"]
    first = package(tracking, best, metric="test_loss")
    assert f"models:/{NAME}@champion points at version 1: the first champion" in first["output"]
    champion = client.get_model_version_by_alias(NAME, "champion")

    second = package(tracking, worst, metric="test_loss")
    assert (
        f"models:/{NAME}@champion stays at version {champion.version}: test_loss"
        in (second["output"])
    )
    assert "is worse than champion version" in second["output"]
    assert champion_run(client) == best
    assert f"serve: mlflow models serve -m models:/{NAME}/2 " in second["output"]
    version = client.get_model_version(NAME, "2")
    tags = version.tags
    assert tags[artifacts.PROMOTION_TAG] == "kept"
    assert tags[artifacts.PROMOTION_METRIC_TAG] == "test_loss"
    assert float(tags[artifacts.CANDIDATE_SCORE_TAG]) == pytest.approx(contenders["scores"][worst])
    assert float(tags[artifacts.CHAMPION_SCORE_TAG]) == pytest.approx(contenders["scores"][best])
    assert tags[artifacts.CHAMPION_BEFORE_TAG] == str(champion.version)
    run_tags = client.get_run(second["run_id"]).data.tags
    assert run_tags[artifacts.PROMOTION_TAG] == "kept"
    assert run_tags[artifacts.PROMOTION_REASON_TAG] == tags[artifacts.PROMOTION_REASON_TAG]

    # Forced: the alias moves to the worse model; packaging the better one again reuses its
    # version and, being better, takes the alias back.
    package(tracking, worst, metric="test_loss", promote="always")
    assert champion_run(client) == worst
    back = package(tracking, best, metric="test_loss")
    assert "reused, not registered again" in back["output"]
    assert champion_run(client) == best
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 2


def test_an_unknown_metric_is_one_line(tracking, contenders):
    bad_metric = package(tracking, contenders["best"], metric="test_speed", check=False)
    assert bad_metric["returncode"] != 0
    assert "logged no metric 'test_speed' to promote by; expected one of" in bad_metric["output"]
    assert "Traceback" not in bad_metric["output"]
