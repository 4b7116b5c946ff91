"""Artifact URIs between stages: resolving them, tagging runs with them, printing the next step.

Stages never read another run's files from disk directly; they hand each other
`runs:/<run_id>/<path>` URIs and resolve them here through MLflow, so the same code works
against the local sqlite store and a shared tracking server. Where the store keeps its
artifacts on this machine's disk (the local default), a stage reads the artifact folder in
place instead of copying it: a dataset of several GB is then stored once, not once more for
every stage that reads it.
"""

import contextlib
import json
import os
import shlex
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.utils.file_utils import local_file_uri_to_path
from mlflow.utils.mlflow_tags import (
    MLFLOW_DOCKER_IMAGE_ID,
    MLFLOW_DOCKER_IMAGE_URI,
    MLFLOW_GIT_COMMIT,
    MLFLOW_RUN_NAME,
    MLFLOW_USER,
)

INPUT_URI_TAG = "mlpipe.input_uri"
STAGE_TAG = "mlpipe.stage"
BEST_RUN_TAG = "mlpipe.best_run_id"
TRIAL_NUMBER_TAG = "mlpipe.trial_number"
CHAINED_VARIABLE = "MLPIPE_CHAINED"
# Set inside the training image (Dockerfile, Makefile's docker-run): the commit its own code
# was built from (empty when the checkout is mounted instead), and the image `docker-run` used.
SOURCE_COMMIT_VARIABLE = "MLPIPE_SOURCE_COMMIT"
IMAGE_VARIABLE = "MLPIPE_DOCKER_IMAGE"
IMAGE_ID_VARIABLE = "MLPIPE_DOCKER_IMAGE_ID"


def parse_runs_uri(uri: str) -> tuple[str, str]:
    """Split a `runs:/<run_id>/<path>` URI into the run ID and the artifact path.

    Args:
        uri: The URI.

    Returns:
        (run_id, artifact_path); the path is "" for the run's artifact root.

    Raises:
        ValueError: If the URI is not a runs:/ URI with a run ID.
    """
    prefix = "runs:/"
    if not uri.startswith(prefix) or not uri[len(prefix) :].strip("/"):
        raise ValueError(f"expected a URI like runs:/<run_id>/<path>, got {uri!r}")
    run_id, _, artifact_path = uri[len(prefix) :].strip("/").partition("/")
    return run_id, artifact_path


def local_artifact_dir(uri: str) -> Path | None:
    """The folder of an artifact whose store is on this machine's disk; None otherwise."""
    if uri.startswith("runs:/"):
        try:
            run_id, artifact_path = parse_runs_uri(uri)
            root = mlflow.MlflowClient().get_run(run_id).info.artifact_uri
        except (MlflowException, ValueError):
            return None
        uri = f"{root.rstrip('/')}/{artifact_path}" if artifact_path else root
    if urllib.parse.urlparse(uri).scheme not in ("", "file"):
        return None
    local_dir = Path(local_file_uri_to_path(uri))
    return local_dir if local_dir.is_dir() else None


def resolve_artifact_dir(
    uri: str, required_file: str, produced_by: str, dst_path: str | None = None
) -> Path:
    """Make the artifact folder behind a URI available locally and check what it holds.

    Args:
        uri: A `runs:/`, `models:/` or any MLflow artifact URI, or a local folder.
        required_file: A file that must exist in the folder (e.g. "meta.json").
        produced_by: What would be right, for the error message
            (e.g. "runs:/<get_data_run_id>/dataset from a get_data run").
        dst_path: Where to download to (MLflow's default: a new temporary folder that
            nobody removes; pass a `tempfile.TemporaryDirectory` for large artifacts).

    Returns:
        The local folder: the artifact itself when its store is on this disk (only read
        it), else a downloaded copy.

    Raises:
        ValueError: If the URI cannot be resolved or does not hold `required_file`.
    """
    if not uri or not uri.strip():
        raise ValueError(f"no input URI given; expected {produced_by}")
    local_dir = Path(uri) if os.path.isdir(uri) else local_artifact_dir(uri)
    if local_dir is None:
        if "://" not in uri and ":/" not in uri:
            raise ValueError(
                f"{uri!r} is neither an existing folder nor a URI; expected {produced_by}"
            )
        try:
            local_dir = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst_path)
            )
        except (MlflowException, OSError) as error:
            raise ValueError(
                f"could not fetch {uri!r} ({first_line(error)}); expected {produced_by}"
            ) from error
    if not (local_dir / required_file).is_file():
        raise ValueError(f"{uri!r} does not hold {required_file}; expected {produced_by}")
    return local_dir


