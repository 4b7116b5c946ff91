"""Hyperparameter sweeps on Optuna's own machinery: a parent run with one child run per trial.

The search-space language (lists, ranges, fixed values) is `search_space`; the study that
every worker shares (its database, the sweep run, the grid queue, dead workers' trials) is
`sweep_study`. Every trial is an Optuna trial and a nested MLflow child run of the sweep
run. `Study.optimize` runs the trials, `workers` at once (its `n_jobs`): the objective,
`TrialRunner`, creates the child run, runs the train stage on it in a process of its own
(`mlpipe_vision.trial`) and returns the metric that run logged, so a trial that crashes is
marked failed and the sweep goes on. The worker resolves `data` once (a remote artifact is
downloaded once) and every trial reads that copy; their runs record the URI given. A killed
sweep started again with the same arguments finds its study and runs only what is left.

What Optuna's machinery changed (measured in the README's sweep section):
- The TPE budget is checked after each trial (`stop_at_budget`), so with several workers a
  sweep may run up to workers-1 trials more than n_trials; before, the later of two workers
  taking the last place gave its trial up.
- A dead worker's trial is noticed once its heartbeat is older than the grace period
  (MLPIPE_SWEEP_GRACE_SECONDS, default 60 s), on this machine too; before, a dead process
  on this machine was noticed at once by its process ID.
"""

import json
import math
import signal
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import mlflow
import numpy as np
import optuna
from mlflow.entities import Param
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_USER

from mlpipe_vision import artifacts, console, lineage, sweep_study
from mlpipe_vision.search_space import (
    SearchSpace,
    check_fixed_values,
    default_study_name,
    parse_search_space,
    resolve_direction,
    resolve_sampler,
)
from mlpipe_vision.trial import (
    TRIAL_LOG,
    TrialOutcome,
    last_error_line,
    run_trial_process,
    trial_objective,
)


class TrialFailedError(Exception):
    """A trial that failed by itself (its process or its metric); Optuna marks it FAIL."""


# ------------------------------------------------------------------------ the trials


