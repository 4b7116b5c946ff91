"""Hyperparameter sweeps: search spaces, grid and Optuna TPE, a parent run with child runs.

A search space maps train parameters to text: `8,16,32` is a list of values (a grid
dimension, or a categorical one for TPE), `1e-4:1e-2:log` and `8:64` are ranges for TPE
(integer when the parameter is), anything else is a fixed value.

Every trial is an Optuna trial and a nested MLflow child run of the sweep's run. The trial
runs the train stage, `training.run_train`, in a Python process of its own on the child run
the sweep created for it, so a trial that crashes is marked failed and the sweep goes on,
and `workers` trials can run side by side. This process alone asks Optuna for trials and
tells it their results, so the study's sqlite file has one writer; a killed sweep started
again with the same arguments finds its study there and runs only what is left.
"""

import argparse
import hashlib
import inspect
import itertools
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import optuna  # noqa: E402
from mlflow.entities import Param  # noqa: E402
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME  # noqa: E402

from mlpipe_vision import lineage, training  # noqa: E402
from mlpipe_vision.cli import str_to_bool  # noqa: E402

SAMPLERS = ("auto", "grid", "tpe")
DIRECTIONS = ("auto", "maximize", "minimize")
BEST_MODEL_TAG = "mlpipe.best_model_uri"
TRIAL_NUMBER_TAG = "mlpipe.trial_number"
RUN_ID_ATTRIBUTE = "mlflow_run_id"
FAILURE_ATTRIBUTE = "failure"
TRIAL_LOG = "train.log"
# What the trial process runs: the train stage's function, with the trial's parameters.
TRIAL_PROGRAM = (
    "import json, sys\n"
    "from mlpipe_vision import cli, training\n"
    "cli.run_or_exit(training.run_train, **json.loads(sys.argv[1]))\n"
)
# Lines kept in each trial's train.log but not echoed to the console: TensorFlow's C++
# info and warnings (absl format, "I0000 00:00:..."), some printed before its log level
# applies, and the rows of the model summary table.
QUIET_LINE = re.compile(
    r"^(WARNING: All log messages before absl|[IW]\d{4} \d\d:\d\d:|\s*[┏┃┡│├└])"
)


# --------------------------------------------------------------------------- the space


@dataclass(frozen=True)
class Dimension:
    """One swept parameter: a list of values, or a numeric range for TPE."""

    name: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    @property
    def is_range(self) -> bool:
        """True for a low:high range, False for a list of values."""
        return self.choices is None

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """The Optuna distribution to sample this dimension from."""
        if not self.is_range:
            return optuna.distributions.CategoricalDistribution(self.choices)
        if self.integer:
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)


@dataclass(frozen=True)
class SearchSpace:
    """Fixed train parameters and swept dimensions."""

    fixed: dict
    dimensions: tuple[Dimension, ...]

    @property
    def is_grid(self) -> bool:
        """True when every dimension is a list of values."""
        return all(not dimension.is_range for dimension in self.dimensions)

    def grid(self) -> list[dict]:
        """Every combination of the listed values, first dimension slowest."""
        if not self.is_grid:
            ranges = [dimension.name for dimension in self.dimensions if dimension.is_range]
            raise ValueError(f"a grid needs lists of values; {', '.join(ranges)} are ranges")
        names = [dimension.name for dimension in self.dimensions]
        choices = [dimension.choices for dimension in self.dimensions]
        return [dict(zip(names, values, strict=True)) for values in itertools.product(*choices)]

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Optuna distributions by parameter name."""
        return {dimension.name: dimension.distribution() for dimension in self.dimensions}


def train_parameter_types() -> dict[str, type]:
    """The train stage's parameters (those of `training.run_train` but `data`) and types."""
    signature = inspect.signature(training.run_train)
    return {
        name: type(parameter.default)
        for name, parameter in signature.parameters.items()
        if name != "data"
    }


def convert_value(name: str, text: str, kind: type) -> object:
    """Convert one value of parameter `name` from text to `kind`, naming it on failure.

    Raises:
        ValueError: If the text is not a valid `kind`.
    """
    text = text.strip()
    try:
        if kind is bool:
            return str_to_bool(text)
        return kind(text)
    except argparse.ArgumentTypeError as error:
        raise ValueError(f"{name}: {error}") from None
    except ValueError as error:
        raise ValueError(
            f"{name}: {text!r} is not a valid {kind.__name__} ({lineage.first_line(error)})"
        ) from None