def read_json_artifact(uri: str) -> dict:
    """Download one JSON artifact (or read a local file) into a dict; nothing is left on disk.

    Raises:
        MlflowException, OSError: If the artifact cannot be fetched; ValueError if not JSON.
    """
    if Path(uri).is_file():
        return json.loads(Path(uri).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        return json.loads(Path(path).read_text())


def first_line(error: BaseException) -> str:
    """Return the first line of an exception's message, for short error messages."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def start_stage_run(stage: str, input_uri: str | None = None, name: str = "") -> mlflow.ActiveRun:
    """Start (or, under `mlflow run`, continue) the run of one stage, and tag and name it.

    Args:
        stage: The entry point name, recorded as the `mlpipe.stage` tag.
        input_uri: The URI this stage read, recorded as the `mlpipe.input_uri` tag so that
            later stages can follow the lineage back.
        name: The run's name in the UI, saying what it is ("train fashion_mnist: cnn_3x48,
            10 epochs"), instead of MLflow's random one. A sweep's trial keeps the name
            and the input URI its sweep gave it (it reads a copy the sweep resolved).

    Returns:
        The active run, to be used as a context manager. With a login
        (MLFLOW_TRACKING_USERNAME) the run's user is the login.
    """
    run = mlflow.start_run()
    mlflow.set_tag(STAGE_TAG, stage)
    if name and TRIAL_NUMBER_TAG not in run.data.tags:
        mlflow.set_tag(MLFLOW_RUN_NAME, name)
    login = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if login:
        # On a team server the login says who ran it; MLflow records the machine's user.
        mlflow.set_tag(MLFLOW_USER, login)
    if input_uri and TRIAL_NUMBER_TAG not in run.data.tags:
        mlflow.set_tag(INPUT_URI_TAG, input_uri)
    record_container(run)
    return run


def record_container(run: mlflow.ActiveRun) -> None:
    """Tag a run made in the training image with the image and the commit of the code that ran.

    `make docker-run` names its image in the environment (MLflow's docker_env backend tags it
    itself, under the same tags). Code baked into the image (the docker_env project) is the
    commit the image was built from, which the checkout that started the run may not be.
    """
    tags = run.data.tags
    image = os.environ.get(IMAGE_VARIABLE)
    if image and MLFLOW_DOCKER_IMAGE_URI not in tags:
        mlflow.set_tag(MLFLOW_DOCKER_IMAGE_URI, image)
        mlflow.set_tag(MLFLOW_DOCKER_IMAGE_ID, os.environ.get(IMAGE_ID_VARIABLE, ""))
    image_commit = os.environ.get(SOURCE_COMMIT_VARIABLE)
    if image_commit and tags.get(MLFLOW_GIT_COMMIT) != image_commit:
        recorded = tags.get(MLFLOW_GIT_COMMIT)
        if recorded:
            print(
                f"note: the image's code is commit {image_commit[:12]}, not the checkout's "
                f"{recorded[:12]}; the run records {image_commit[:12]} (make docker-build "
                "rebuilds the image from the checkout)",
                flush=True,
            )
        mlflow.set_tag(MLFLOW_GIT_COMMIT, image_commit)


def log_new_params(params: dict[str, object]) -> None:
    """Log parameters the active run does not have yet.

    `mlflow run` already logs the entry point's parameters as given on the command line;
    a stage adds what it resolved (defaults, derived values) without clashing with those.
    """
    run_id = mlflow.active_run().info.run_id
    existing = mlflow.get_run(run_id).data.params
    new = {key: value for key, value in params.items() if key not in existing}
    if new:
        mlflow.log_params(new)


def artifact_uri(run_id: str, path: str) -> str:
    """Build the `runs:/` URI of an artifact path in a run."""
    return f"runs:/{run_id}/{path}"


@contextlib.contextmanager
def chained() -> Iterator[None]:
    """While `main` runs the stages, they print no `next:` command: main runs it itself."""
    before = os.environ.get(CHAINED_VARIABLE)
    os.environ[CHAINED_VARIABLE] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[CHAINED_VARIABLE]
        else:
            os.environ[CHAINED_VARIABLE] = before


def is_chained() -> bool:
    """True while `main` runs the stages (see `chained`)."""
    return os.environ.get(CHAINED_VARIABLE) == "1"


def print_next(entry_point: str, **parameters: object) -> None:
    """Print the command for the next stage, unless `main` runs the chain (see `chained`)."""
    if not is_chained():
        print("next: " + next_command(entry_point, **parameters))


def next_command(entry_point: str, **parameters: object) -> str:
    """Format the `mlflow run` command for the next stage, ready to copy.

    Args:
        entry_point: The MLproject entry point.
        **parameters: Parameters to pass with `-P`.

    Returns:
        The command line.
    """
    parts = ["mlflow", "run", ".", "-e", entry_point]
    for name, value in parameters.items():
        parts += ["-P", f"{name}={value}"]
    return shlex.join(parts) + " --env-manager local"
