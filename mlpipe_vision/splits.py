"""Seeded, stratified splits and subsets of labelled arrays."""

import numpy as np


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices so that each class keeps its share on both sides.

    Args:
        labels: Integer class labels, shape (N,).
        fraction: Share of every class that goes to the second part, in (0, 1).
        seed: Random seed; the same seed and labels give the same split.

    Returns:
        (kept_indices, split_off_indices), each sorted.

    Raises:
        ValueError: If the fraction is outside (0, 1) or a class is too small to be split.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    kept, split_off = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            raise ValueError(
                f"class {label} has {len(members)} example(s); a stratified split needs "
                "at least 2 per class"
            )
        members = rng.permutation(members)
        count = min(max(1, round(len(members) * fraction)), len(members) - 1)
        split_off.append(members[:count])
        kept.append(members[count:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(split_off))


def stratified_subset(labels: np.ndarray, percentage: float, seed: int) -> np.ndarray:
    """Pick a stratified subset holding `percentage` percent of the examples.

    Args:
        labels: Integer class labels, shape (N,).
        percentage: In (0, 100]; 100 keeps everything.
        seed: Random seed.

    Returns:
        Sorted indices of the subset.

    Raises:
        ValueError: If the percentage is outside (0, 100].
    """
    if not 0.0 < percentage <= 100.0:
        raise ValueError(f"percentage must be in (0, 100], got {percentage}")
    if percentage == 100.0:
        return np.arange(len(labels))
    _, subset = stratified_split(labels, percentage / 100.0, seed)
    return subset
