"""The stage scripts' command lines: argument types, and user errors as one clear line."""

import argparse
import contextlib
import os
import re
import signal
import sys
from collections.abc import Callable

import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from mlpipe_vision import artifacts, lineage, liveness
from mlpipe_vision.console import quiet_console


class StageFailedError(RuntimeError):
    """A stage of the `main` chain failed; the message names the stage and its error."""


class TrackingServerDownError(ValueError):
    """The tracking store cannot be reached or written (so no run can be tagged with the error)."""


# Where MLflow's docker_env backend mounts a local store (file or sqlite) inside the container
# (mlflow/projects/docker.py): the sqlite file alone, which the image's user cannot write.
DOCKER_ENV_LOCAL_STORE = "/mlflow/tmp/mlruns"


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line like every other error of a stage.

    argparse prints the whole usage before its error; `--help` still shows it.
    """

    def error(self, message: str) -> None:
        """Print `error: <script>: <message>` and exit 2, as argparse does."""
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def str_to_bool(value: str) -> bool:
    """Parse a command-line boolean the way MLproject parameters are written.

    Args:
        value: One of true/false, yes/no, 1/0 (any case).

    Returns:
        The boolean.

    Raises:
        argparse.ArgumentTypeError: For anything else, naming the value.
    """
    lowered = str(value).strip().lower()
    if lowered in {"true", "yes", "1"}:
        return True
    if lowered in {"false", "no", "0"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def optional_float(value: str) -> float | None:
    """Parse a float parameter where an empty string means "not given"."""
    if str(value).strip() == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or nothing, got {value!r}") from None


def optional_int(value: str) -> int | None:
    """Parse an integer parameter where an empty string or 0 means "not given"."""
    if str(value).strip() in {"", "0"}:
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None


def fraction(value: str) -> float:
    """Parse a fraction strictly between 0 and 1 (1 allowed), naming a bad value."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {value!r}") from None
    if not 0.0 < number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {value!r}")
    return number


def run_or_exit(stage: Callable[..., object], **arguments: object) -> None:
    """Call a stage and turn the errors a user can cause into one clear line and exit code 1.

    Any other exception keeps its traceback; so does every error with MLPIPE_DEBUG=1.

    Args:
        stage: The stage function.
        **arguments: Its arguments, as parsed from the command line.
    """
    quiet_console()
    liveness.raise_on_sigterm()
    try:
        check_tracking_server()
        watch_and_clean_up()
        stage(**arguments)
    except KeyboardInterrupt as error:
        report_stopped(error)
    except (ValueError, MlflowException, StageFailedError) as error:
        if os.environ.get("MLPIPE_DEBUG") == "1":
            raise
        message = error.message if isinstance(error, MlflowException) else str(error)
        if "error code 401" in message and not os.environ.get("MLFLOW_TRACKING_USERNAME"):
            message = (
                f"the tracking server {mlflow.get_tracking_uri()} wants a login: set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (a docker_env run "
                "passes them into its container with -A env-file=login.env)"
            )
        print(f"error: {message}", file=sys.stderr)
        if not isinstance(error, TrackingServerDownError):
            record_error(message)
        sys.exit(1)


def watch_and_clean_up() -> None:
    """Record and watch this stage's run; close what killed commands left RUNNING.

    Under `mlflow run` the run exists before the stage starts (MLFLOW_RUN_ID); run without
    it, the stage's run is watched once `lineage.start_stage_run` creates it.
    """
    run_id = os.environ.get("MLFLOW_RUN_ID")
    alive = set()
    if run_id:
        liveness.watch(run_id)
        client = MlflowClient()
        while run_id and run_id not in alive:  # this run and the runs it is nested in
            alive.add(run_id)
            run_id = client.get_run(run_id).data.tags.get(MLFLOW_PARENT_RUN_ID)
    liveness.close_dead_runs(os.environ.get("MLFLOW_EXPERIMENT_ID", "0"), alive)


def report_stopped(error: KeyboardInterrupt) -> None:
    """Ctrl-C, SIGTERM or the `mlflow run` gone: mark the run KILLED, say so in one line."""
    # `mlflow run` cancels its stage with SIGTERM as it gets the same Ctrl-C: let that not
    # interrupt this last step.
    for name in ("SIGINT", "SIGTERM"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    reason = str(error) if isinstance(error, liveness.StoppedError) else "Ctrl-C"
    run_id = liveness.watched_run()
    if run_id:
        with contextlib.suppress(MlflowException):
            MlflowClient().set_terminated(run_id, "KILLED")
    if not lineage.is_chained():  # under main, main says it once
        shown = f"run {run_id} closed" if run_id else "nothing was logged"
        print(
            f"stopped ({reason}): {shown}. The same command resumes: finished stages are reused",
            file=sys.stderr,
        )
    sys.exit(130)


def check_tracking_server(timeout_seconds: float = 10.0) -> None:
    """Fail at once when an HTTP tracking server does not answer, or the store is unwritable.

    MLflow's client retries a refused connection for about four minutes before its own
    traceback; `/health` answers without a login, so any HTTP answer means the server is up.

    Raises:
        ValueError: Naming the URL and the connection error.
    """
    uri = mlflow.get_tracking_uri()
    if DOCKER_ENV_LOCAL_STORE in uri:
        raise TrackingServerDownError(
            "the docker_env project cannot write this machine's local tracking store from its "
            "container; run the stage with `make docker-run` (it mounts the project and its "
            "store), or start a tracking server (mlflow server --port 5000) and set "
            "MLFLOW_TRACKING_URI=http://127.0.0.1:5000 with -A network=host"
        )
    if not uri.startswith(("http://", "https://")):
        return
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout_seconds)
    except requests.Timeout:
        reason = f"no answer in {timeout_seconds:.0f} s"
    except requests.RequestException as error:
        found = re.search(r"\[Errno -?\d+\] [^'\")]+", str(error))
        reason = found.group(0) if found else type(error).__name__
    else:
        return
    raise TrackingServerDownError(
        f"the tracking server {uri} does not answer ({reason}). Start it "
        "(python team_stack.py start) or point MLFLOW_TRACKING_URI at the running one"
    )


def record_error(message: str) -> None:
    """Tag the stage's run (under `mlflow run`) with its error, so `main` can report it."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        # The error is already printed; the tag is a convenience for `main`.
        with contextlib.suppress(MlflowException):
            MlflowClient().set_tag(run_id, artifacts.ERROR_TAG, message[:5000])
