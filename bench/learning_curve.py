"""Learning curve: test accuracy by training-set size, the train stage against a Keras example.

For each share of Fashion-MNIST's 60,000 training images (stratified, seed 42, with 10 % of
them held out for validation, as preprocess does), both sides train on the same normalized
arrays for the same epochs and are tested on all 10,000 test images:

- stage: `mlpipe_vision.training.run_train` with every default (the default network, tf.data,
  early stopping, MLflow logging), in a temporary sqlite store;
- baseline: the Keras examples' "Simple MNIST convnet"
  (`bench/keras_example.py`), Adam at 0.001, batch 64,
  `Model.fit` on the arrays, seed 42, with no early stopping.

Targets: the stage at least as accurate as the baseline at every size, and above 0.80 at 5 %.

Reads: /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist).
Writes: bench/results/learning_curve.json (or --output) and a markdown table on stdout.

Usage:
    .venv/bin/python bench/learning_curve.py            # 1, 5, 20, 100 %: about 30 minutes
    .venv/bin/python bench/learning_curve.py --quick    # 1 and 5 %, 2 epochs: about 2 minutes
"""

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import mlflow  # noqa: E402

from mlpipe_vision import artifacts, datasets, preprocessing, stats, training  # noqa: E402
from mlpipe_vision.train_parameters import TrainParameters  # noqa: E402

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))  # run as a script, `bench` is not on the path
from bench.keras_example import fit_keras_example  # noqa: E402
from mlpipe_vision import (  # noqa: E402
    idx_files,
)

DEFAULT_OUTPUT_PATH = REPO_DIR / "bench" / "results" / "learning_curve.json"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
SIZES = (1.0, 5.0, 20.0, 100.0)
TARGET_AT_5_PERCENT = 0.80
SEED = 42
DEFAULT_EPOCHS = TrainParameters().epochs


def write_preprocessed(dataset: datasets.Dataset, percentage: float, work_dir: Path) -> Path:
    """A `preprocessed/` folder: a share of train (and its validation), the whole test set."""
    normalization = preprocessing.normalization_from_stats(
        {"train_pixels": stats.pixel_stats(dataset.train_images)}, 1
    )
    split_arrays = preprocessing.make_splits(dataset, 0.1, percentage, seed=SEED)
    split_arrays["test"] = (dataset.test_images, dataset.test_labels)
    preprocessed_dir = work_dir / f"preprocessed_{percentage:g}"
    preprocessing.save_preprocessed(split_arrays, normalization, dataset, preprocessed_dir)
    return preprocessed_dir


def run_stage(preprocessed_dir: Path, epochs: int) -> dict:
    """The train stage with its defaults; its logged test accuracy and last-epoch metrics."""
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        model_uri = training.run_train(str(preprocessed_dir), TrainParameters(epochs=epochs))
    run = mlflow.MlflowClient().get_run(artifacts.parse_runs_uri(model_uri)[0])
    metrics = run.data.metrics
    return {
        "test_accuracy": metrics["test_accuracy"],
        "train_accuracy": metrics["accuracy"],
        "val_accuracy": metrics["val_accuracy"],
        "best_epoch": int(metrics["best_epoch"]),
        "seconds": time.perf_counter() - started,
    }


def run_baseline(preprocessed_dir: Path, epochs: int) -> dict:
    """The Keras example CNN on the same arrays; its test accuracy and last-epoch metrics."""
    started = time.perf_counter()
    result = fit_keras_example(preprocessed_dir, epochs, seed=SEED)
    return {**result, "seconds": time.perf_counter() - started}


def markdown_table(rows: list[dict]) -> str:
    """One line per size: both sides' test accuracy and the stage's train/validation gap."""
    lines = [
        "| training images | epochs | stage test acc | baseline test acc | stage - baseline "
        "| stage train / val acc (last epoch) | stage s | baseline s |",
        "|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        stage, baseline = row["stage"], row["baseline"]
        lines.append(
            f"| {row['train_images']:,} ({row['percentage']:g} %) | {row['epochs']} "
            f"| {stage['test_accuracy']:.4f} | {baseline['test_accuracy']:.4f} "
            f"| {stage['test_accuracy'] - baseline['test_accuracy']:+.4f} "
            f"| {stage['train_accuracy']:.3f} / {stage['val_accuracy']:.3f} "
            f"| {stage['seconds']:.0f} | {baseline['seconds']:.0f} |"
        )
    return "\n".join(lines)


def check_targets(rows: list[dict]) -> dict[str, dict]:
    """Stage >= baseline at every size; stage > 0.80 at 5 %."""
    targets = {}
    for row in rows:
        stage, baseline = row["stage"]["test_accuracy"], row["baseline"]["test_accuracy"]
        targets[f"stage_vs_baseline_{row['percentage']:g}%"] = {
            "value": stage - baseline,
            "target": ">= 0",
            "met": stage >= baseline,
        }
        if row["percentage"] == 5.0:
            targets["stage_at_5%"] = {
                "value": stage,
                "target": f"> {TARGET_AT_5_PERCENT}",
                "met": stage > TARGET_AT_5_PERCENT,
            }
    return targets


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        default=",".join(f"{size:g}" for size in SIZES),
        help="percentages of the training set, comma-separated (default 1,5,20,100)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=DEFAULT_EPOCHS,
        help=f"epochs for both sides (default: the train stage's, {DEFAULT_EPOCHS})",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 and 5 %%, 2 epochs")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT_PATH, help="JSON file")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.sizes, arguments.epochs = "1,5", 2
    try:
        arguments.sizes = [float(size) for size in arguments.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes takes percentages like 1,5,20,100, got {arguments.sizes!r}")
    if not all(0 < size <= 100 for size in arguments.sizes) or arguments.epochs < 1:
        parser.error("--sizes must be in (0, 100] and --epochs at least 1")
    return arguments


def main(argv: list[str] | None = None) -> None:
    """Train both sides at every size, print the table, write the JSON."""
    arguments = parse_arguments(argv)
    dataset = idx_files.load_idx_dataset("fashion_mnist", source=FASHION_MNIST_DIR)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_learning_curve_") as tmp:
        work_dir = Path(tmp)
        mlflow.set_tracking_uri(f"sqlite:///{work_dir / 'mlflow.db'}")
        for percentage in arguments.sizes:
            preprocessed_dir = write_preprocessed(dataset, percentage, work_dir)
            meta = json.loads((preprocessed_dir / "meta.json").read_text())
            row = {
                "percentage": percentage,
                "train_images": meta["counts"]["train"],
                "epochs": arguments.epochs,
                "stage": run_stage(preprocessed_dir, arguments.epochs),
                "baseline": run_baseline(preprocessed_dir, arguments.epochs),
            }
            rows.append(row)
            print(markdown_table([row]).splitlines()[-1], flush=True)
    table = markdown_table(rows)
    results = {
        "benchmark": "learning_curve",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "rows": rows,
        "targets": check_targets(rows),
        "table": table,
    }
    print("\n" + table + "\n")
    for name, target in results["targets"].items():
        status = "met" if target["met"] else "MISSED"
        print(f"{name}: {target['value']:+.4f} (target {target['target']}): {status}")
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(results, indent=2))
    print(f"written to {arguments.output}")


if __name__ == "__main__":
    main()
