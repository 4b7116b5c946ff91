"""Normalization and splits: the preprocess stage.

Training data goes through `mlpipe_vision.images.normalize` here, and served requests go through
the same function inside the packaged model.
"""

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np

from mlpipe_vision import datasets, lineage, splits, stats
from mlpipe_vision.images import normalize

NORMALIZATION_FILE = "normalization.json"
PREPROCESSED_SPLITS = ("train", "validation", "test")


def make_normalization(mean: list[float] | float, std: list[float] | float, channels: int) -> dict:
    """Build a normalization record with one mean and std per channel.

    Args:
        mean: One value for all channels, or one per channel, on the 0-255 pixel scale.
        std: Likewise; every value must be positive.
        channels: The images' channel count.

    Returns:
        {"mean": [...], "std": [...]} with `channels` entries each.

    Raises:
        ValueError: If a std is not positive or the lengths do not fit the channels.
    """
    means = np.broadcast_to(np.atleast_1d(np.asarray(mean, dtype=np.float64)), (channels,))
    try:
        stds = np.broadcast_to(np.atleast_1d(np.asarray(std, dtype=np.float64)), (channels,))
    except ValueError:
        raise ValueError(f"std {std} does not fit {channels} channel(s)") from None
    if not np.all(np.isfinite(means)) or not np.all(np.isfinite(stds)) or np.any(stds <= 0):
        raise ValueError(f"std must be positive and mean finite, got mean {mean}, std {std}")
    return {"mean": means.tolist(), "std": stds.tolist()}


def normalization_from_stats(stats_record: dict, channels: int) -> dict:
    """Take the train split's pixel mean/std from a stats.json record."""
    pixels = stats_record["train_pixels"]
    per_channel = pixels.get("per_channel")
    if per_channel:
        return make_normalization(per_channel["mean"], per_channel["std"], channels)
    return make_normalization(pixels["mean"], pixels["std"], channels)


def resolve_normalization(
    dataset: datasets.Dataset,
    mean: float | None,
    std: float | None,
    stats_uri: str,
) -> tuple[dict, str]:
    """Pick the normalization: explicit values, a stats.json, or the train split itself.

    Returns:
        (normalization, a word saying where it came from: "explicit", the stats URI, or
        "computed").

    Raises:
        ValueError: If only one of mean and std is given.
    """
    channels = dataset.image_shape[-1]
    if (mean is None) != (std is None):
        raise ValueError(f"give both mean and std or neither; got mean={mean}, std={std}")
    if mean is not None:
        return make_normalization(mean, std, channels), "explicit"
    if stats_uri:
        return normalization_from_stats(stats.read_stats(stats_uri), channels), stats_uri
    computed = stats.pixel_stats(dataset.train_images)
    return normalization_from_stats({"train_pixels": computed}, channels), "computed"


def make_splits(
    dataset: datasets.Dataset, validation_fraction: float, percentage: float, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Keep a stratified percentage of both splits and cut validation from train only.

    Returns:
        {"train": (images, labels), "validation": ..., "test": ...}, images still uint8.
    """
    train_subset = splits.stratified_subset(dataset.train_labels, percentage, seed)
    test_subset = splits.stratified_subset(dataset.test_labels, percentage, seed)
    train_images = dataset.train_images[train_subset]
    train_labels = dataset.train_labels[train_subset]
    keep, validation = splits.stratified_split(train_labels, validation_fraction, seed)
    return {
        "train": (train_images[keep], train_labels[keep]),
        "validation": (train_images[validation], train_labels[validation]),
        "test": (dataset.test_images[test_subset], dataset.test_labels[test_subset]),
    }


def save_preprocessed(
    split_arrays: dict[str, tuple[np.ndarray, np.ndarray]],
    normalization: dict,
    dataset: datasets.Dataset,
    preprocessed_dir: Path,
) -> None:
    """Write normalized float32 splits as .npy files (memory-mappable) plus meta.json."""
    preprocessed_dir.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in split_arrays.items():
        np.save(preprocessed_dir / f"{split}_images.npy", normalize(images, normalization))
        np.save(preprocessed_dir / f"{split}_labels.npy", labels.astype(np.int64))
    meta = {
        "dataset": dataset.name,
        "class_names": dataset.class_names,
        "image_shape": list(dataset.image_shape),
        "normalization": normalization,
        "counts": {split: int(len(labels)) for split, (_, labels) in split_arrays.items()},
    }
    (preprocessed_dir / "meta.json").write_text(json.dumps(meta, indent=2))


def load_preprocessed(
    preprocessed_dir: Path,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """Read the splits and meta.json written by `save_preprocessed`."""
    meta = json.loads((preprocessed_dir / "meta.json").read_text())
    split_arrays = {}
    for split in PREPROCESSED_SPLITS:
        try:
            split_arrays[split] = (
                np.load(preprocessed_dir / f"{split}_images.npy"),
                np.load(preprocessed_dir / f"{split}_labels.npy"),
            )
        except (OSError, ValueError) as error:
            raise ValueError(
                f"{preprocessed_dir} has no readable {split} split ({lineage.first_line(error)}); "
                "rerun preprocess"
            ) from error
    return split_arrays, meta


def run_preprocess(
    data: str,
    mean: float | None = None,
    std: float | None = None,
    stats: str = "",
    validation_fraction: float = 0.1,
    percentage: float = 100.0,
    seed: int = 42,
) -> str:
    """The preprocess stage: normalize, split off validation, log `preprocessed/`.

    Args:
        data: URI of a get_data run's `dataset/`.
        mean: Explicit pixel mean (0-255 scale), with `std`.
        std: Explicit pixel std.
        stats: URI of an explore_data run's stats.json, used when mean/std are not given.
        validation_fraction: Share of train (per class) kept for validation.
        percentage: Stratified share of the data kept, for fast experiments.
        seed: Seed for subset and split.

    Returns:
        The `runs:/<run_id>/preprocessed` URI.
    """
    dataset = datasets.load_dataset_uri(data)
    normalization, origin = resolve_normalization(dataset, mean, std, stats)
    split_arrays = make_splits(dataset, validation_fraction, percentage, seed)
    with (
        lineage.start_stage_run("preprocess", input_uri=data) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        preprocessed_dir = Path(tmp) / "preprocessed"
        save_preprocessed(split_arrays, normalization, dataset, preprocessed_dir)
        mlflow.log_artifacts(str(preprocessed_dir), "preprocessed")
        mlflow.log_dict(normalization, NORMALIZATION_FILE)
        mlflow.set_tag("mlpipe.normalization_from", origin)
        mlflow.log_metrics(
            {f"{split}_examples": len(labels) for split, (_, labels) in split_arrays.items()}
        )
        preprocessed_uri = lineage.artifact_uri(run.info.run_id, "preprocessed")
    counts = ", ".join(f"{len(labels)} {split}" for split, (_, labels) in split_arrays.items())
    print(f"\n{counts}; normalization mean {normalization['mean']}, std {normalization['std']}")
    print(f"preprocessed URI: {preprocessed_uri}")
    print("next: " + lineage.next_command("train", data=preprocessed_uri))
    return preprocessed_uri