def parse_range(name: str, text: str, kind: type) -> Dimension:
    """Parse `low:high` or `low:high:log` for a numeric parameter.

    Raises:
        ValueError: If the parameter is not numeric, the bounds are bad, or the scale is
            not "log".
    """
    parts = [part.strip() for part in text.split(":")]
    if kind not in (int, float):
        raise ValueError(
            f"{name}={text!r}: ranges low:high are for numeric parameters; give "
            f"{name} a comma-separated list of values instead"
        )
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise ValueError(f"{name}={text!r}: expected low:high or low:high:log")
    low, high = convert_value(name, parts[0], kind), convert_value(name, parts[1], kind)
    log = len(parts) == 3
    if not low < high:
        raise ValueError(f"{name}={text!r}: the low end must be below the high end")
    if log and low <= 0:
        raise ValueError(f"{name}={text!r}: a log range needs a positive low end")
    return Dimension(name, low=low, high=high, log=log, integer=kind is int)


def parse_search_space(raw: dict[str, str]) -> SearchSpace:
    """Parse train parameters given as text into fixed values and swept dimensions.

    Args:
        raw: Parameter name to text. Empty text means "train's default" and is dropped.
            `a,b,c` lists values, `low:high[:log]` is a numeric range, anything else is
            one fixed value.

    Returns:
        The search space; dimensions keep the order of `raw`.

    Raises:
        ValueError: For an unknown parameter or a value that does not fit its type.
    """
    types = train_parameter_types()
    fixed, dimensions = {}, []
    for name, value in raw.items():
        text = str(value).strip()
        if not text:
            continue
        if name not in types:
            raise ValueError(
                f"{name!r} is not a train parameter; expected one of {', '.join(types)}"
            )
        kind = types[name]
        if "," in text:
            values = [convert_value(name, part, kind) for part in text.split(",") if part.strip()]
            unique = tuple(dict.fromkeys(values))
            if len(unique) > 1:
                dimensions.append(Dimension(name, choices=unique))
            elif unique:
                fixed[name] = unique[0]
        elif ":" in text and kind in (int, float):
            dimensions.append(parse_range(name, text, kind))
        else:
            fixed[name] = convert_value(name, text, kind)
    return SearchSpace(fixed=fixed, dimensions=tuple(dimensions))


