"""Dataset statistics and the plots people look at before training.

Statistics come from one pass over the train shards (pixel histograms add up chunk by chunk);
`run_explore` is the MLflow edge of the explore_data stage.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from mlpipe_vision import artifacts, lineage, shards  # noqa: E402

STATS_FILE = "stats.json"


def pixel_histogram(images: np.ndarray) -> np.ndarray:
    """Counts of each pixel value 0-255 per channel: int64 array (C, 256).

    Histograms of chunks add up to the histogram of the whole, so statistics of a dataset
    of any size come from one pass over its shards.
    """
    counts = np.zeros((images.shape[-1], 256), dtype=np.int64)
    # bincount works on int64 copies: 256 images at a time keeps those small.
    for start in range(0, len(images), 256):
        block = images[start : start + 256]
        for channel in range(images.shape[-1]):
            counts[channel] += np.bincount(block[..., channel].ravel(), minlength=256)
    return counts


def stats_of_histogram(histogram: np.ndarray) -> dict:
    """Mean, std, min and max of pixel values (0-255), overall and per channel.

    Args:
        histogram: Counts per channel and value, (C, 256), as `pixel_histogram` returns.

    Returns:
        {"mean", "std", "min", "max"} as floats, plus lists per channel under
        "per_channel" when C > 1.
    """
    values = np.arange(256, dtype=np.float64)

    def summary(counts: np.ndarray) -> dict:
        total = counts.sum()
        mean = float((counts * values).sum() / total)
        present = np.flatnonzero(counts)
        return {
            "mean": mean,
            "std": float(np.sqrt((counts * (values - mean) ** 2).sum() / total)),
            "min": float(present[0]),
            "max": float(present[-1]),
        }

    result = summary(histogram.sum(axis=0))
    if len(histogram) > 1:
        channels = [summary(counts) for counts in histogram]
        result["per_channel"] = {
            key: [c[key] for c in channels] for key in ("mean", "std", "min", "max")
        }
    return result


def pixel_stats(images: np.ndarray) -> dict:
    """`stats_of_histogram` of uint8 images (N, H, W, C) in memory."""
    return stats_of_histogram(pixel_histogram(images))


def class_counts(labels: np.ndarray, class_names: list[str]) -> dict[str, int]:
    """Count examples per class name, zero for classes that do not occur."""
    counts = np.bincount(labels, minlength=len(class_names))
    return {name: int(count) for name, count in zip(class_names, counts, strict=True)}


def scan_train_split(
    dataset_dir: Path, meta: dict, per_class: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass over the train shards: the pixel histogram and the first images of each class.

    Returns:
        (histogram (C, 256), sample images, their labels).
    """
    class_total = len(meta["class_names"])
    histogram = None
    sample_images, sample_labels = [], []
    taken = np.zeros(class_total, dtype=np.int64)
    for images, labels in tqdm(
        shards.iterate(dataset_dir, meta, "train"),
        total=len(shards.split_shards(meta, "train")),
        desc="scanning train",
        unit="shard",
    ):
        chunk = pixel_histogram(images)
        histogram = chunk if histogram is None else histogram + chunk
        for index, label in enumerate(labels if (taken < per_class).any() else ()):
            if taken[label] < per_class:
                taken[label] += 1
                sample_images.append(images[index].copy())  # a view would keep the shard
                sample_labels.append(label)
    return histogram, np.array(sample_images), np.array(sample_labels, dtype=np.int64)


def compute_stats(dataset_dir: Path, meta: dict, histogram: np.ndarray | None = None) -> dict:
    """Counts and class balance per split, pixel statistics of the train split.

    Args:
        dataset_dir: A `dataset/` folder.
        meta: Its meta.json.
        histogram: The train split's pixel histogram if already scanned, else it is scanned.
    """
    if histogram is None:
        histogram = scan_train_split(dataset_dir, meta, per_class=0)[0]
    class_names = meta["class_names"]
    return {
        "dataset": meta["dataset"],
        "image_shape": list(meta["image_shape"]),
        "class_names": class_names,
        "splits": {
            split: {
                "count": int(meta["counts"][split]),
                "class_counts": class_counts(
                    shards.read_labels(dataset_dir, meta, split), class_names
                ),
            }
            for split in ("train", "test")
        },
        "train_pixels": stats_of_histogram(histogram),
    }


