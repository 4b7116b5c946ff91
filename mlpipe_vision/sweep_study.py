"""The study every worker of a sweep shares: its database, its sweep run, its grid, its dead.

A sweep's workers (threads of one process, processes of one machine, or machines) share
nothing but an Optuna study in a database: a sqlite file by default, PostgreSQL for
several machines. This module opens it with clear errors for a bad URL, makes the run of the
worker that created the study the sweep run the others nest under, queues the grid once,
and hands the trials of dead workers back to the queue: Optuna's heartbeat thread beats
beside every running trial, and `fail_stale_trials` (which `Study.optimize` runs before
every trial) fails a trial whose heartbeat is older than the grace period and calls
`RequeueDeadTrial` for it.
"""

import os
import socket
import threading
import time
import urllib.parse
from pathlib import Path

import mlflow
import optuna
import sqlalchemy.exc

from mlpipe_vision.search_space import SearchSpace

RUN_ID_ATTRIBUTE = "mlflow_run_id"
FAILURE_ATTRIBUTE = "failure"
WORKER_ATTRIBUTE = "worker"
PARENT_RUN_ATTRIBUTE = "mlflow_parent_run_id"
WORKER_RUN_ATTRIBUTE = "worker_run_id"
# Marks the trials queued as grid points, so that a grid worker does not run a trial Optuna
# made because another worker took the last point meanwhile.
GRID_POINT_ATTRIBUTE = "grid_point"
# A trial without a heartbeat for GRACE_SECONDS is taken as dead (its machine crashed or
# was killed) and queued again; workers beat six times per grace period.
GRACE_SECONDS = int(os.environ.get("MLPIPE_SWEEP_GRACE_SECONDS", "60"))
HEARTBEAT_SECONDS = max(1, GRACE_SECONDS // 6)
PARENT_WAIT_SECONDS = 120


def default_study_storage(study_name: str) -> str:
    """A sqlite file in the working directory, named after the study."""
    return f"sqlite:///{Path.cwd() / f'optuna-{study_name}.db'}"


def counts_as_done(trial: optuna.trial.FrozenTrial) -> bool:
    """Finished trials a resumed sweep must not repeat: completed, or failed by itself.

    A trial whose worker died is failed without a failure message and queued again.
    """
    if trial.state == optuna.trial.TrialState.COMPLETE:
        return True
    return trial.state == optuna.trial.TrialState.FAIL and FAILURE_ATTRIBUTE in trial.user_attrs


def this_worker() -> str:
    """How trials name the process that runs them: host and process ID."""
    return f"{socket.gethostname()}:{os.getpid()}"


def kill_trial_runs(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Mark a lost trial's MLflow runs KILLED: its own, and its worker's.

    Not the sweep run, though, which the last worker to finish closes.
    """
    client = mlflow.MlflowClient()
    parent_run_id = study.user_attrs.get(PARENT_RUN_ATTRIBUTE)
    for name in (RUN_ID_ATTRIBUTE, WORKER_RUN_ATTRIBUTE):
        run_id = trial.user_attrs.get(name)
        if run_id and run_id != parent_run_id and client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "KILLED")


class RequeueDeadTrial(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a trial whose heartbeat stopped, which also marks its runs KILLED.

    `fail_stale_trials` calls it in exactly one of the processes that notice. The queued
    copy keeps the trial's parameters and user attributes (a grid point stays one).
    """

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Queue the dead trial again, kill its runs and say so."""
        super().__call__(study, trial)
        kill_trial_runs(study, trial)
        print(
            f"trial {trial.number} lost its worker {trial.user_attrs.get(WORKER_ATTRIBUTE, '?')}: "
            "queued again",
            flush=True,
        )


def requeue_dead_trials(study: optuna.Study) -> int:
    """Fail and requeue the trials whose heartbeat is older than the grace period.

    Returns:
        How many were queued again.
    """
    waiting = (optuna.trial.TrialState.WAITING,)
    before = len(study.get_trials(deepcopy=False, states=waiting))
    optuna.storages.fail_stale_trials(study)  # calls RequeueDeadTrial for each
    return max(0, len(study.get_trials(deepcopy=False, states=waiting)) - before)


def queue_grid(study: optuna.Study, space: SearchSpace, n_trials: int) -> None:
    """Queue the grid's points that no trial has yet (only the first n_trials when > 0).

    Done by the process that created the study, before other workers may join, and by a
    later sweep that extends the grid.
    """
    points = space.grid()
    for point in points[:n_trials] if n_trials > 0 else points:
        study.enqueue_trial(point, user_attrs={GRID_POINT_ATTRIBUTE: True}, skip_if_exists=True)


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


class SweepStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage, on which this process's threads change trial states one at a time.

    A thread claims a queued trial by reading it WAITING and writing it RUNNING. SQLite
    ignores the row lock Optuna asks for (SELECT ... FOR UPDATE), so two `n_jobs` threads
    asking at once could both claim the same grid point (they did, in a 2-worker grid sweep
    here); PostgreSQL locks the row. Worker processes sharing one sqlite file can still
    race so, as they could before: give them PostgreSQL.
    """

    state_lock = threading.Lock()

    def set_trial_state_values(
        self, trial_id: int, state: optuna.trial.TrialState, values: list[float] | None = None
    ) -> bool:
        """Optuna's, holding this process's lock."""
        with self.state_lock:
            return super().set_trial_state_values(trial_id, state, values)


def open_storage(url: str) -> SweepStorage:
    """The study's database, with heartbeats so that a dead worker's trial is run again.

    Raises:
        ValueError: If the database cannot be reached or logged into, or holds another
            program's tables (MLflow's, say).
    """
    try:
        return SweepStorage(
            url,
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=RequeueDeadTrial(),
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
