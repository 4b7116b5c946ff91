"""Whether a stage's run is still alive: closing dead ones, and stopping when the user did.

A run is alive while the process it hangs on runs: the `mlflow run` command that started the
stage (or the stage's own process, run without it). Every stage records that process on its
run (`mlpipe.host`, `mlpipe.pid`, `mlpipe.process_started`) and beats a heartbeat
(`mlpipe.heartbeat`, every HEARTBEAT_SECONDS), as the sweep's workers do in Optuna's study.

- The next stage or `main` on a store closes what a dead attempt left RUNNING
  (`close_dead_runs`): a run of this machine whose process is gone, a run of another machine
  whose heartbeat stopped STALE_SECONDS ago, and a run that never reached a stage (MLflow
  failed before starting it, say) after UNSTARTED_SECONDS. It marks them KILLED, with
  `mlpipe.closed_because` saying why. A live run, here or elsewhere, is never touched.
- A stage stops when the `mlflow run` that started it is gone (`Watch`): killing the
  command, by any signal, ends the work, and nothing is registered after it (`stop_if_stopped`).
"""

import contextlib
import os
import signal
import socket
import threading
import time

import mlflow
import psutil
from mlflow.exceptions import MlflowException

from mlpipe_vision import artifacts

HEARTBEAT_SECONDS = 30
# A run of another machine is taken as dead when its heartbeat is this old.
STALE_SECONDS = int(os.environ.get("MLPIPE_STALE_SECONDS", str(10 * HEARTBEAT_SECONDS)))
# `mlflow run` logs the entry point's parameters right after it creates the run; a run
# without them this long after it was created is one MLflow refused to start (a bad -P).
FAILED_START_SECONDS = int(os.environ.get("MLPIPE_FAILED_START_SECONDS", "30"))
# A run with parameters that no stage has claimed this long after it was created: its
# `mlflow run` died while building the environment (uv or virtualenv may take minutes).
UNSTARTED_SECONDS = int(os.environ.get("MLPIPE_UNSTARTED_SECONDS", "3600"))
WATCH_SECONDS = 1.0


class StoppedError(KeyboardInterrupt):
    """The user stopped the command (Ctrl-C, a signal, or the `mlflow run` is gone)."""


def this_host() -> str:
    """This machine, and its process namespace: a container's PIDs are not the host's."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}/{namespace}"


def anchor_process() -> psutil.Process:
    """The process this stage's run hangs on: the nearest `mlflow run` above it, else itself."""
    own = psutil.Process()
    for parent in own.parents():
        with contextlib.suppress(psutil.Error):
            command = parent.cmdline()
            if "mlflow" in " ".join(command[:3]) and "run" in command:
                return parent
    return own


def process_tags(process: psutil.Process) -> dict[str, str]:
    """The tags that tell later commands whether this run is still alive."""
    return {
        artifacts.HOST_TAG: this_host(),
        artifacts.PID_TAG: str(process.pid),
        artifacts.PROCESS_STARTED_TAG: f"{process.create_time():.2f}",
        artifacts.HEARTBEAT_TAG: f"{time.time():.0f}",
    }


def process_alive(pid: int, started: float) -> bool:
    """Whether the process that ran is still running (not another one with its PID)."""
    try:
        return abs(psutil.Process(pid).create_time() - started) < 1.0
    except psutil.Error:
        return False


def why_dead(run: mlflow.entities.Run, now: float) -> str | None:
    """Why a RUNNING run is dead, or None while it may be alive."""
    tags = run.data.tags
    if artifacts.HOST_TAG not in tags:
        age = now - run.info.start_time / 1000
        if not run.data.params and age > FAILED_START_SECONDS:
            return "mlflow run refused its parameters before starting it"
        if age > UNSTARTED_SECONDS:
            return f"no stage started in it in {age:.0f} s (its mlflow run died while starting)"
        return None
    if tags[artifacts.HOST_TAG] == this_host():
        pid, started = int(tags[artifacts.PID_TAG]), float(tags[artifacts.PROCESS_STARTED_TAG])
        if not process_alive(pid, started):
            return f"its process {pid} on this machine is gone"
        return None
    silent = now - float(tags.get(artifacts.HEARTBEAT_TAG, 0))
    if silent > STALE_SECONDS:
        return f"its heartbeat from {tags[artifacts.HOST_TAG]} stopped {silent:.0f} s ago"
    return None


