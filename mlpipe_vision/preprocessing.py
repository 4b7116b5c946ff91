"""Normalization and splits: the preprocess stage.

The stage chooses the splits from the labels, copies their uint8 images as shards and
records the normalization in meta.json; training applies it on the fly with
`mlpipe_vision.images.normalize`, and served requests go through the same function inside the
packaged model.
"""

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np

from mlpipe_vision import artifacts, datasets, lineage, shards, splits, stats

NORMALIZATION_FILE = "normalization.json"


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
    dataset_dir: Path,
    meta: dict,
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
    channels = int(meta["image_shape"][-1])
    if (mean is None) != (std is None):
        raise ValueError(f"give both mean and std or neither; got mean={mean}, std={std}")
    if mean is not None:
        return make_normalization(mean, std, channels), "explicit"
    if stats_uri:
        return normalization_from_stats(artifacts.read_stats(stats_uri), channels), stats_uri
    histogram = stats.scan_train_split(dataset_dir, meta, per_class=0)[0]
    computed = stats.stats_of_histogram(histogram)
    return normalization_from_stats({"train_pixels": computed}, channels), "computed"


def choose_splits(
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    validation_fraction: float,
    percentage: float,
    seed: int,
) -> dict[str, tuple[str, np.ndarray]]:
    """Keep a stratified percentage of both splits and cut validation from train only.

    Chosen from the labels alone, so no image is read.

    Returns:
        {"train": ("train", indices), "validation": ("train", indices), "test": ("test",
        indices)}: for each output split, the dataset split it comes from and the sorted
        positions in it.
    """
    train_subset = splits.stratified_subset(train_labels, percentage, seed)
    test_subset = splits.stratified_subset(test_labels, percentage, seed)
    keep, validation = splits.stratified_split(
        train_labels[train_subset], validation_fraction, seed
    )
    return {
        "train": ("train", train_subset[keep]),
        "validation": ("train", train_subset[validation]),
        "test": ("test", test_subset),
    }


def preprocessed_meta(
    dataset_meta: dict, normalization: dict, split_shards: dict[str, list[dict]]
) -> dict:
    """The meta.json of a `preprocessed/` folder."""
    return {
        "dataset": dataset_meta["dataset"],
        "class_names": list(dataset_meta["class_names"]),
        "image_shape": list(dataset_meta["image_shape"]),
        "normalization": normalization,
        "counts": shards.counts(split_shards),
        "format": shards.FORMAT,
        "shards": split_shards,
    }


def write_splits(
    dataset_dir: Path,
    meta: dict,
    chosen: dict[str, tuple[str, np.ndarray]],
    normalization: dict,
    preprocessed_dir: Path,
) -> dict:
    """Copy the chosen images of every split into `preprocessed_dir`, one shard at a time.

    Pixels stay uint8 (training normalizes on the fly with meta.json's normalization), so
    the artifact is never larger than the dataset's pixels.

    Returns:
        The meta.json record, also written.
    """
    image_shape = tuple(int(size) for size in meta["image_shape"])
    writers = {split: shards.ShardWriter(preprocessed_dir, split, image_shape) for split in chosen}
    for source_split in ("train", "test"):
        wanted = {
            split: indices for split, (source, indices) in chosen.items() if source == source_split
        }
        start = 0
        for images, labels in shards.iterate(dataset_dir, meta, source_split):
            end = start + len(labels)
            for split, indices in wanted.items():
                here = indices[np.searchsorted(indices, start) : np.searchsorted(indices, end)]
                if len(here):
                    writers[split].add(images[here - start], labels[here - start])
            start = end
    result = preprocessed_meta(
        meta, normalization, {split: writer.close() for split, writer in writers.items()}
    )
    (preprocessed_dir / "meta.json").write_text(json.dumps(result, indent=2))
    return result


def save_preprocessed(
    split_arrays: dict[str, tuple[np.ndarray, np.ndarray]],
    normalization: dict,
    dataset: datasets.Dataset,
    preprocessed_dir: Path,
) -> dict:
    """Write in-memory uint8 splits as a `preprocessed/` folder (for tests and benchmarks)."""
    split_shards = {
        split: shards.write_split(preprocessed_dir, split, images, labels)
        for split, (images, labels) in split_arrays.items()
    }
    meta = {
        "dataset": dataset.name,
        "class_names": dataset.class_names,
        "image_shape": dataset.image_shape,
    }
    result = preprocessed_meta(meta, normalization, split_shards)
    (preprocessed_dir / "meta.json").write_text(json.dumps(result, indent=2))
    return result


def make_splits(
    dataset: datasets.Dataset, validation_fraction: float, percentage: float, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`choose_splits` on an in-memory dataset: {"train": (images, labels), ...}, uint8."""
    arrays = {
        "train": (dataset.train_images, dataset.train_labels),
        "test": (dataset.test_images, dataset.test_labels),
    }
    chosen = choose_splits(
        dataset.train_labels, dataset.test_labels, validation_fraction, percentage, seed
    )
    return {
        split: (arrays[source][0][indices], arrays[source][1][indices])
        for split, (source, indices) in chosen.items()
    }


def run_preprocess(
    data: str,
    mean: float | None = None,
    std: float | None = None,
    stats: str = "",
    validation_fraction: float = 0.1,
    percentage: float = 100.0,
    seed: int = 42,
) -> str:
    """The preprocess stage: choose splits, record the normalization, log `preprocessed/`.

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

    Raises:
        ValueError: For impossible settings or data, before anything is written.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(
            f"validation_fraction must be between 0 and 1 (exclusive; 1 would leave no "
            f"training images), got {validation_fraction}"
        )
    with (
        artifacts.open_dataset(data, "preprocess") as (dataset_dir, dataset_meta),
        tempfile.TemporaryDirectory(prefix="mlpipe_preprocess_") as tmp,
    ):
        normalization, origin = resolve_normalization(dataset_dir, dataset_meta, mean, std, stats)
        chosen = choose_splits(
            shards.read_labels(dataset_dir, dataset_meta, "train"),
            shards.read_labels(dataset_dir, dataset_meta, "test"),
            validation_fraction,
            percentage,
            seed,
        )
        preprocessed_dir = Path(tmp) / "preprocessed"
        meta = write_splits(dataset_dir, dataset_meta, chosen, normalization, preprocessed_dir)
        name = f"preprocess {dataset_meta['dataset']}"
        if percentage < 100:
            name += f" ({percentage:g} %)"
        with lineage.start_stage_run("preprocess", input_uri=data, name=name) as run:
            mlflow.log_artifacts(str(preprocessed_dir), "preprocessed")
            mlflow.log_dict(normalization, NORMALIZATION_FILE)
            mlflow.set_tag(artifacts.NORMALIZATION_FROM_TAG, origin)
            mlflow.log_metrics(
                {f"{split}_examples": count for split, count in meta["counts"].items()}
            )
            preprocessed_uri = artifacts.artifact_uri(run.info.run_id, "preprocessed")
    counts = ", ".join(f"{count} {split}" for split, count in meta["counts"].items())
    print(f"\n{counts}; normalization mean {normalization['mean']}, std {normalization['std']}")
    print(f"preprocessed URI: {preprocessed_uri}")
    lineage.print_next("train", data=preprocessed_uri)
    return preprocessed_uri
