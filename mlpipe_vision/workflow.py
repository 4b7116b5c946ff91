"""The main entry point: every stage in order, each its own run, finished runs reused.

A stage is reused when a FINISHED run of the same entry point exists in the experiment
with the same parameters (MLproject defaults filled in, so upstream URIs count too) and
the same git commit. A failed stage stops the chain with its name; the next `main` then
reuses every stage that finished and resumes at the one that failed.
"""

import os
import re
import shlex
import subprocess
from pathlib import Path

import mlflow
import yaml
from mlflow.entities import Run
from mlflow.exceptions import ExecutionException, MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PROJECT_ENTRY_POINT

from mlpipe_vision import artifacts, console, lineage, promotion, request_bodies
from mlpipe_vision.cli import StageFailedError

PROJECT_DIR = Path(__file__).resolve().parents[1]


def entry_point_defaults(entry_point: str, project_dir: Path = PROJECT_DIR) -> dict[str, str]:
    """The MLproject defaults of an entry point's parameters, as strings."""
    spec = yaml.safe_load((project_dir / "MLproject").read_text())["entry_points"][entry_point]
    defaults = {}
    for name, parameter in spec.get("parameters", {}).items():
        if isinstance(parameter, dict) and "default" in parameter:
            defaults[name] = str(parameter["default"])
    return defaults


def git_commit(project_dir: Path = PROJECT_DIR) -> str | None:
    """The checked-out commit of the project, or None outside a git checkout.

    In the training image, whose code has no .git, the commit the image was built from.
    """
    if os.environ.get(lineage.SOURCE_COMMIT_VARIABLE):
        return os.environ[lineage.SOURCE_COMMIT_VARIABLE]
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project_dir, capture_output=True, text=True
        )
    except OSError:
        return None
    return completed.stdout.strip() or None


def find_finished_run(
    client: MlflowClient,
    experiment_id: str,
    entry_point: str,
    parameters: dict[str, str],
    commit: str | None,
) -> Run | None:
    """The newest FINISHED run of `entry_point` with exactly these parameters and commit."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{MLFLOW_PROJECT_ENTRY_POINT}` = '{entry_point}' and "
            "attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=200,
    )
    for run in runs:
        if run.data.tags.get(MLFLOW_GIT_COMMIT) != commit:
            continue
        # `mlflow run` logs parameters shell-quoted: an empty string is stored as ''.
        if all(
            run.data.params.get(name) in (value, shlex.quote(value))
            for name, value in parameters.items()
        ):
            return run
    return None


def stage_error(client: MlflowClient, failure: str) -> str:
    """The error a failed stage recorded on its run, or MLflow's own failure message."""
    match = re.search(r"Run \(ID '([0-9a-f]+)'\)", failure)
    if match:
        tags = client.get_run(match.group(1)).data.tags
        if artifacts.ERROR_TAG in tags:
            return f"{tags[artifacts.ERROR_TAG]} (run {match.group(1)})"
    return console.first_line(ValueError(failure))


def run_stage(
    entry_point: str,
    parameters: dict[str, object],
    force: bool,
    experiment_id: str,
    commit: str | None,
) -> str:
    """Run one stage through MLflow Projects, or reuse an identical finished run.

    Returns:
        The stage's run ID.

    Raises:
        StageFailedError: If the stage's run failed.
    """
    client = MlflowClient()
    given = {name: str(value) for name, value in parameters.items()}
    full_parameters = {**entry_point_defaults(entry_point), **given}
    if not force:
        finished = find_finished_run(client, experiment_id, entry_point, full_parameters, commit)
        if finished:
            print(f"[{entry_point}] reusing finished run {finished.info.run_id}", flush=True)
            mlflow.set_tag(artifacts.stage_run_tag(entry_point), finished.info.run_id)
            return finished.info.run_id
    print(f"[{entry_point}] running with {given}", flush=True)
    try:
        submitted = mlflow.projects.run(
            str(PROJECT_DIR),
            entry_point=entry_point,
            parameters=given,
            env_manager="local",
            experiment_id=experiment_id,
            synchronous=True,
        )
    except (ExecutionException, MlflowException) as error:
        raise StageFailedError(
            f"stage {entry_point} failed: {stage_error(client, str(error))}; fix the cause "
            "and run main again: finished stages are reused"
        ) from error
    mlflow.set_tag(artifacts.stage_run_tag(entry_point), submitted.run_id)
    return submitted.run_id