@dataclass
class TrialRunner:
    """The objective `Study.optimize` calls for each trial of this worker, in `workers` threads.

    It runs one trial as a train run nested under the sweep run and returns its metric, or
    raises `TrialFailedError` (Optuna marks the trial FAIL and goes on).
    """

    study: optuna.Study
    space: SearchSpace
    settings: dict[str, str]  # see check_settings
    data: str  # the URI the user gave, which every trial's run records
    data_dir: Path  # where this worker has it on disk, which every trial reads
    workers: int
    parent: mlflow.entities.RunInfo  # the sweep run
    log_dir: Path  # the trials' train.log, until they are logged
    own_run_id: str = field(default_factory=lambda: mlflow.active_run().info.run_id)
    client: mlflow.MlflowClient = field(default_factory=mlflow.MlflowClient)
    print_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def grid(self) -> bool:
        """Whether this is a grid sweep, whose workers run only queued points."""
        return self.settings["sampler"] == "grid"

    def __call__(self, trial: optuna.Trial) -> float:
        """Run one trial: child run, train process, objective."""
        if self.grid and sweep_study.GRID_POINT_ATTRIBUTE not in trial.user_attrs:
            # Optuna made a new trial: another worker took the last queued point meanwhile.
            trial.set_user_attr(
                sweep_study.FAILURE_ATTRIBUTE, "not run: another worker took the last place"
            )
            self.study.stop()
            raise optuna.TrialPruned()
        params = self.space.suggest(trial)
        trial.set_user_attr(sweep_study.WORKER_ATTRIBUTE, sweep_study.this_worker())
        trial.set_user_attr(sweep_study.WORKER_RUN_ATTRIBUTE, self.own_run_id)
        arguments = {"data": self.data, **self.space.fixed, **params}
        run_id = self.start_child_run(trial.number, params, arguments)
        trial.set_user_attr(sweep_study.RUN_ID_ATTRIBUTE, run_id)
        log_path = self.log_dir / f"trial-{trial.number}" / TRIAL_LOG
        log_path.parent.mkdir()
        local = {**arguments, "data": str(self.data_dir)}
        try:
            outcome = run_trial_process(
                local, run_id, f"trial {trial.number}", self.workers, log_path, self.print_lock
            )
        except KeyboardInterrupt:
            outcome = None
        if outcome is None or outcome.returncode == -signal.SIGINT:
            self.requeue_interrupted(trial, run_id)
            raise KeyboardInterrupt
        return self.finish(trial, run_id, outcome)

    def start_child_run(self, number: int, params: dict, arguments: dict) -> str:
        """Create a trial's nested train run, named for its parameters, with them logged.

        The parameters are logged here, as `mlflow run` does for a stage, so they are on
        the run even when the trial fails before training logs the rest. The run shares the
        sweep run's source and git commit, as `mlflow run` records them, and this worker's
        user.

        Returns:
            The run ID, for the trial process to continue.
        """
        name = f"trial {number}: {format_params(params)}"
        tags = {
            key: value
            for key, value in self.client.get_run(self.parent.run_id).data.tags.items()
            if key.startswith("mlflow.source.")
        }
        own_tags = self.client.get_run(self.own_run_id).data.tags
        run = self.client.create_run(
            self.parent.experiment_id,
            run_name=name,
            tags={
                **tags,
                MLFLOW_USER: own_tags.get(MLFLOW_USER, ""),
                MLFLOW_PARENT_RUN_ID: self.parent.run_id,
                MLFLOW_RUN_NAME: name,
                artifacts.TRIAL_NUMBER_TAG: str(number),
                artifacts.STAGE_TAG: "train",
                artifacts.INPUT_URI_TAG: arguments["data"],
            },
        )
        parameters = [Param(key, str(value)) for key, value in arguments.items()]
        self.client.log_batch(run.info.run_id, params=parameters)
        return run.info.run_id

    def finish(self, trial: optuna.Trial, run_id: str, outcome: TrialOutcome) -> float:
        """Log the trial's train.log, print one line about it and return its objective.

        Raises:
            TrialFailedError: If the process failed or its run has no usable `metric`.
        """
        metric = self.settings["metric"]
        self.client.log_artifact(run_id, str(outcome.log_path))
        shown = format_params(trial.params)
        value, failure = None, None
        if outcome.returncode != 0:
            failure = f"exit code {outcome.returncode}: {last_error_line(outcome.log_path)}"
        else:
            try:
                value = trial_objective(self.client, run_id, metric)
            except ValueError as error:
                failure = str(error)
        if value is None or math.isnan(value):
            failure = failure or f"{metric} is NaN"
            trial.set_user_attr(sweep_study.FAILURE_ATTRIBUTE, failure)
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_terminated(run_id, "FAILED")
            seconds = f"{outcome.seconds:.0f} s"
            self.print(f"trial {trial.number} ({shown}) FAILED after {seconds}: {failure}")
            raise TrialFailedError(failure)
        self.client.log_metric(self.own_run_id, "trial_objective", value, step=trial.number)
        self.print(
            f"trial {trial.number} ({shown}): {metric} {value:.4f} in {outcome.seconds:.0f} s"
        )
        return value

    def requeue_interrupted(self, trial: optuna.Trial, run_id: str) -> None:
        """Queue a trial stopped by Ctrl-C again, so the same command resumes it.

        Optuna fails a trial whose objective was interrupted; its heartbeat would not
        requeue it, because its worker lived to say so.
        """
        user_attrs = {sweep_study.GRID_POINT_ATTRIBUTE: True} if self.grid else None
        self.study.enqueue_trial(trial.params, user_attrs=user_attrs)
        if self.client.get_run(run_id).info.status == "RUNNING":
            self.client.set_terminated(run_id, "KILLED")
        self.print(f"trial {trial.number} interrupted: queued again")

    def print(self, message: str) -> None:
        """Print one line, not inside another trial's line."""
        with self.print_lock:
            print(message, flush=True)


