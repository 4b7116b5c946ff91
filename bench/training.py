"""Training overhead, pipeline time and accuracy on full Fashion-MNIST.

1. Overhead: the `train` stage (`mlpipe_vision.training.run_train`: tf.data pipeline, per-epoch
   MLflow logging, test evaluation, plots, model logging) against a bare Keras script that
   fits the same network with the same optimizer on the same in-memory arrays and
   evaluates it, with no MLflow. Both run in this process, interleaved (A B, B A, ...),
   and the median ratio of wall times is reported. Target: at most 1.05.
2. With --pipeline: `mlflow run . -e main` on full Fashion-MNIST with the demo settings in a
   fresh tracking store (the end-to-end time), then the same command again (every stage
   reused), and the default network's test accuracy. Target: at least 92.5 %.
3. With --sweep "name=values;...": `main` with that sweep (the README's), and the best
   trial's test accuracy. Target: at least 93.5 %.

Reads: /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist).
Writes: bench/results/training.json (or --output) and a markdown table on stdout.

Usage:
    .venv/bin/python bench/training.py                    # overhead only, ~8 minutes
    .venv/bin/python bench/training.py --pipeline         # + main end to end and accuracy
    .venv/bin/python bench/training.py --quick            # smoke run on 10 % of the data
    make bench                                            # both, with the README's sweep
"""

import argparse
import contextlib
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402

from mlpipe_vision import (  # noqa: E402
    artifacts,
    idx_files,
    models,
    preprocessing,
    stats,
    training,
)
from mlpipe_vision.images import normalize  # noqa: E402
from mlpipe_vision.train_parameters import TrainParameters  # noqa: E402

REPO_DIR = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT_PATH = REPO_DIR / "bench" / "results" / "training.json"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
TARGET_OVERHEAD = 1.05
TARGET_DEFAULT_ACCURACY = 0.925
TARGET_SWEEP_ACCURACY = 0.935
DEMO_EPOCHS = 10
# Both sides train the train stage's default network: read from its schema, so a change of
# defaults cannot make the two sides train different networks.
DEFAULTS = TrainParameters().as_dict()


