"""Dataset statistics and the plots people look at before training.

`compute_stats` is pure; `run_explore` is the MLflow edge of the explore_data stage.
"""

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402

from mlpipe_vision import datasets, lineage  # noqa: E402

STATS_FILE = "stats.json"


def pixel_stats(images: np.ndarray) -> dict:
    """Mean, std, min and max of pixel values (0-255), overall and per channel.

    Args:
        images: uint8 array (N, H, W, C).

    Returns:
        {"mean", "std", "min", "max"} as floats, plus lists per channel under
        "per_channel" when C > 1.
    """
    values = images.astype(np.float64)
    result = {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }
    if images.shape[-1] > 1:
        axes = tuple(range(images.ndim - 1))
        result["per_channel"] = {
            "mean": values.mean(axis=axes).tolist(),
            "std": values.std(axis=axes).tolist(),
            "min": values.min(axis=axes).tolist(),
            "max": values.max(axis=axes).tolist(),
        }
    return result


def class_counts(labels: np.ndarray, class_names: list[str]) -> dict[str, int]:
    """Count examples per class name, zero for classes that do not occur."""
    counts = np.bincount(labels, minlength=len(class_names))
    return {name: int(count) for name, count in zip(class_names, counts, strict=True)}


def compute_stats(dataset: datasets.Dataset) -> dict:
    """Counts and class balance per split, pixel statistics of the train split."""
    return {
        "dataset": dataset.name,
        "image_shape": list(dataset.image_shape),
        "class_names": dataset.class_names,
        "splits": {
            split: {
                "count": int(len(labels)),
                "class_counts": class_counts(labels, dataset.class_names),
            }
            for split, labels in (("train", dataset.train_labels), ("test", dataset.test_labels))
        },
        "train_pixels": pixel_stats(dataset.train_images),
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


def plot_pixel_histogram(images: np.ndarray) -> plt.Figure:
    """Histogram of pixel values in the train split, one line per channel."""
    figure, axis = plt.subplots(figsize=(6, 4))
    channel_names = ["gray"] if images.shape[-1] == 1 else ["red", "green", "blue"]
    for channel, name in enumerate(channel_names):
        counts = np.bincount(images[..., channel].ravel(), minlength=256)
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
    dataset = datasets.load_dataset_uri(data)
    stats = compute_stats(dataset)
    with lineage.start_stage_run("explore_data", input_uri=data) as run:
        mlflow.log_dict(stats, STATS_FILE)
        pixels = stats["train_pixels"]
        mlflow.log_metrics({"mean": pixels["mean"], "std": pixels["std"]})
        figures = {
            "plots/samples.png": plot_samples(
                dataset.train_images, dataset.train_labels, dataset.class_names
            ),
            "plots/class_balance.png": plot_class_balance(stats),
            "plots/pixel_histogram.png": plot_pixel_histogram(dataset.train_images),
        }
        for artifact_file, figure in figures.items():
            mlflow.log_figure(figure, artifact_file)
            plt.close(figure)
        stats_uri = lineage.artifact_uri(run.info.run_id, STATS_FILE)
    print(f"\ntrain pixels: mean {pixels['mean']:.4f}, std {pixels['std']:.4f}")
    print(f"stats URI: {stats_uri}")
    print("next: " + lineage.next_command("preprocess", data=data, stats=stats_uri))
    return stats


def read_stats(stats_uri: str) -> dict:
    """Read a stats.json artifact by URI (or local path)."""
    try:
        return lineage.read_json_artifact(stats_uri)
    except Exception as error:
        raise ValueError(
            f"could not read stats from {stats_uri!r} ({lineage.first_line(error)}); "
            "expected runs:/<explore_data_run_id>/stats.json"
        ) from error
