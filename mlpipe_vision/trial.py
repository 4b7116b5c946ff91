"""One sweep trial's process: the sweep starts it, it runs the train stage, the sweep reads it.

The sweep starts `python -m mlpipe_vision.trial '<arguments as JSON>'` (`run_trial_process`)
with MLFLOW_RUN_ID set to the trial's child run, so `training.run_train` continues that run;
its output goes to the trial's train.log and, labelled, to the console. A trial that fails
exits non-zero with one error line, as the train stage does, and the sweep goes on; one
that ends well has logged the metric the sweep reads as its objective (`trial_objective`).
"""

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow

from mlpipe_vision import cli, lineage
from mlpipe_vision.train_parameters import TrainParameters

TRIAL_LOG = "train.log"
# Lines kept in each trial's train.log but not echoed to the console: TensorFlow's C++
# info and warnings (absl format, "I0000 00:00:..."), some printed before its log level
# applies, and the rows of the model summary table.
QUIET_LINE = re.compile(
    r"^(WARNING: All log messages before absl|[IW]\d{4} \d\d:\d\d:|\s*[┏┃┡│├└])"
)


@dataclass
class TrialOutcome:
    """What a trial process left behind."""

    returncode: int
    seconds: float
    log_path: Path


def is_echoed(line: str) -> bool:
    """False for the lines of a trial's log that the console does not need (QUIET_LINE)."""
    return not QUIET_LINE.match(line)


def trial_environment(run_id: str, workers: int) -> dict[str, str]:
    """The environment of a trial process: its MLflow run, quiet TF, a share of the CPUs."""
    package_root = str(Path(__file__).resolve().parents[1])
    environment = {
        **os.environ,
        "MLFLOW_RUN_ID": run_id,
        "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
        # A progress bar per trial, interleaved with other trials' lines, helps nobody.
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        # The sweep prints the next command once, not every trial's train.
        lineage.CHAINED_VARIABLE: "1",
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"),
    }
    if workers > 1:
        # Each TensorFlow would otherwise start a thread per core; share the cores instead.
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        environment.update(
            {
                "TF_NUM_INTRAOP_THREADS": threads,
                "TF_NUM_INTEROP_THREADS": "1",
                "OMP_NUM_THREADS": threads,
            }
        )
    return environment


def run_trial_process(
    arguments: dict,
    run_id: str,
    label: str,
    workers: int,
    log_path: Path,
    print_lock: threading.Lock,
) -> TrialOutcome:
    """Run the train stage (`mlpipe_vision.trial`) in a new process on MLflow run `run_id`.

    Output goes to `log_path` and, but for TensorFlow's start-up lines, to the console with
    `label` in front of each line.
    """
    started = time.perf_counter()
    command = [sys.executable, "-m", "mlpipe_vision.trial", json.dumps(arguments)]
    with (
        log_path.open("w") as log,
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=trial_environment(run_id, workers),
        ) as process,
    ):
        for line in process.stdout:
            log.write(line)
            if is_echoed(line):
                with print_lock:
                    print(f"[{label}] {line}", end="", flush=True)
        returncode = process.wait()
    return TrialOutcome(returncode, time.perf_counter() - started, log_path)


def last_error_line(log_path: Path) -> str:
    """The last line of a failed trial's log that looks like an error, for the summary."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines()]
    for line in reversed(lines):
        if ("Error" in line or "error" in line) and is_echoed(line):
            return line
    return next((line for line in reversed(lines) if line), "no output")


def trial_objective(client: mlflow.MlflowClient, run_id: str, metric: str) -> float:
    """The trial's `metric` for the model it logged.

    Per-epoch metrics are read at the epoch whose weights the model kept (`best_epoch`,
    which early stopping may have restored); metrics logged once, such as test_accuracy,
    are read as they are.

    Raises:
        ValueError: If the run logged no such metric.
    """
    metrics = client.get_run(run_id).data.metrics
    if metric not in metrics:
        raise ValueError(
            f"run {run_id} logged no metric {metric!r}; it has {', '.join(sorted(metrics))}"
        )
    history = client.get_metric_history(run_id, metric)
    at_best_epoch = [point.value for point in history if point.step == metrics.get("best_epoch")]
    if len(history) > 1 and at_best_epoch:
        return at_best_epoch[-1]
    return metrics[metric]


def main() -> None:
    """Run the train stage on `data` and the parameters given as JSON in the first argument."""
    # Only the trial process loads TensorFlow; the sweep that imports this module does not.
    from mlpipe_vision import training

    arguments = json.loads(sys.argv[1])
    data = arguments.pop("data")
    cli.run_or_exit(training.run_train, data=data, parameters=TrainParameters(**arguments))


if __name__ == "__main__":
    main()
