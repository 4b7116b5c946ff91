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
import itertools
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import optuna  # noqa: E402
import sqlalchemy.exc  # noqa: E402
from mlflow.entities import Param  # noqa: E402
from mlflow.utils.mlflow_tags import (  # noqa: E402
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_RUN_NAME,
    MLFLOW_USER,
)

from mlpipe_vision import artifacts, console, lineage, train_parameters  # noqa: E402
from mlpipe_vision.cli import str_to_bool  # noqa: E402

console.quiet_optuna()

SAMPLERS = ("auto", "grid", "tpe")
DIRECTIONS = ("auto", "maximize", "minimize")
RUN_ID_ATTRIBUTE = "mlflow_run_id"
FAILURE_ATTRIBUTE = "failure"
WORKER_ATTRIBUTE = "worker"
PARENT_RUN_ATTRIBUTE = "mlflow_parent_run_id"
WORKER_RUN_ATTRIBUTE = "worker_run_id"
# A trial without a heartbeat for GRACE_SECONDS is taken as dead (its machine crashed or
# was killed) and queued again; workers beat six times per grace period.
GRACE_SECONDS = int(os.environ.get("MLPIPE_SWEEP_GRACE_SECONDS", "60"))
HEARTBEAT_SECONDS = max(1, GRACE_SECONDS // 6)
PARENT_WAIT_SECONDS = 120
TRIAL_LOG = "train.log"
# What the trial process runs: the train stage's function, with the trial's parameters.
TRIAL_PROGRAM = (
    "import json, sys\n"
    "from mlpipe_vision import cli, training, train_parameters\n"
    "arguments = json.loads(sys.argv[1])\n"
    "data = arguments.pop('data')\n"
    "parameters = train_parameters.TrainParameters(**arguments)\n"
    "cli.run_or_exit(training.run_train, data=data, parameters=parameters)\n"
)
# Lines kept in each trial's train.log but not echoed to the console: TensorFlow's C++
# info and warnings (absl format, "I0000 00:00:..."), some printed before its log level
# applies, and the rows of the model summary table.
# Each worker records its own trials' heartbeats (Optuna does so only inside
# Study.optimize, which cannot run trials as processes on MLflow runs) and calls
# fail_stale_trials itself; Optuna warns about both uses.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
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
    """The train stage's parameters and their types, from the schema."""
    return train_parameters.types()


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
            f"{name}: {text!r} is not a valid {kind.__name__} ({console.first_line(error)})"
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

    A trial whose worker died is failed without a failure message and queued again.
    """
    if trial.state == optuna.trial.TrialState.COMPLETE:
        return True
    return trial.state == optuna.trial.TrialState.FAIL and FAILURE_ATTRIBUTE in trial.user_attrs


def counts_against_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """Trials that use up n_trials: done, running, or queued to run again."""
    return counts_as_done(trial) or trial.state in (
        optuna.trial.TrialState.RUNNING,
        optuna.trial.TrialState.WAITING,
    )


def this_worker() -> str:
    """How trials name the process that runs them: host and process ID."""
    return f"{socket.gethostname()}:{os.getpid()}"


def requeue_dead_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a trial whose worker died (already FAIL) again and mark its MLflow run KILLED.

    Optuna calls this for a trial whose heartbeat stopped (`optuna.storages.fail_stale_trials`,
    in exactly one of the processes that notice); `recover_dead_local_trials` for one whose
    process on this host is gone.
    """
    study.enqueue_trial(trial.params)
    client = mlflow.MlflowClient()
    # The trial's run, and the dead worker's own run unless it is the sweep's parent run,
    # which the last worker to finish closes.
    parent_run_id = study.user_attrs.get(PARENT_RUN_ATTRIBUTE)
    for name in (RUN_ID_ATTRIBUTE, WORKER_RUN_ATTRIBUTE):
        run_id = trial.user_attrs.get(name)
        if run_id and run_id != parent_run_id and client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "KILLED")
    print(
        f"trial {trial.number} lost its worker {trial.user_attrs.get(WORKER_ATTRIBUTE, '?')}: "
        "queued again",
        flush=True,
    )


