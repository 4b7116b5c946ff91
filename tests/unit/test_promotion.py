"""The promotion rule: when a new version takes @champion, what it says when not, and the
test-set digest that says whether two scores can be compared."""

import numpy as np
import pytest

from mlpipe_vision import shards
from mlpipe_vision.promotion import Score, decide

SAME = "digest-a"


def test_the_first_version_becomes_the_champion():
    decision = decide("better", "test_accuracy", Score(0.5, SAME), None, None)
    assert decision.promote and decision.outcome == "promoted"
    assert "first champion" in decision.reason


@pytest.mark.parametrize(
    ("metric", "candidate", "champion", "promoted"),
    [
        ("test_accuracy", 0.91, 0.90, True),
        ("test_accuracy", 0.90, 0.90, True),  # at least as good
        ("test_accuracy", 0.89, 0.90, False),
        ("test_loss", 0.30, 0.40, True),  # losses: lower is better
        ("test_loss", 0.50, 0.40, False),
        ("test_auc", 0.70, 0.80, False),
    ],
)
def test_better_compares_in_the_metrics_direction(metric, candidate, champion, promoted):
    decision = decide("better", metric, Score(candidate, SAME), Score(champion, SAME), "3")
    assert decision.promote is promoted
    assert decision.outcome == ("promoted" if promoted else "kept")
    if not promoted:
        assert "worse than champion version 3" in decision.reason
        assert "promote=always" in decision.reason


@pytest.mark.parametrize(
    "champion", [Score(0.5, "digest-b"), Score(0.5, None), Score(None, SAME), Score(None, None)]
)
def test_a_champion_scored_on_another_test_set_is_not_compared(champion):
    decision = decide("better", "test_accuracy", Score(0.99, SAME), champion, "2")
    assert not decision.promote
    assert "not scored on the same test set" in decision.reason
    assert "promote=always" in decision.reason


def test_always_and_never_override_the_scores():
    worse, better = Score(0.1, SAME), Score(0.9, SAME)
    assert decide("always", "test_accuracy", worse, better, "1").promote
    assert decide("always", "test_accuracy", worse, Score(0.9, "other"), "1").promote
    assert not decide("never", "test_accuracy", better, worse, "1").promote
    assert not decide("never", "test_accuracy", better, None, None).promote


def test_an_unknown_promote_value_is_named():
    with pytest.raises(ValueError, match="promote must be one of better, always, never, got 'yes'"):
        decide("yes", "test_accuracy", Score(0.5, SAME), None, None)


def test_the_test_set_digest_is_of_the_images_and_labels_not_the_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (60, 4, 4, 1), dtype=np.uint8)
    labels = np.arange(60) % 3

    def digest(name, images, labels, shard_bytes=None):
        folder = tmp_path / name
        folder.mkdir()
        meta = {"image_shape": [4, 4, 1], "class_names": ["a", "b", "c"]}
        meta["shards"] = {"test": shards.write_split(folder, "test", images, labels, shard_bytes)}
        return shards.content_digest(folder, meta, "test")

    same = digest("one", images, labels)
    assert digest("resharded", images, labels, shard_bytes=16 * 7) == same
    assert digest("relabelled", images, (labels + 1) % 3) != same
    assert digest("fewer", images[:-1], labels[:-1]) != same