def resolve_sampler(sampler: str, space: SearchSpace) -> str:
    """Pick "grid" or "tpe": "auto" means grid when every dimension is a list.

    Raises:
        ValueError: For an unknown sampler, nothing to sweep, or a grid over ranges.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if not space.dimensions:
        raise ValueError(
            "nothing to sweep: give at least one train parameter as a list (conv_filters=8,16) "
            "or a range (learning_rate=1e-4:1e-2:log)"
        )
    if sampler == "auto":
        return "grid" if space.is_grid else "tpe"
    if sampler == "grid":
        space.grid()  # raises for ranges
    return sampler


def resolve_direction(direction: str, metric: str) -> str:
    """Pick the optimization direction: "auto" minimizes losses and maximizes the rest."""
    if direction not in DIRECTIONS:
        raise ValueError(
            f"unknown direction {direction!r}; expected one of {', '.join(DIRECTIONS)}"
        )
    if direction == "auto":
        return "minimize" if metric.endswith("loss") else "maximize"
    return direction


def default_study_name(
    data: str, raw: dict[str, str], sampler: str, metric: str, direction: str
) -> str:
    """A study name that is the same whenever the sweep's definition is the same.

    It depends on the data, the search space and fixed values, the sampler, the metric and
    the direction, not on n_trials or workers, so repeating a command (with a larger
    n_trials, say) continues the same study.
    """
    definition = {
        "data": data,
        "space": {name: str(value).strip() for name, value in sorted(raw.items()) if value},
        "sampler": sampler,
        "metric": metric,
        "direction": direction,
    }
    digest = hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()
    return f"sweep-{digest[:12]}"


def default_study_storage(study_name: str) -> str:
    """A sqlite file in the working directory, named after the study."""
    return f"sqlite:///{Path.cwd() / f'optuna-{study_name}.db'}"


# ------------------------------------------------------------------------ the study


def counts_as_done(trial: optuna.trial.FrozenTrial) -> bool:
    """Finished trials a resumed sweep must not repeat: completed, or failed by itself.

    A trial interrupted by a killed sweep is failed on resume without a failure message and
    run again.
    """
    if trial.state == optuna.trial.TrialState.COMPLETE:
        return True
    return trial.state == optuna.trial.TrialState.FAIL and FAILURE_ATTRIBUTE in trial.user_attrs


def recover_interrupted(study: optuna.Study, client: mlflow.MlflowClient) -> int:
    """Fail the trials a killed sweep left running and queue their parameters again.

    Returns:
        How many trials were recovered.
    """
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in running:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params)
        run_id = trial.user_attrs.get(RUN_ID_ATTRIBUTE)
        if run_id and client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "KILLED")
    return len(running)


def plan_trials(study: optuna.Study, space: SearchSpace, sampler: str, n_trials: int) -> int:
    """Queue what is left to run and return how many trials to ask for in this session.

    Call after `recover_interrupted`. For a grid, every point that no trial has yet is
    queued (only the first n_trials points when n_trials > 0); a finished or failed point
    is not run again, an interrupted one is already queued again. For TPE, n_trials counts
    the finished trials of earlier sessions too.
    """
    if sampler == "tpe":
        done = sum(counts_as_done(trial) for trial in study.get_trials(deepcopy=False))
        return max(0, n_trials - done)
    points = space.grid()
    for point in points[:n_trials] if n_trials > 0 else points:
        study.enqueue_trial(point, skip_if_exists=True)
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))


def open_study(name: str, storage: str, direction: str) -> optuna.Study:
    """Create the study, or load it to resume, with a TPE sampler seeded by its size.

    Seeding with the number of trials already stored keeps a fresh study reproducible and
    stops a resumed one from proposing its first session's trials again. Grid points are
    queued explicitly, so the sampler only matters for TPE.
    """
    study = optuna.create_study(
        study_name=name, storage=storage, direction=direction, load_if_exists=True
    )
    if study.direction.name.lower() != direction:
        raise ValueError(
            f"study {name!r} in {storage} was made to {study.direction.name.lower()}; "
            f"pick another study_name to {direction}"
        )
    study.sampler = optuna.samplers.TPESampler(seed=len(study.get_trials(deepcopy=False)))
    return study


# ------------------------------------------------------------------------- one trial


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
    """Run `training.run_train(**arguments)` in a new process on MLflow run `run_id`.

    Output goes to `log_path` and, but for TensorFlow's start-up lines, to the console with
    `label` in front of each line.
    """
    started = time.perf_counter()
    command = [sys.executable, "-c", TRIAL_PROGRAM, json.dumps(arguments)]
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


def last_error_line(log_path: Path) -> str:
    """The last line of a failed trial's log that looks like an error, for the summary."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines()]
    for line in reversed(lines):
        if ("Error" in line or "error" in line) and is_echoed(line):
            return line
    return next((line for line in reversed(lines) if line), "no output")


# ---------------------------------------------------------------------- the summary