def recover_dead_local_trials(study: optuna.Study) -> int:
    """Fail and requeue the running trials of this host whose process has ended.

    Another host's trials are left to the heartbeat: their process cannot be checked from
    here. Returns how many were recovered.
    """
    host = socket.gethostname()
    recovered = 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER_ATTRIBUTE, "")
        worker_host, _, pid = worker.rpartition(":")
        if worker_host != host or not pid.isdigit() or process_alive(int(pid)):
            continue
        try:
            failed = study._storage.set_trial_state_values(
                trial._trial_id, state=optuna.trial.TrialState.FAIL
            )
        except optuna.exceptions.UpdateFinishedTrialError:
            failed = False  # another process recovered it first
        if failed:
            requeue_dead_trial(study, trial)
            recovered += 1
    return recovered


def process_alive(pid: int) -> bool:
    """Whether a process of this host still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dead_trials(study: optuna.Study) -> int:
    """Requeue trials whose worker died: on this host at once, elsewhere by heartbeat."""
    recovered = recover_dead_local_trials(study)
    before = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
    optuna.storages.fail_stale_trials(study)  # calls requeue_dead_trial for each
    after = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
    return recovered + max(0, after - before)


def queue_grid(study: optuna.Study, space: SearchSpace, n_trials: int) -> None:
    """Queue the grid's points that no trial has yet (only the first n_trials when > 0).

    Done by the process that created the study, before other workers may join, and by a
    later sweep that extends the grid.
    """
    points = space.grid()
    for point in points[:n_trials] if n_trials > 0 else points:
        study.enqueue_trial(point, skip_if_exists=True)


def next_trial(
    study: optuna.Study, space: SearchSpace, sampler: str, n_trials: int
) -> optuna.Trial | None:
    """The next trial for this worker, or None when the sweep's budget is used up.

    Grid: only queued points are run. TPE: n_trials counts every worker's trials. Optuna
    numbers trials atomically, so when two workers ask for the last place at the same moment
    the one with the higher number sees it is over budget and gives its trial up (PRUNED,
    never trained).
    """
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    if sampler == "grid" and not waiting:
        return None
    if sampler == "tpe" and sum(map(counts_against_budget, study.get_trials(deepcopy=False))) >= (
        n_trials
    ):
        return None
    trial = study.ask(space.distributions())
    frozen = study._storage.get_trial(trial._trial_id)
    if sampler == "grid":
        over = "fixed_params" not in frozen.system_attrs  # the queue emptied meanwhile
    else:
        earlier = [t for t in study.get_trials(deepcopy=False) if t.number <= trial.number]
        over = sum(map(counts_against_budget, earlier)) > n_trials
    if over:
        trial.set_user_attr(FAILURE_ATTRIBUTE, "not run: another worker took the last place")
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return None
    trial.set_user_attr(WORKER_ATTRIBUTE, this_worker())
    return trial


def check_no_password(url: str) -> None:
    """Refuse a study URL with a password in it: `mlflow run` logs every -P value.

    Raises:
        ValueError: Naming where the password belongs instead.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.password:
        shown = url.replace(f":{parsed.password}@", ":***@")
        raise ValueError(
            f"study_storage {shown} contains a password, and mlflow run logs every -P value "
            "as a run parameter (delete this run to remove it). Drop it from the URL "
            "(postgresql+psycopg://user@host/db) and give it in PGPASSWORD or ~/.pgpass"
        )


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The study's database, with heartbeats so that a dead worker's trial is run again.

    Raises:
        ValueError: If the database cannot be reached or logged into, or holds another
            program's tables (MLflow's, say).
    """
    try:
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=requeue_dead_trial,
        )
    except sqlalchemy.exc.OperationalError as error:
        reason = str(error.orig or error).strip().splitlines()[0]
        raise ValueError(
            f"cannot open study_storage {url}: {reason}. Is the database running there, and "
            "is its password in PGPASSWORD or ~/.pgpass on this machine?"
        ) from None
    except RuntimeError as error:
        if "no longer compatible with the table schema" not in str(error):
            raise
        raise ValueError(
            f"study_storage {url} already holds another program's tables (MLflow's tracking "
            "database, say: both keep an alembic_version table). Put the study in a database "
            "of its own, such as .../optuna"
        ) from error


def open_study(name: str, storage: str, direction: str) -> tuple[optuna.Study, bool]:
    """Create the study, or load it to join or resume it.

    Returns:
        (the study, whether this process created it). Creating is atomic, so among workers
        started at once exactly one creates the study, queues the grid and makes the parent
        run; the others join.
    """
    rdb = open_storage(storage)
    try:
        # Seeded so that a fresh study is reproducible; joining workers sample unseeded so
        # that two of them do not propose the same TPE trials.
        study = optuna.create_study(
            study_name=name,
            storage=rdb,
            direction=direction,
            sampler=optuna.samplers.TPESampler(seed=0),
        )
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(
            study_name=name, storage=rdb, sampler=optuna.samplers.TPESampler()
        )
    if study.direction.name.lower() != direction:
        raise ValueError(
            f"study {name!r} in {storage} was made to {study.direction.name.lower()}; "
            f"pick another study_name to {direction}"
        )
    return study, False


def sweep_parent(study: optuna.Study, own_run_id: str, created: bool) -> str:
    """The MLflow run every worker's trials nest under: the study creator's run.

    The creator records its run in the study; a joining worker waits for that record.
    """
    if created:
        study.set_user_attr(PARENT_RUN_ATTRIBUTE, own_run_id)
        return own_run_id
    deadline = time.monotonic() + PARENT_WAIT_SECONDS
    while PARENT_RUN_ATTRIBUTE not in study.user_attrs:
        if time.monotonic() > deadline:
            raise ValueError(
                f"study {study.study_name!r} has no sweep run after {PARENT_WAIT_SECONDS} s: "
                "the worker that created it died while starting; use another study_name"
            )
        time.sleep(1)
    parent_run_id = study.user_attrs[PARENT_RUN_ATTRIBUTE]
    try:
        mlflow.MlflowClient().get_run(parent_run_id)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ValueError(
            f"study {study.study_name!r} belongs to sweep run {parent_run_id}, which is not on "
            f"the tracking server {mlflow.get_tracking_uri()}: every worker of a sweep needs "
            "the MLFLOW_TRACKING_URI of the worker that started it (or use another study_name)"
        ) from None
    return parent_run_id


def close_orphaned_parent(
    study: optuna.Study, parent_run_id: str, client: mlflow.MlflowClient
) -> None:
    """Mark the sweep run FINISHED once no trial is running or queued.

    The sweep run is the run of the worker that created the study; if that worker died, its
    run would otherwise stay RUNNING. A live creator ends its run itself as well.
    """
    left = study.get_trials(
        deepcopy=False,
        states=(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING),
    )
    if not left and client.get_run(parent_run_id).info.status == "RUNNING":
        client.set_terminated(parent_run_id, "FINISHED")


class Heartbeat:
    """Record a heartbeat for this worker's running trials every HEARTBEAT_SECONDS."""

    def __init__(self, study: optuna.Study) -> None:
        self._storage = study._storage
        self.trial_ids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def start(self, trial: optuna.Trial) -> None:
        """Beat for this trial from now on (the first beat at once)."""
        self._storage.record_heartbeat(trial._trial_id)
        self.trial_ids.add(trial._trial_id)

    def stop(self, trial: optuna.Trial) -> None:
        """Stop beating for a finished trial."""
        self.trial_ids.discard(trial._trial_id)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            for trial_id in list(self.trial_ids):
                self._storage.record_heartbeat(trial_id)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


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