def plot_samples(
    images: np.ndarray, labels: np.ndarray, class_names: list[str], per_class: int = 8
) -> plt.Figure:
    """A grid with one row of sample images per class."""
    rows = len(class_names)
    figure, axes = plt.subplots(
        rows, per_class, figsize=(per_class * 1.1, rows * 1.2), squeeze=False
    )
    for row, name in enumerate(class_names):
        members = np.flatnonzero(labels == row)[:per_class]
        for column in range(per_class):
            axis = axes[row, column]
            axis.axis("off")
            if column < len(members):
                image = images[members[column]]
                axis.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
        axes[row, 0].set_title(name, loc="left", fontsize=8)
    figure.tight_layout()
    return figure


def plot_class_balance(stats: dict) -> plt.Figure:
    """Bar chart of examples per class, train and test side by side."""
    names = stats["class_names"]
    positions = np.arange(len(names))
    figure, axis = plt.subplots(figsize=(max(6, len(names) * 0.7), 4))
    for offset, split in ((-0.2, "train"), (0.2, "test")):
        counts = [stats["splits"][split]["class_counts"][name] for name in names]
        axis.bar(positions + offset, counts, width=0.4, label=split)
    axis.set_xticks(positions, names, rotation=45, ha="right")
    axis.set_ylabel("images")
    axis.set_title("Class balance")
    axis.legend()
    figure.tight_layout()
    return figure


def plot_pixel_histogram(histogram: np.ndarray) -> plt.Figure:
    """Histogram of pixel values in the train split, one line per channel."""
    figure, axis = plt.subplots(figsize=(6, 4))
    channel_names = ["gray"] if len(histogram) == 1 else ["red", "green", "blue"]
    for counts, name in zip(histogram, channel_names, strict=True):
        axis.plot(np.arange(256), counts, label=name, color=name if name != "gray" else "black")
    axis.set_yscale("log")
    axis.set_xlabel("pixel value")
    axis.set_ylabel("count (log)")
    axis.set_title("Pixel values, train split")
    axis.legend()
    figure.tight_layout()
    return figure


def run_explore(data: str) -> dict:
    """The explore_data stage: log stats.json, metrics mean/std and three plots.

    Args:
        data: URI of a get_data run's `dataset/` artifact.

    Returns:
        The statistics.
    """
    with artifacts.open_dataset(data, "explore_data") as (dataset_dir, meta):
        histogram, sample_images, sample_labels = scan_train_split(dataset_dir, meta)
        stats = compute_stats(dataset_dir, meta, histogram)
    name = f"explore_data {meta['dataset']}"
    with lineage.start_stage_run("explore_data", input_uri=data, name=name) as run:
        mlflow.log_dict(stats, STATS_FILE)
        pixels = stats["train_pixels"]
        mlflow.log_metrics({"mean": pixels["mean"], "std": pixels["std"]})
        figures = {
            "plots/samples.png": plot_samples(sample_images, sample_labels, meta["class_names"]),
            "plots/class_balance.png": plot_class_balance(stats),
            "plots/pixel_histogram.png": plot_pixel_histogram(histogram),
        }
        for artifact_file, figure in figures.items():
            mlflow.log_figure(figure, artifact_file)
            plt.close(figure)
        stats_uri = artifacts.artifact_uri(run.info.run_id, STATS_FILE)
    print(f"\ntrain pixels: mean {pixels['mean']:.4f}, std {pixels['std']:.4f}")
    print(f"stats URI: {stats_uri}")
    lineage.print_next("preprocess", data=data, stats=stats_uri)
    return stats