def close_dead_runs(experiment_id: str, alive: set[str]) -> list[str]:
    """Mark the RUNNING runs of an experiment KILLED whose process is gone (see `why_dead`).

    Args:
        experiment_id: The experiment to look in.
        alive: Run IDs known alive (this command's own run and its parents).

    Returns:
        The IDs of the runs closed.
    """
    client = mlflow.MlflowClient()
    running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
    closed = []
    now = time.time()
    for run in running:
        reason = None if run.info.run_id in alive else why_dead(run, now)
        if reason:
            client.set_tag(run.info.run_id, artifacts.CLOSED_BECAUSE_TAG, reason)
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
    if closed:
        print(f"closed {len(closed)} run(s) a killed command left RUNNING: marked KILLED")
    return closed


class Watch:
    """Beat the run's heartbeat, and stop this stage when its `mlflow run` is gone."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.anchor = anchor_process()
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        """Record the process on the run and start watching."""
        client = mlflow.MlflowClient()
        for name, value in process_tags(self.anchor).items():
            client.set_tag(self.run_id, name, value)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (the stage ended)."""
        self._stop.set()

    def _watch(self) -> None:
        last_beat = time.monotonic()
        while not self._stop.wait(WATCH_SECONDS):
            if not running(self.anchor):
                self.reason = f"the command that started it (process {self.anchor.pid}) is gone"
                # SIGTERM, not interrupt_main(): a command started in the background ignores
                # SIGINT. `raise_on_sigterm` turns it into StoppedError in the main thread.
                os.kill(os.getpid(), signal.SIGTERM)
                return
            if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                last_beat = time.monotonic()
                with contextlib.suppress(MlflowException, OSError):
                    client = mlflow.MlflowClient()
                    client.set_tag(self.run_id, artifacts.HEARTBEAT_TAG, f"{time.time():.0f}")


_watches: dict[str, Watch] = {}


def watch(run_id: str) -> None:
    """Start watching a run (once per run and process)."""
    if run_id not in _watches:
        _watches[run_id] = Watch(run_id)
        _watches[run_id].start()


def running(process: psutil.Process) -> bool:
    """Whether a process still runs: not ended, not a zombie no one has reaped yet."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def watched_run() -> str | None:
    """The run this process watches (its stage's), if any."""
    return next(iter(_watches), None)


def stopped_reason() -> str | None:
    """Why the user's command stopped, if a watch saw it go; None otherwise."""
    for current in _watches.values():
        if current.reason or not running(current.anchor):
            return current.reason or f"the command (process {current.anchor.pid}) is gone"
    return None


def stop_if_stopped() -> None:
    """Raise StoppedError if the command that started this stage is gone.

    Called before what must not happen after the user stopped the command (registering a
    model, moving an alias): the watch notices within WATCH_SECONDS, this at once.
    """
    reason = stopped_reason()
    if reason:
        raise StoppedError(reason)


def raise_on_sigterm() -> None:
    """Turn SIGTERM into StoppedError, a KeyboardInterrupt, and note a Ctrl-C when one comes.

    `mlflow run` sends SIGTERM to a stage it cancels; so the stage cleans up and its run is
    closed as when the user presses Ctrl-C. On Ctrl-C the terminal interrupts every process
    of the command at once, and `mlflow run` cancels its stage with SIGTERM meanwhile: the
    note says what the user did.
    """

    def on_sigterm(signum: int, frame: object) -> None:
        raise StoppedError(
            "Ctrl-C"
            if ctrl_c.is_set()
            else stopped_reason() or f"signal {signal.Signals(signum).name}"
        )

    def on_sigint(signum: int, frame: object) -> None:
        ctrl_c.set()
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        signal.signal(signal.SIGTERM, on_sigterm)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, on_sigint)


ctrl_c = threading.Event()