def format_params(params: dict[str, object]) -> str:
    """A trial's parameters as "conv_filters=16, learning_rate=0.003"."""
    return ", ".join(f"{name}={format_value(value)}" for name, value in params.items())


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


def log_summary(
    study: optuna.Study,
    space: SearchSpace,
    metric: str,
    parent_run_id: str,
    client: mlflow.MlflowClient,
) -> optuna.trial.FrozenTrial:
    """Log the study's best trial so far, the trials table and the plot to the sweep run.

    Every worker does this when it ends, over every worker's trials, so the sweep run ends
    up with the best of all. The best parameters are tags (`mlpipe.best.<name>`), not
    parameters, because a later worker may find a better trial and MLflow parameters cannot
    change.

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
    client.log_metric(parent_run_id, f"best_{metric}", best.value)
    tags = {
        f"{artifacts.BEST_PARAMETER_TAG_PREFIX}{name}": str(value)
        for name, value in best.params.items()
    }
    tags |= {
        artifacts.BEST_RUN_TAG: best_run_id,
        artifacts.BEST_MODEL_TAG: artifacts.artifact_uri(best_run_id, artifacts.MODEL),
        artifacts.BEST_TRIAL_TAG: str(best.number),
    }
    for name, value in tags.items():
        client.set_tag(parent_run_id, name, value)
    table = study.trials_dataframe(attrs=("number", "value", "params", "state", "user_attrs"))
    figure = plot_objective(completed, space, metric, best.number)
    with tempfile.TemporaryDirectory() as tmp:
        table_path = Path(tmp) / "trials.csv"
        table.to_csv(table_path, index=False)
        client.log_artifact(parent_run_id, str(table_path))
        client.log_figure(parent_run_id, figure, "plots/objective_by_parameter.png")
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
    # A URI without preprocessed data fails here, before the study is opened.
    with artifacts.open_preprocessed(data) as (_, meta):
        dataset = meta.get("dataset", "")
    study_name = study_name or default_study_name(data, search_space, sampler, metric, direction)
    study_storage = study_storage or default_study_storage(study_name)
    check_no_password(study_storage)
    study, created = open_study(study_name, study_storage, direction)

    swept = ", ".join(dimension.name for dimension in space.dimensions)
    name = f"{'sweep' if created else 'sweep worker'} {dataset}: {swept}"
    with lineage.start_stage_run("train_batch", input_uri=data, name=name) as own_run:
        client = mlflow.MlflowClient()
        recovered = recover_dead_trials(study)
        if sampler == "grid" and created:
            queue_grid(study, space, n_trials)
        parent_run_id = sweep_parent(study, own_run.info.run_id, created)
        if sampler == "grid" and not created:
            queue_grid(study, space, n_trials)  # a later sweep may extend the grid
        finished_before = sum(counts_as_done(trial) for trial in study.get_trials(deepcopy=False))
        role = "this run" if parent_run_id == own_run.info.run_id else f"run {parent_run_id}"
        print(
            f"study {study_name} ({sampler}, {direction} {metric}) in {study_storage}: "
            f"{finished_before} trial(s) finished before, {recovered} requeued from dead "
            f"workers; sweep run: {role}"
        )
        if parent_run_id != own_run.info.run_id:
            # A joining worker's own run shows under the sweep, beside the trials.
            mlflow.set_tags(
                {MLFLOW_PARENT_RUN_ID: parent_run_id, artifacts.SWEEP_WORKER_TAG: parent_run_id}
            )
        # `mlflow run` logged the parameters as given ("auto", ""); these are what they became.
        mlflow.set_tags(
            {
                artifacts.SAMPLER_TAG: sampler,
                artifacts.DIRECTION_TAG: direction,
                artifacts.STUDY_NAME_TAG: study_name,
                artifacts.STUDY_STORAGE_TAG: study_storage,
            }
        )
        lineage.log_new_params(
            {
                "fixed_parameters": json.dumps(space.fixed, sort_keys=True),
                "swept_parameters": ",".join(d.name for d in space.dimensions),
            }
        )
        parent = client.get_run(parent_run_id).info
        run_trials(study, space, sampler, n_trials, data, workers, metric, parent, client)
        best = log_summary(study, space, metric, parent_run_id, client)
        if parent_run_id != own_run.info.run_id:
            close_orphaned_parent(study, parent_run_id, client)
    best_run_id = best.user_attrs[RUN_ID_ATTRIBUTE]
    best_model_uri = artifacts.artifact_uri(best_run_id, artifacts.MODEL)
    shown = format_params(best.params)
    print(f"\nbest trial {best.number} of the study: {metric} {best.value:.4f} with {shown}")
    print(f"best run ID: {best_run_id}")
    print(f"sweep run ID: {parent_run_id} (tagged {artifacts.BEST_RUN_TAG}={best_run_id})")
    print(f"best model URI: {best_model_uri}")
    lineage.print_next("package", model=best_model_uri)
    return best_model_uri


def start_child_run(
    client: mlflow.MlflowClient,
    parent: mlflow.entities.RunInfo,
    trial: optuna.Trial,
    arguments: dict,
    source_tags: dict[str, str],
) -> str:
    """Create a trial's nested train run, named for its parameters, with the parameters logged.

    The parameters are logged here, as `mlflow run` does for a stage, so they are on the
    run even when the trial fails before training logs the rest.

    Returns:
        The run ID, for the trial process to continue.
    """
    name = f"trial {trial.number}: {format_params(trial.params)}"
    run = client.create_run(
        parent.experiment_id,
        run_name=name,
        tags={
            **source_tags,
            MLFLOW_PARENT_RUN_ID: parent.run_id,
            MLFLOW_RUN_NAME: name,
            artifacts.TRIAL_NUMBER_TAG: str(trial.number),
            artifacts.STAGE_TAG: "train",
            artifacts.INPUT_URI_TAG: arguments["data"],
        },
    )
    parameters = [Param(name, str(value)) for name, value in arguments.items()]
    client.log_batch(run.info.run_id, params=parameters)
    return run.info.run_id


def run_trials(
    study: optuna.Study,
    space: SearchSpace,
    sampler: str,
    n_trials: int,
    data: str,
    workers: int,
    metric: str,
    parent: mlflow.entities.RunInfo,
    client: mlflow.MlflowClient,
) -> None:
    """Run trials, up to `workers` at once, until the sweep's budget is used up.

    Optuna is only called from this thread (and the heartbeat's); worker threads only wait
    for trial processes. Dead workers' trials are requeued before every new trial.
    """
    print_lock = threading.Lock()
    own_run_id = mlflow.active_run().info.run_id
    # Children share the parent's source and git commit, as `mlflow run` records them, and
    # this worker's user.
    source_tags = {
        name: value
        for name, value in client.get_run(parent.run_id).data.tags.items()
        if name.startswith("mlflow.source.")
    }
    source_tags[MLFLOW_USER] = client.get_run(own_run_id).data.tags.get(MLFLOW_USER, "")
    running: dict[Future, tuple[optuna.Trial, str]] = {}
    exhausted = False
    with (
        tempfile.TemporaryDirectory() as log_dir,
        ThreadPoolExecutor(workers) as pool,
        Heartbeat(study) as heartbeat,
    ):
        while not exhausted or running:
            while not exhausted and len(running) < workers:
                recover_dead_trials(study)
                trial = next_trial(study, space, sampler, n_trials)
                if trial is None:
                    exhausted = True
                    break
                heartbeat.start(trial)
                trial.set_user_attr(WORKER_RUN_ATTRIBUTE, own_run_id)
                arguments = {"data": data, **space.fixed, **trial.params}
                run_id = start_child_run(client, parent, trial, arguments, source_tags)
                trial.set_user_attr(RUN_ID_ATTRIBUTE, run_id)
                log_path = Path(log_dir) / f"trial-{trial.number}" / TRIAL_LOG
                log_path.parent.mkdir()
                label = f"trial {trial.number}"
                future = pool.submit(
                    run_trial_process, arguments, run_id, label, workers, log_path, print_lock
                )
                running[future] = (trial, run_id)
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                trial, run_id = running.pop(future)
                finish_trial(study, trial, run_id, future.result(), metric, client, print_lock)
                heartbeat.stop(trial)


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
    shown = format_params(trial.params)
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