def stop_when_grid_done(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna callback: stop this worker once no grid point is left in the queue.

    Dead workers' trials whose grace period is over are queued again first.
    """
    sweep_study.requeue_dead_trials(study)
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        study.stop()


def stop_at_budget(n_trials: int) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Optuna callback: stop this worker once every worker's trials used up n_trials.

    Like Optuna's `MaxTrialsCallback`, but it counts what `counts_as_done` counts: a trial
    whose worker died is FAIL like one that failed by itself, yet runs again, so counting
    by state would count it twice.
    """

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if sum(map(sweep_study.counts_as_done, study.get_trials(deepcopy=False))) >= n_trials:
            study.stop()

    return callback


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    sampler: str,
    n_trials: int,
    workers: int,
) -> None:
    """Run trials with `Study.optimize`, `workers` at once, until the sweep's budget is used.

    Grid: the queued points (every worker's, dead workers' requeued ones included). TPE:
    n_trials in total over every worker, finished trials of a resumed study included; this
    worker runs at most what is left when it starts.
    """
    if sampler == "grid":
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        left, budget, callback = len(waiting), None, stop_when_grid_done
    else:
        left = n_trials - sum(map(sweep_study.counts_as_done, study.get_trials(deepcopy=False)))
        budget, callback = left, stop_at_budget(n_trials)
    if left <= 0:
        return  # Study.optimize would start one trial before a callback could stop it
    study.optimize(
        objective, n_trials=budget, n_jobs=workers, catch=(TrialFailedError,), callbacks=[callback]
    )


# ---------------------------------------------------------------------- the summary


def plot_objective(
    study: optuna.Study, space: SearchSpace, metric: str
) -> "matplotlib.figure.Figure":
    """Optuna's slice plot: the metric of every completed trial against each swept parameter."""
    matplotlib.use("Agg")  # no display on servers
    axes = optuna.visualization.matplotlib.plot_slice(
        study, params=[dimension.name for dimension in space.dimensions], target_name=metric
    )
    figure = np.ravel(axes)[0].figure
    figure.set_size_inches(4.5 * len(space.dimensions), 3.8)
    figure.tight_layout()
    return figure


def format_value(value: object) -> str:
    """Short text for a parameter value in messages."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_params(params: dict[str, object]) -> str:
    """A trial's parameters as "conv_filters=16, learning_rate=0.003"."""
    return ", ".join(f"{name}={format_value(value)}" for name, value in params.items())


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
    best_run_id = best.user_attrs[sweep_study.RUN_ID_ATTRIBUTE]
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
    figure = plot_objective(study, space, metric)
    with tempfile.TemporaryDirectory() as tmp:
        table_path = Path(tmp) / "trials.csv"
        table.to_csv(table_path, index=False)
        client.log_artifact(parent_run_id, str(table_path))
        client.log_figure(parent_run_id, figure, "plots/objective_by_parameter.png")
    matplotlib.pyplot.close(figure)
    return best


# ------------------------------------------------------------------------- the stage


def check_settings(
    data: str,
    search_space: dict[str, str],
    n_trials: int,
    workers: int,
    metric: str,
    direction: str,
    sampler: str,
    study_name: str,
    study_storage: str,
) -> tuple[SearchSpace, dict[str, str]]:
    """Parse the space and resolve run_sweep's "auto" and "" settings, before anything runs.

    Returns:
        The space, and the sampler, direction, metric, study_name and study_storage.

    Raises:
        ValueError: For a bad search space or settings.
    """
    space = parse_search_space(search_space)
    check_fixed_values(space)
    sampler = resolve_sampler(sampler, space)
    direction = resolve_direction(direction, metric)
    if sampler == "tpe" and n_trials < 1:
        raise ValueError(f"the TPE sampler needs n_trials of at least 1, got {n_trials}")
    if n_trials < 0 or workers < 1:
        raise ValueError(f"n_trials must be >= 0 and workers >= 1, got {n_trials}, {workers}")
    study_name = study_name or default_study_name(data, search_space, sampler, metric, direction)
    study_storage = study_storage or sweep_study.default_study_storage(study_name)
    sweep_study.check_no_password(study_storage)
    return space, {
        "sampler": sampler,
        "direction": direction,
        "metric": metric,
        "study_name": study_name,
        "study_storage": study_storage,
    }


