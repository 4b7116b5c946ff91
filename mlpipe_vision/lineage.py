"""The run of each stage: starting and tagging it, what it records, and the next command.

Every stage starts its run through `start_stage_run`, which tags the stage and the URI it
read (so later stages and `main` can follow the lineage back), names the run for what it is,
and, in the training image, records the image and the commit of the code that ran. Artifact
URIs and the tags' names are in `mlpipe_vision.artifacts`.
"""

import contextlib
import os
import shlex
from collections.abc import Iterator

import mlflow
from mlflow.environment_variables import (
    MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING,
    MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL,
)
from mlflow.utils.mlflow_tags import (
    MLFLOW_DOCKER_IMAGE_ID,
    MLFLOW_DOCKER_IMAGE_URI,
    MLFLOW_GIT_COMMIT,
    MLFLOW_RUN_NAME,
    MLFLOW_USER,
)

from mlpipe_vision import artifacts, liveness

CHAINED_VARIABLE = "MLPIPE_CHAINED"
# Set inside the training image (Dockerfile, Makefile's docker-run): the commit its own code
# was built from (empty when the checkout is mounted instead), and the image `docker-run` used.
SOURCE_COMMIT_VARIABLE = "MLPIPE_SOURCE_COMMIT"
IMAGE_VARIABLE = "MLPIPE_DOCKER_IMAGE"
IMAGE_ID_VARIABLE = "MLPIPE_DOCKER_IMAGE_ID"
# The stages whose runs log MLflow's system metrics (CPU, memory, disk, network; GPU with
# nvidia-ml-py): a sample every 2 s, the mean of 5 logged, so a 10-minute epoch is 60 points
# and a 30-second test run still has a few. MLflow's own variables, when set, win.
SYSTEM_METRICS_STAGES = ("train",)
SYSTEM_METRICS_SAMPLING_SECONDS = 2
SYSTEM_METRICS_SAMPLES_PER_POINT = 5


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
        (MLFLOW_TRACKING_USERNAME) the run's user is the login. A train run logs MLflow's
        system metrics (`system/*`, see SYSTEM_METRICS_STAGES) while it is active.
    """
    system_metrics = stage in SYSTEM_METRICS_STAGES
    if system_metrics:
        set_system_metrics_sampling()
    run = mlflow.start_run(log_system_metrics=system_metrics)
    mlflow.set_tag(artifacts.STAGE_TAG, stage)
    if name and artifacts.TRIAL_NUMBER_TAG not in run.data.tags:
        mlflow.set_tag(MLFLOW_RUN_NAME, name)
    login = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if login:
        # On a team server the login says who ran it; MLflow records the machine's user.
        mlflow.set_tag(MLFLOW_USER, login)
    if input_uri and artifacts.TRIAL_NUMBER_TAG not in run.data.tags:
        mlflow.set_tag(artifacts.INPUT_URI_TAG, input_uri)
    record_container(run)
    liveness.watch(run.info.run_id)
    return run


def set_system_metrics_sampling() -> None:
    """Sample system metrics as SYSTEM_METRICS_* say, unless MLflow's variables say otherwise."""
    if not MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.is_set():
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_SAMPLING_SECONDS)
    if not MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING.is_set():
        mlflow.set_system_metrics_samples_before_logging(SYSTEM_METRICS_SAMPLES_PER_POINT)


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