def parse_sweep(sweep: str) -> dict[str, str]:
    """Parse `main`'s sweep parameter: "name=values;name=values" for train_batch.

    Example: "conv_filters=16,32;dropout_rate=0.2,0.4" sweeps a 2x2 grid; values take any
    form train_batch accepts for that parameter.

    Raises:
        ValueError: If a part is not name=values.
    """
    parameters = {}
    for part in filter(None, (piece.strip() for piece in sweep.split(";"))):
        name, separator, values = part.partition("=")
        if not separator or not name.strip() or not values.strip():
            raise ValueError(
                f"sweep part {part!r} is not name=values; expected e.g. "
                "sweep='conv_filters=16,32;dropout_rate=0.2,0.4'"
            )
        parameters[name.strip()] = values.strip()
    return parameters


def run_main(
    dataset: str = "fashion_mnist",
    source: str = "",
    verify: bool = True,
    percentage: float = 100.0,
    epochs: int = 10,
    sweep: str = "",
    registered_model_name: str = "",
    promote: str = "better",
    force: bool = False,
) -> str:
    """Run get_data, explore_data, preprocess, train or train_batch, and package.

    Args:
        dataset: Dataset name for get_data.
        source: Local folder or mirror URL for get_data ("" searches the usual places).
        verify: get_data refuses IDX files that do not match the official checksums.
        percentage: Share of the data preprocess keeps.
        epochs: Training epochs (for every trial of a sweep, unless the sweep sets them).
        sweep: "" trains once; "name=values;..." runs train_batch over those values.
        registered_model_name: Registry name for package ("" derives it from the dataset).
        promote: package's rule for moving @champion: better, always or never.
        force: Rerun every stage even when an identical finished run exists.

    Returns:
        The registered model URI.

    Raises:
        StageFailedError: If a stage fails; the message names it and its error.
    """
    promotion.check_promote(promote)
    sweep_parameters = parse_sweep(sweep)
    name = f"main {dataset}" + (f": sweep of {', '.join(sweep_parameters)}" if sweep else "")
    with lineage.start_stage_run("main", name=name) as main_run, lineage.chained():
        experiment_id = main_run.info.experiment_id
        commit = git_commit()

        def stage(entry_point: str, **parameters: object) -> str:
            return run_stage(entry_point, parameters, force, experiment_id, commit)

        get_data_id = stage("get_data", dataset=dataset, source=source, verify=str(verify).lower())
        data_uri = artifacts.artifact_uri(get_data_id, "dataset")
        explore_id = stage("explore_data", data=data_uri)
        stats_uri = artifacts.artifact_uri(explore_id, "stats.json")
        preprocess_id = stage("preprocess", data=data_uri, stats=stats_uri, percentage=percentage)
        preprocessed_uri = artifacts.artifact_uri(preprocess_id, "preprocessed")
        if sweep_parameters:
            # The sweep's own values win, so a sweep may vary epochs too.
            sweep_id = stage(
                "train_batch", data=preprocessed_uri, **{"epochs": epochs, **sweep_parameters}
            )
            model_uri = artifacts.artifact_uri(sweep_id, "")
        else:
            train_id = stage("train", data=preprocessed_uri, epochs=epochs)
            model_uri = artifacts.artifact_uri(train_id, "model")
        package_id = stage(
            "package",
            model=model_uri,
            registered_model_name=registered_model_name,
            promote=promote,
        )
        package_tags = MlflowClient().get_run(package_id).data.tags
        registered_uri = package_tags[artifacts.REGISTERED_MODEL_TAG]
    print(f"\nall stages done; the model is {registered_uri}")
    if package_tags.get(artifacts.PROMOTION_TAG) == "kept":
        print(f"the alias did not move: {package_tags[artifacts.PROMOTION_REASON_TAG]}")
    tracking_uri = mlflow.get_tracking_uri()
    if tracking_uri.startswith(("http://", "https://")):
        print(f"browse the runs: {tracking_uri}")
    else:
        print(f"browse the runs: mlflow ui --backend-store-uri {tracking_uri}")
    print(f"serve:  mlflow models serve -m {registered_uri} -p 5000 --env-manager local")
    print("query:  python png_to_pandas.py drawing.png")
    print(f"        {request_bodies.curl_command('example.json', port=5000)}")
    return registered_uri
