"""The stage scripts' command lines: argument types, and user errors as one clear line."""

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Callable

import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlpipe_vision import artifacts
from mlpipe_vision.console import quiet_console


class StageFailedError(RuntimeError):
    """A stage of the `main` chain failed; the message names the stage and its error."""


class TrackingServerDownError(ValueError):
    """The tracking store cannot be reached or written (so no run can be tagged with the error)."""


# Where MLflow's docker_env backend mounts a local store (file or sqlite) inside the container
# (mlflow/projects/docker.py): the sqlite file alone, which the image's user cannot write.
DOCKER_ENV_LOCAL_STORE = "/mlflow/tmp/mlruns"


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
    try:
        check_tracking_server()
        stage(**arguments)
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
