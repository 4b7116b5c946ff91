"""Whether a packaged version takes the alias (`@champion`): the rule and the registry reads.

The candidate takes the alias when it scores at least as well as the current champion on
the same test set, where "same" means the same test images and labels (the train runs'
`mlpipe.test_set_digest`). A metric whose name ends in "loss" is better when lower; every
other one when higher. A champion scored on a different test set, or on none recorded,
cannot be compared: with promote=better the alias then stays where it is and the line
says how to move it anyway. `decide` is the rule alone, without the registry.

No TensorFlow here, so `main` and the tests can use it cheaply.
"""

import dataclasses

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlpipe_vision import artifacts

PROMOTE_CHOICES = ("better", "always", "never")
DEFAULT_METRIC = "test_accuracy"


@dataclasses.dataclass(frozen=True)
class Score:
    """A version's score: the metric's value on its train run and that run's test set."""

    value: float | None
    test_set: str | None


@dataclasses.dataclass(frozen=True)
class Decision:
    """What becomes of the alias, and the one line that says why."""

    promote: bool
    outcome: str  # promoted, kept or current
    reason: str


def lower_is_better(metric: str) -> bool:
    """Losses are better when lower; accuracies, AUCs and the like when higher."""
    return metric.endswith("loss")


def check_promote(promote: str) -> None:
    """Refuse a promote value other than better, always or never.

    Raises:
        ValueError: Naming the value and the choices.
    """
    if promote not in PROMOTE_CHOICES:
        raise ValueError(f"promote must be one of {', '.join(PROMOTE_CHOICES)}, got {promote!r}")


def decide(
    promote: str,
    metric: str,
    candidate: Score,
    champion: Score | None,
    champion_version: str | None,
) -> Decision:
    """The promotion rule.

    Args:
        promote: "better" (take the alias when at least as good), "always" or "never".
        metric: The metric compared, e.g. test_accuracy.
        candidate: The new version's score.
        champion: The current champion's score; None when the alias points nowhere.
        champion_version: The current champion's version number.

    Returns:
        Whether to move the alias, and why, in words for the console.
    """
    check_promote(promote)
    shown = f"{metric} {candidate.value:.4f}" if candidate.value is not None else metric
    if champion is None:
        if promote == "never":
            return Decision(False, "kept", "promote=never and there is no champion yet")
        return Decision(True, "promoted", f"the first champion ({shown})")
    champion_shown = (
        f"version {champion_version}'s {champion.value:.4f}"
        if champion.value is not None
        else f"version {champion_version} (no {metric})"
    )
    if promote == "always":
        return Decision(True, "promoted", f"promote=always ({shown}; champion {champion_shown})")
    if promote == "never":
        return Decision(False, "kept", f"promote=never ({shown}; champion {champion_shown})")
    comparable = (
        candidate.value is not None
        and champion.value is not None
        and candidate.test_set is not None
        and candidate.test_set == champion.test_set
    )
    if not comparable:
        return Decision(
            False,
            "kept",
            f"champion version {champion_version} was not scored on the same test set, so "
            f"{metric} cannot be compared; -P promote=always moves the alias anyway",
        )
    if lower_is_better(metric):
        at_least_as_good = candidate.value <= champion.value
    else:
        at_least_as_good = candidate.value >= champion.value
    if at_least_as_good:
        return Decision(True, "promoted", f"{shown}, champion {champion_shown}, same test set")
    return Decision(
        False,
        "kept",
        f"{shown} is worse than champion {champion_shown} on the same test set; "
        "-P promote=always moves the alias anyway",
    )


def train_run_score(client: MlflowClient, train_run_id: str, metric: str) -> Score:
    """The metric a train run logged, and the digest of the test set it was scored on."""
    run = client.get_run(train_run_id)
    return Score(run.data.metrics.get(metric), run.data.tags.get(artifacts.TEST_SET_DIGEST_TAG))


def check_metric(client: MlflowClient, train_run_id: str, metric: str) -> None:
    """Refuse a metric the train run did not log, naming the ones it did.

    Raises:
        ValueError: If the run has no such metric.
    """
    metrics = client.get_run(train_run_id).data.metrics
    if metric not in metrics:
        known = sorted(name for name in metrics if name.startswith("test_"))
        raise ValueError(
            f"train run {train_run_id} logged no metric {metric!r} to promote by; "
            f"expected one of {', '.join(known)}"
        )


def current_champion(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version `alias` points at, or None when the model or the alias does not exist."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def decision_tags(
    decision: Decision,
    metric: str,
    candidate: Score,
    champion: Score | None,
    champion_version: str | None,
) -> dict[str, str]:
    """The decision as tags, for the version and the package run."""
    tags = {
        artifacts.PROMOTION_TAG: decision.outcome,
        artifacts.PROMOTION_REASON_TAG: decision.reason,
        artifacts.PROMOTION_METRIC_TAG: metric,
        artifacts.CANDIDATE_SCORE_TAG: str(candidate.value),
    }
    if champion is not None:
        tags[artifacts.CHAMPION_SCORE_TAG] = str(champion.value)
        tags[artifacts.CHAMPION_BEFORE_TAG] = str(champion_version)
    return tags