def format_value(value: object) -> str:
    """Short text for a parameter value in messages."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plot_objective(
    trials: list[optuna.trial.FrozenTrial], space: SearchSpace, metric: str, best_number: int
) -> plt.Figure:
    """The objective of every completed trial against each swept parameter, best in red."""
    count = len(space.dimensions)
    figure, axes = plt.subplots(1, count, figsize=(4.5 * count, 3.8), squeeze=False)
    for axis, dimension in zip(axes[0], space.dimensions, strict=True):
        values = [trial.params[dimension.name] for trial in trials]
        objectives = [trial.value for trial in trials]
        numeric = all(
            isinstance(value, int | float) and not isinstance(value, bool) for value in values
        )
        if numeric:
            positions = values
            if not dimension.is_range:
                axis.set_xticks(sorted(dimension.choices))
        else:
            labels = [str(choice) for choice in dimension.choices]
            positions = [labels.index(str(value)) for value in values]
            axis.set_xticks(range(len(labels)), labels)
        colors = ["red" if trial.number == best_number else "tab:blue" for trial in trials]
        axis.scatter(positions, objectives, c=colors)
        if dimension.log:
            axis.set_xscale("log")
        axis.set_xlabel(dimension.name)
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
    figure.suptitle(f"{metric} per trial (best in red)")
    figure.tight_layout()
    return figure


def log_summary(study: optuna.Study, space: SearchSpace, metric: str) -> optuna.trial.FrozenTrial:
    """Log the best trial's parameters, metric and run, the trials table and the plot.

    Returns:
        The best trial.

    Raises:
        ValueError: If no trial of the study completed.
    """
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not completed:
        raise ValueError(
            f"no trial of study {study.study_name!r} completed; see the failed child runs' "
            f"{TRIAL_LOG}"
        )
    best = study.best_trial
    best_run_id = best.user_attrs[RUN_ID_ATTRIBUTE]
    mlflow.log_params({f"best_{name}": value for name, value in best.params.items()})
    mlflow.log_metric(f"best_{metric}", best.value)
    mlflow.set_tags(
        {
            lineage.BEST_RUN_TAG: best_run_id,
            BEST_MODEL_TAG: lineage.artifact_uri(best_run_id, training.MODEL_ARTIFACT),
            "mlpipe.best_trial_number": str(best.number),
        }
    )
    table = study.trials_dataframe(attrs=("number", "value", "params", "state", "user_attrs"))
    with tempfile.TemporaryDirectory() as tmp:
        table_path = Path(tmp) / "trials.csv"
        table.to_csv(table_path, index=False)
        mlflow.log_artifact(str(table_path))
    figure = plot_objective(completed, space, metric, best.number)
    mlflow.log_figure(figure, "plots/objective_by_parameter.png")
    plt.close(figure)
    return best


# ------------------------------------------------------------------------- the stage


def run_sweep(
    data: str,
    search_space: dict[str, str],
    n_trials: int = 0,
    workers: int = 1,
    metric: str = "val_accuracy",
    direction: str = "auto",
    sampler: str = "auto",
    study_name: str = "",
    study_storage: str = "",
) -> str:
    """The train_batch stage: a parent run with one nested train run per trial.

    Args:
        data: URI of a preprocess run's `preprocessed/` artifact, passed to every trial.
        search_space: Train parameter name to text: `a,b` lists, `low:high[:log]` ranges,
            single values fixed, "" train's default.
        n_trials: TPE: trials in total, counting those a resumed study finished before.
            Grid: 0 runs every point, n > 0 only the first n.
        workers: Trials run at the same time, each in its own process.
        metric: The metric to optimize, as the trial runs log it (val_accuracy,
            val_loss, test_accuracy, ...).
        direction: "maximize", "minimize", or "auto" (minimize metrics ending in "loss").
        sampler: "grid", "tpe", or "auto" (grid when every swept parameter is a list).
        study_name: The Optuna study; "" derives it from the sweep's definition.
        study_storage: Optuna storage URL; "" is sqlite file optuna-<study_name>.db in the
            working directory.

    Returns:
        The best trial's model URI, `runs:/<run_id>/model`.

    Raises:
        ValueError: For a bad search space or settings (before any trial runs), or when no
            trial completes.
    """
    space = parse_search_space(search_space)
    sampler = resolve_sampler(sampler, space)
    direction = resolve_direction(direction, metric)
    if sampler == "tpe" and n_trials < 1:
        raise ValueError(f"the TPE sampler needs n_trials of at least 1, got {n_trials}")
    if n_trials < 0 or workers < 1:
        raise ValueError(f"n_trials must be >= 0 and workers >= 1, got {n_trials}, {workers}")
    with training.open_preprocessed(data):
        pass  # a URI without preprocessed data fails here, before the study is opened
    study_name = study_name or default_study_name(data, search_space, sampler, metric, direction)
    study_storage = study_storage or default_study_storage(study_name)
    study = open_study(study_name, study_storage, direction)

    with lineage.start_stage_run("train_batch", input_uri=data) as parent:
        client = mlflow.MlflowClient()
        recovered = recover_interrupted(study, client)
        to_run = plan_trials(study, space, sampler, n_trials)
        finished_before = sum(counts_as_done(trial) for trial in study.get_trials(deepcopy=False))
        print(
            f"study {study_name} ({sampler}, {direction} {metric}) in {study_storage}: "
            f"{finished_before} trial(s) finished before, {recovered} interrupted, "
            f"{to_run} to run with {workers} worker(s)"
        )
        # `mlflow run` logged the parameters as given ("auto", ""); these are what they became.
        mlflow.set_tags(
            {
                "mlpipe.sampler": sampler,
                "mlpipe.direction": direction,
                "mlpipe.study_name": study_name,
                "mlpipe.study_storage": study_storage,
            }
        )
        lineage.log_new_params(
            {
                "fixed_parameters": json.dumps(space.fixed, sort_keys=True),
                "swept_parameters": ",".join(d.name for d in space.dimensions),
            }
        )
        run_trials(study, space, data, to_run, workers, metric, parent.info, client)
        best = log_summary(study, space, metric)
        parent_run_id = parent.info.run_id
    best_run_id = best.user_attrs[RUN_ID_ATTRIBUTE]
    best_model_uri = lineage.artifact_uri(best_run_id, training.MODEL_ARTIFACT)
    shown = ", ".join(f"{name}={format_value(value)}" for name, value in best.params.items())
    print(f"\nbest trial {best.number}: {metric} {best.value:.4f} with {shown}")
    print(f"best run ID: {best_run_id}")
    print(f"sweep run ID: {parent_run_id} (tagged {lineage.BEST_RUN_TAG}={best_run_id})")
    print(f"best model URI: {best_model_uri}")
    print("next: " + lineage.next_command("package", model=best_model_uri))
    return best_model_uri


def start_child_run(
    client: mlflow.MlflowClient,
    parent: mlflow.entities.RunInfo,
    trial_number: int,
    arguments: dict,
    source_tags: dict[str, str],
) -> str:
    """Create a trial's nested run, tagged as a train run, with its parameters logged.

    The parameters are logged here, as `mlflow run` does for a stage, so they are on the
    run even when the trial fails before training logs the rest.

    Returns:
        The run ID, for the trial process to continue.
    """
    run = client.create_run(
        parent.experiment_id,
        run_name=f"trial-{trial_number}",
        tags={
            **source_tags,
            MLFLOW_PARENT_RUN_ID: parent.run_id,
            MLFLOW_RUN_NAME: f"trial-{trial_number}",
            TRIAL_NUMBER_TAG: str(trial_number),
            lineage.STAGE_TAG: "train",
            lineage.INPUT_URI_TAG: arguments["data"],
        },
    )
    parameters = [Param(name, str(value)) for name, value in arguments.items()]
    client.log_batch(run.info.run_id, params=parameters)
    return run.info.run_id


def run_trials(
    study: optuna.Study,
    space: SearchSpace,
    data: str,
    to_run: int,
    workers: int,
    metric: str,
    parent: mlflow.entities.RunInfo,
    client: mlflow.MlflowClient,
) -> None:
    """Ask for `to_run` trials, run up to `workers` at once, and tell Optuna each result.

    Optuna is only called from this thread; worker threads only wait for trial processes.
    """
    print_lock = threading.Lock()
    # Children share the parent's source and git commit, as `mlflow run` records them.
    source_tags = {
        name: value
        for name, value in client.get_run(parent.run_id).data.tags.items()
        if name.startswith("mlflow.source.")
    }
    running: dict[Future, tuple[optuna.Trial, str]] = {}
    asked = 0
    with tempfile.TemporaryDirectory() as log_dir, ThreadPoolExecutor(workers) as pool:
        while asked < to_run or running:
            while asked < to_run and len(running) < workers:
                trial = study.ask(space.distributions())
                asked += 1
                arguments = {"data": data, **space.fixed, **trial.params}
                run_id = start_child_run(client, parent, trial.number, arguments, source_tags)
                trial.set_user_attr(RUN_ID_ATTRIBUTE, run_id)
                log_path = Path(log_dir) / f"trial-{trial.number}" / TRIAL_LOG
                log_path.parent.mkdir()
                label = f"trial {trial.number}"
                future = pool.submit(
                    run_trial_process, arguments, run_id, label, workers, log_path, print_lock
                )
                running[future] = (trial, run_id)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                trial, run_id = running.pop(future)
                finish_trial(study, trial, run_id, future.result(), metric, client, print_lock)


def finish_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    run_id: str,
    outcome: TrialOutcome,
    metric: str,
    client: mlflow.MlflowClient,
    print_lock: threading.Lock,
) -> None:
    """Record a finished trial process in MLflow and Optuna and print one line about it."""
    client.log_artifact(run_id, str(outcome.log_path))
    shown = ", ".join(f"{name}={format_value(value)}" for name, value in trial.params.items())
    value, failure = None, None
    if outcome.returncode != 0:
        failure = f"exit code {outcome.returncode}: {last_error_line(outcome.log_path)}"
    else:
        try:
            value = trial_objective(client, run_id, metric)
        except ValueError as error:
            failure = str(error)
    if value is None or math.isnan(value):
        failure = failure or f"{metric} is NaN"
        trial.set_user_attr(FAILURE_ATTRIBUTE, failure)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "FAILED")
        message = f"trial {trial.number} ({shown}) FAILED after {outcome.seconds:.0f} s: {failure}"
    else:
        study.tell(trial, value)
        mlflow.log_metric("trial_objective", value, step=trial.number)
        message = f"trial {trial.number} ({shown}): {metric} {value:.4f} in {outcome.seconds:.0f} s"
    with print_lock:
        print(message, flush=True)