def build_preprocessed(work_dir: Path, percentage: float) -> Path:
    """Write a `preprocessed/` folder of Fashion-MNIST as the preprocess stage would."""
    dataset = idx_files.load_idx_dataset("fashion_mnist", source=FASHION_MNIST_DIR)
    normalization = preprocessing.normalization_from_stats(
        {"train_pixels": stats.pixel_stats(dataset.train_images)}, 1
    )
    split_arrays = preprocessing.make_splits(dataset, 0.1, percentage, seed=42)
    preprocessed_dir = work_dir / "preprocessed"
    preprocessing.save_preprocessed(split_arrays, normalization, dataset, preprocessed_dir)
    return preprocessed_dir


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch, validation included (as the stage's `epoch_seconds`)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Start the epoch's clock."""
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Record the epoch's wall time."""
        self.seconds.append(time.perf_counter() - self._started)


def time_stage(preprocessed_dir: Path, epochs: int) -> tuple[float, list[float]]:
    """Wall time of the train stage, everything it logs included, and its epoch times."""
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        parameters = TrainParameters(epochs=epochs, early_stopping_patience=0)
        model_uri = training.run_train(str(preprocessed_dir), parameters)
    seconds = time.perf_counter() - started
    run_id, _ = artifacts.parse_runs_uri(model_uri)
    history = mlflow.MlflowClient().get_metric_history(run_id, "epoch_seconds")
    return seconds, [metric.value for metric in sorted(history, key=lambda m: m.step)]


def time_bare_keras(
    preprocessed_dir: Path, epochs: int, limit: int | None = None
) -> tuple[float, list[float]]:
    """Wall time and epoch times of the plain Keras script: same network, optimizer and
    batch size, arrays in memory, then the test set evaluated; `limit` trains on fewer
    images (for the warm-up)."""
    split_arrays, meta = artifacts.load_preprocessed(preprocessed_dir)
    split_arrays = {
        split: (normalize(pixels, meta["normalization"]), labels)
        for split, (pixels, labels) in split_arrays.items()
    }
    x_train, y_train = (array[:limit] for array in split_arrays["train"])
    validation, (x_test, y_test) = split_arrays["validation"], split_arrays["test"]
    started = time.perf_counter()
    keras.utils.set_random_seed(DEFAULTS["seed"])
    network = models.build_network(
        tuple(meta["image_shape"]),
        len(meta["class_names"]),
        meta["normalization"],
        DEFAULTS["convolutions"],
        DEFAULTS["conv_filters"],
        DEFAULTS["dense_units"],
        DEFAULTS["dropout_rate"],
        DEFAULTS["weights"],
    )
    batch_size = DEFAULTS["batch_size"]
    steps = epochs * int(np.ceil(len(y_train) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(DEFAULTS["learning_rate"], steps)
    network.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    timer = EpochTimer()
    network.fit(
        x_train, y_train, batch_size=batch_size, epochs=epochs, validation_data=validation,
        callbacks=[timer], verbose=0,
    )  # fmt: skip
    network.evaluate(x_test, y_test, verbose=0)
    return time.perf_counter() - started, timer.seconds


def measure_overhead(preprocessed_dir: Path, epochs: int, repeats: int) -> dict:
    """Interleave stage and bare runs; report medians, images/s and the median ratios.

    Besides the wall-time ratio, the per-epoch ratio (training and validation only) and
    each side's fixed seconds (wall time minus its epochs) show where a difference comes
    from.
    """
    train_count = artifacts.read_preprocessed_meta(preprocessed_dir)["counts"]["train"]
    # Untimed: TensorFlow's one-off start-up, and the tracking store's tables, which a
    # pipeline creates once in get_data, not in every train run.
    time_bare_keras(preprocessed_dir, 1, limit=512)
    mlflow.MlflowClient().search_experiments()
    runs = {"stage": [], "bare": []}
    for repeat in range(repeats):
        order = ("stage", "bare") if repeat % 2 == 0 else ("bare", "stage")
        for side in order:
            timed = time_stage if side == "stage" else time_bare_keras
            seconds, epoch_seconds = timed(preprocessed_dir, epochs)
            runs[side].append({"seconds": seconds, "epoch_seconds": epoch_seconds})
            print(
                f"  repeat {repeat + 1}/{repeats} {side}: {seconds:.1f} s",
                file=sys.stderr,
                flush=True,
            )

    wall = {side: [run["seconds"] for run in runs[side]] for side in runs}
    epochs_only = {side: [sum(run["epoch_seconds"]) for run in runs[side]] for side in runs}
    fixed = {
        side: [total - epoch for total, epoch in zip(wall[side], epochs_only[side], strict=True)]
        for side in runs
    }
    return {
        "epochs": epochs,
        "train_images": train_count,
        "runs": runs,
        "stage_images_per_second": train_count * epochs / statistics.median(wall["stage"]),
        "bare_images_per_second": train_count * epochs / statistics.median(wall["bare"]),
        "ratio_median": statistics.median(
            s / b for s, b in zip(wall["stage"], wall["bare"], strict=True)
        ),
        "epoch_ratio_median": statistics.median(
            s / b for s, b in zip(epochs_only["stage"], epochs_only["bare"], strict=True)
        ),
        "stage_fixed_seconds": statistics.median(fixed["stage"]),
        "bare_fixed_seconds": statistics.median(fixed["bare"]),
        "target": TARGET_OVERHEAD,
    }


def run_main(tracking_uri: str, parameters: dict[str, object]) -> tuple[float, str]:
    """Run `mlflow run . -e main` with parameters; return wall time and the main run ID."""
    command = [sys.executable, "-m", "mlflow", "run", str(REPO_DIR), "--env-manager", "local"]
    for name, value in parameters.items():
        command += ["-P", f"{name}={value}"]
    environment = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    started = time.perf_counter()
    completed = subprocess.run(
        command, cwd=REPO_DIR, env=environment, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"main failed:\n{(completed.stdout + completed.stderr)[-4000:]}")
    run_id = re.findall(r"Run \(ID '([0-9a-f]+)'\)", completed.stdout + completed.stderr)[-1]
    return seconds, run_id


def trained_accuracy(client: mlflow.MlflowClient, main_run_id: str) -> float:
    """Test accuracy of the model main packaged: the train run's, or the sweep's best."""
    tags = client.get_run(main_run_id).data.tags
    train_run_id = tags.get("mlpipe.run.train")
    if "mlpipe.run.train_batch" in tags:
        sweep_tags = client.get_run(tags["mlpipe.run.train_batch"]).data.tags
        train_run_id = sweep_tags["mlpipe.best_run_id"]
    return client.get_run(train_run_id).data.metrics["test_accuracy"]


def measure_pipeline(work_dir: Path, epochs: int, sweep: str) -> dict:
    """End-to-end `main` on full Fashion-MNIST, again with reuse, and the accuracies."""
    tracking_uri = f"sqlite:///{work_dir / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri)
    parameters = {"epochs": epochs, "registered_model_name": "bench_demo"}
    first_seconds, first_run = run_main(tracking_uri, parameters)
    second_seconds, _ = run_main(tracking_uri, parameters)
    result = {
        "epochs": epochs,
        "main_seconds": first_seconds,
        "main_again_seconds": second_seconds,
        "default_test_accuracy": trained_accuracy(client, first_run),
        "default_target": TARGET_DEFAULT_ACCURACY,
    }
    if sweep:
        # The Optuna study goes with this temporary store: a study left in the working
        # folder by an earlier benchmark would resume and skip its finished trials.
        study = f"study_storage=sqlite:///{work_dir / 'optuna.db'}"
        sweep_seconds, sweep_run = run_main(
            tracking_uri, {**parameters, "sweep": f"{sweep};{study}"}
        )
        result.update(
            sweep=sweep,
            sweep_seconds=sweep_seconds,
            sweep_best_test_accuracy=trained_accuracy(client, sweep_run),
            sweep_target=TARGET_SWEEP_ACCURACY,
        )
    return result


def markdown_table(results: dict) -> str:
    """The results as a markdown table for the README."""
    overhead = results["overhead"]
    met = "met" if overhead["ratio_median"] <= TARGET_OVERHEAD else "MISSED"
    rows = [
        "| measure | value | target |",
        "|---|---|---|",
        f"| train stage, images/s ({overhead['epochs']} epochs, {overhead['train_images']} "
        f"images) | {overhead['stage_images_per_second']:.0f} | |",
        f"| bare Keras script, images/s | {overhead['bare_images_per_second']:.0f} | |",
        f"| wall-time ratio stage / bare (median) | {overhead['ratio_median']:.3f} | "
        f"<= {TARGET_OVERHEAD} ({met}) |",
        f"| epochs only (training + validation), ratio | {overhead['epoch_ratio_median']:.3f} | |",
        f"| fixed work outside the epochs, stage / bare | {overhead['stage_fixed_seconds']:.1f} s"
        f" / {overhead['bare_fixed_seconds']:.1f} s | |",
    ]
    pipeline = results.get("pipeline")
    if pipeline:
        accuracy = pipeline["default_test_accuracy"]
        rows += [
            f"| `main` end to end, full Fashion-MNIST, {pipeline['epochs']} epochs | "
            f"{pipeline['main_seconds']:.0f} s | |",
            f"| `main` again (every stage reused) | {pipeline['main_again_seconds']:.0f} s | |",
            f"| default network test accuracy | {accuracy:.4f} | >= {TARGET_DEFAULT_ACCURACY} "
            f"({'met' if accuracy >= TARGET_DEFAULT_ACCURACY else 'MISSED'}) |",
        ]
        if "sweep_best_test_accuracy" in pipeline:
            best = pipeline["sweep_best_test_accuracy"]
            verdict = "met" if best >= TARGET_SWEEP_ACCURACY else "MISSED"
            minutes = pipeline["sweep_seconds"] / 60
            rows.append(
                f"| `main` with sweep `{pipeline['sweep']}` ({minutes:.0f} min): best trial's "
                f"test accuracy | {best:.4f} | >= {TARGET_SWEEP_ACCURACY} ({verdict}) |"
            )
    return "\n".join(rows)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=3, help="epochs per overhead run")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved overhead pairs")
    parser.add_argument(
        "--pipeline", action="store_true", help="also time `main` end to end and its accuracy"
    )
    parser.add_argument(
        "--demo_epochs", type=int, default=DEMO_EPOCHS, help="epochs of the demo settings"
    )
    parser.add_argument("--sweep", default="", help="with --pipeline: also run this sweep")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 10 %% of the data, 1 epoch, 1 pair"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT_PATH, help="JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the table, write the JSON."""
    arguments = parse_arguments(argv)
    percentage = 10.0 if arguments.quick else 100.0
    epochs, repeats = (1, 1) if arguments.quick else (arguments.epochs, arguments.repeats)
    with tempfile.TemporaryDirectory(prefix="bench_training_") as tmp:
        work_dir = Path(tmp)
        mlflow.set_tracking_uri(f"sqlite:///{work_dir / 'overhead.db'}")
        preprocessed_dir = build_preprocessed(work_dir, percentage)
        results = {
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "mlflow": mlflow.__version__,
                "keras": keras.__version__,
            },
            "overhead": measure_overhead(preprocessed_dir, epochs, repeats),
        }
        if arguments.pipeline:
            results["pipeline"] = measure_pipeline(work_dir, arguments.demo_epochs, arguments.sweep)
    table = markdown_table(results)
    results["table"] = table
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(results, indent=2))
    print(table)
    print(f"\nwritten to {arguments.output}")


if __name__ == "__main__":
    main()