def join_sweep(
    study: optuna.Study,
    space: SearchSpace,
    settings: dict[str, str],
    n_trials: int,
    created: bool,
) -> str:
    """Make this worker's run part of the sweep (`created`: of the study it made).

    It requeues dead workers' trials, queues the grid, finds the sweep run, says where the
    study stands and tags this run with the resolved `settings` (see `check_settings`).

    Returns:
        The sweep run's ID: this run's, or the run of the worker that created the study.
    """
    own_run_id = mlflow.active_run().info.run_id
    grid = settings["sampler"] == "grid"
    recovered = sweep_study.requeue_dead_trials(study)
    if grid and created:
        sweep_study.queue_grid(study, space, n_trials)
    parent_run_id = sweep_study.sweep_parent(study, own_run_id, created)
    if grid and not created:
        sweep_study.queue_grid(study, space, n_trials)  # a later sweep may extend the grid
    finished_before = sum(
        sweep_study.counts_as_done(trial) for trial in study.get_trials(deepcopy=False)
    )
    role = "this run" if parent_run_id == own_run_id else f"run {parent_run_id}"
    print(
        f"study {settings['study_name']} ({settings['sampler']}, {settings['direction']} "
        f"{settings['metric']}) in {settings['study_storage']}: {finished_before} trial(s) "
        f"finished before, {recovered} requeued from dead workers; sweep run: {role}"
    )
    if parent_run_id != own_run_id:
        # A joining worker's own run shows under the sweep, beside the trials.
        mlflow.set_tags(
            {MLFLOW_PARENT_RUN_ID: parent_run_id, artifacts.SWEEP_WORKER_TAG: parent_run_id}
        )
    # `mlflow run` logged the parameters as given ("auto", ""); these are what they became.
    mlflow.set_tags(
        {
            artifacts.SAMPLER_TAG: settings["sampler"],
            artifacts.DIRECTION_TAG: settings["direction"],
            artifacts.STUDY_NAME_TAG: settings["study_name"],
            artifacts.STUDY_STORAGE_TAG: settings["study_storage"],
        }
    )
    lineage.log_new_params(
        {
            "fixed_parameters": json.dumps(space.fixed, sort_keys=True),
            "swept_parameters": ",".join(d.name for d in space.dimensions),
        }
    )
    return parent_run_id


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
        data: URI of a preprocess run's `preprocessed/` artifact, read by every trial.
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
    space, settings = check_settings(
        data, search_space, n_trials, workers, metric, direction, sampler, study_name, study_storage
    )
    console.quiet_optuna()
    # A URI without preprocessed data fails here, before the study is opened. A remote one
    # is downloaded once, and every trial of this worker reads that copy.
    with artifacts.open_preprocessed(data, "train_batch") as (data_dir, meta):
        study, created = sweep_study.open_study(
            settings["study_name"], settings["study_storage"], settings["direction"]
        )
        swept = ", ".join(dimension.name for dimension in space.dimensions)
        name = f"{'sweep' if created else 'sweep worker'} {meta.get('dataset', '')}: {swept}"
        with lineage.start_stage_run("train_batch", input_uri=data, name=name) as own_run:
            client = mlflow.MlflowClient()
            parent_run_id = join_sweep(study, space, settings, n_trials, created)
            parent = client.get_run(parent_run_id).info
            with tempfile.TemporaryDirectory() as logs:
                runner = TrialRunner(
                    study, space, settings, data, data_dir, workers, parent, Path(logs)
                )
                run_trials(study, runner, settings["sampler"], n_trials, workers)
            best = log_summary(study, space, metric, parent_run_id, client)
            if parent_run_id != own_run.info.run_id:
                sweep_study.close_orphaned_parent(study, parent_run_id, client)
    return print_result(best, metric, parent_run_id)


def print_result(best: optuna.trial.FrozenTrial, metric: str, parent_run_id: str) -> str:
    """Print the sweep's best trial, its run and model and the next command.

    Returns:
        The best trial's model URI.
    """
    best_run_id = best.user_attrs[sweep_study.RUN_ID_ATTRIBUTE]
    best_model_uri = artifacts.artifact_uri(best_run_id, artifacts.MODEL)
    shown = format_params(best.params)
    print(f"\nbest trial {best.number} of the study: {metric} {best.value:.4f} with {shown}")
    print(f"best run ID: {best_run_id}")
    print(f"sweep run ID: {parent_run_id} (tagged {artifacts.BEST_RUN_TAG}={best_run_id})")
    print(f"best model URI: {best_model_uri}")
    lineage.print_next("package", model=best_model_uri)
    return best_model_uri
