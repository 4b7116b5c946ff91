"""Every container path on a real Docker engine, from a user's own clone of the project.

The training image (`make docker-build`, `make docker-run`) against the clone's default sqlite
store, stages reused across the container and the host in both directions; MLflow's own
docker_env backend (`mlflow run docker/project`) against a real `mlflow server` with proxied
artifacts; and deploy/compose.yaml's team stack with login, used from the host and from
docker_env. Base images this machine cannot pull are docker/bases.sh's stand-ins.
"""

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
from mlflow.utils.mlflow_tags import (
    MLFLOW_DOCKER_IMAGE_ID,
    MLFLOW_DOCKER_IMAGE_URI,
    MLFLOW_GIT_COMMIT,
)

from tests.conftest import (
    REPO_DIR,
    clone_project,
    free_port,
    mlflow_run,
    mlflow_run_command,
    served_model,
    synthetic_images,
)

pytestmark = [pytest.mark.integration, pytest.mark.docker]

MAIN_PARAMETERS = {"dataset": "mnist", "verify": "false", "epochs": 1}


@pytest.fixture(scope="module")
def clone(tmp_path_factory, training_image, idx_mirror_dir) -> dict:
    """A user's clone with its default store (sqlite:///mlflow.db in the clone's folder)."""
    folder = clone_project(tmp_path_factory.mktemp("user") / "mlpipe")
    return {
        "dir": folder,
        "tracking": {"uri": "sqlite:///mlflow.db", "experiment_id": "0", "cwd": folder}
        | {"project": folder},
        # Made only after a stage created the store: a store created from this process would
        # put the default experiment's artifacts under this process's working folder.
        "client": lambda: mlflow.MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}"),
        "commit": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True
        ).stdout.strip(),
        "main": MAIN_PARAMETERS | {"source": str(idx_mirror_dir)},
    }


def docker_run(clone: dict, stage: str, **parameters: object) -> subprocess.CompletedProcess:
    """`make docker-run` in the clone, as its README says, with no tracking URI set."""
    arguments = " ".join(f"-P {name}={value}" for name, value in parameters.items())
    env = {name: value for name, value in os.environ.items() if not name.startswith("MLFLOW_")}
    return subprocess.run(
        ["make", "--no-print-directory", "docker-run", f"STAGE={stage}", f"ARGS={arguments}"],
        cwd=clone["dir"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def workshop_body(image: np.ndarray) -> dict:
    return {"dataframe_split": {"columns": list(range(image.shape[1])), "data": image.tolist()}}


def in_process_probabilities(model_uri: str, body: dict) -> list[float]:
    from mlflow.pyfunc import scoring_server

    model = mlflow.pyfunc.load_model(model_uri)
    data = scoring_server.infer_and_parse_data(body, model.metadata.get_input_schema())
    row = model.predict(data).iloc[0]
    return [float(row[f"p_{digit}"]) for digit in range(10)]


def test_training_image_trains_on_the_cpu_and_its_stages_are_reused_on_both_sides(clone):
    tracking = clone["tracking"]
    # The data stages on the host, with the parameters `main` passes.
    get_data = mlflow_run(
        tracking, "get_data", dataset="mnist", source=clone["main"]["source"], verify="false"
    )
    client = clone["client"]()
    data_uri = f"runs:/{get_data['run_id']}/dataset"
    explore = mlflow_run(tracking, "explore_data", data=data_uri)
    preprocess = mlflow_run(
        tracking,
        "preprocess",
        data=data_uri,
        stats=f"runs:/{explore['run_id']}/stats.json",
        percentage=100.0,
    )

    # train in the container, on the CPU, against the clone's own sqlite store.
    trained = docker_run(
        clone, "train", data=f"runs:/{preprocess['run_id']}/preprocessed", epochs=1
    )
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert "the container trains on the CPU" in trained.stderr
    (train_id,) = [
        run.info.run_id
        for run in client.search_runs(["0"], "tags.`mlflow.project.entryPoint` = 'train'")
    ]
    train_run = client.get_run(train_id)
    assert train_run.info.status == "FINISHED"
    assert train_run.data.tags[MLFLOW_GIT_COMMIT] == clone["commit"]
    assert train_run.data.tags[MLFLOW_DOCKER_IMAGE_URI] == "mlpipe-gpu:latest"
    image_id = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", "mlpipe-gpu:latest"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert train_run.data.tags[MLFLOW_DOCKER_IMAGE_ID] == image_id
    assert "GitPython" not in trained.stdout + trained.stderr
    assert (clone["dir"] / "mlruns" / "0" / train_id).is_dir()  # the host's artifact folder

    # main on the host reuses every stage, the container's train too, and packages its model.
    host_main = mlflow_run(tracking, "main", **clone["main"])
    assert f"[train] reusing finished run {train_id}" in host_main["output"]
    assert "[package] running" in host_main["output"]
    model_uri = "models:/mnist_classifier@champion"

    # served on the host, it answers as the model loaded in this process.
    image = synthetic_images(np.array([3]), seed=5)[0]
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{clone['dir'] / 'mlflow.db'}"
    try:
        expected = in_process_probabilities(model_uri, workshop_body(image))
        with served_model(
            model_uri, os.environ["MLFLOW_TRACKING_URI"], clone["dir"] / "serve.log"
        ) as running:
            response = requests.post(
                f"{running['url']}/invocations", json=workshop_body(image), timeout=60
            )
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    assert response.status_code == 200, response.text
    served = response.json()["predictions"][0]
    assert [served[f"p_{digit}"] for digit in range(10)] == pytest.approx(expected, abs=1e-6)

    # And the reverse: main in the container reuses every stage the host finished.
    container_main = docker_run(clone, "main", **clone["main"])
    assert container_main.returncode == 0, container_main.stderr[-3000:]
    for stage in ("get_data", "explore_data", "preprocess", "train", "package"):
        assert f"[{stage}] reusing finished run" in container_main.stdout, stage


def test_docker_run_without_an_image_says_how_to_build_it(clone):
    completed = subprocess.run(
        ["make", "--no-print-directory", "docker-run", "IMAGE_TAG=mlpipe-gpu:never-built"],
        cwd=clone["dir"],
        capture_output=True,
        text=True,
    )
    assert completed.returncode != 0
    assert "no image mlpipe-gpu:never-built here; build it first: make docker-build" in (
        completed.stderr
    )


@contextlib.contextmanager
def tracking_server(folder: Path):
    """A plain `mlflow server` (sqlite backend, proxied artifacts) on a free loopback port."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    command += ["--artifacts-destination", str(folder / "artifacts"), "--workers", "1"]
    with open(folder / "server.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process, folder / "server.log")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_for_health(url: str, process=None, log_path: Path | None = None, seconds: float = 180):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"server exited:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(1)
    raise AssertionError(f"{url} did not answer /health in {seconds:.0f} s")


def data_stages(tracking: dict, source: str) -> str:
    """get_data and preprocess on the host; the preprocessed URI."""
    get_data = mlflow_run(tracking, "get_data", dataset="mnist", source=source, verify="false")
    preprocess = mlflow_run(tracking, "preprocess", data=f"runs:/{get_data['run_id']}/dataset")
    return f"runs:/{preprocess['run_id']}/preprocessed"


def docker_env_train(clone: dict, tracking: dict, data_uri: str, *docker_args: str) -> dict:
    """`mlflow run docker/project -e train` (MLflow's docker_env backend), as the template runs."""
    project = {**tracking, "project": clone["dir"] / "docker" / "project"}
    command, env = mlflow_run_command(project, "train", data=data_uri, epochs=1)
    command.remove("--env-manager")
    command.remove("local")  # docker_env decides the environment
    for argument in docker_args:
        command += ["-A", argument]
    completed = subprocess.run(
        command,
        cwd=tracking.get("cwd", clone["dir"]),
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return {"returncode": completed.returncode, "output": completed.stdout + completed.stderr}


def test_docker_env_project_trains_against_a_tracking_server(clone, tmp_path):
    with tracking_server(tmp_path / "server") as url:
        tracking = {"uri": url, "experiment_id": "0", "cwd": tmp_path, "project": clone["dir"]}
        data_uri = data_stages(tracking, clone["main"]["source"])
        trained = docker_env_train(clone, tracking, data_uri, "network=host", "env-file=login.env")
        assert trained["returncode"] == 0, trained["output"][-4000:]
        client = mlflow.MlflowClient(tracking_uri=url)
        (run,) = client.search_runs(["0"], "tags.`mlflow.project.entryPoint` = 'train'")
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.project.env"] == "docker"
        assert run.data.tags[MLFLOW_DOCKER_IMAGE_URI] == "mlpipe-gpu:latest"
        assert run.data.tags[MLFLOW_GIT_COMMIT] == clone["commit"]
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        mlflow.set_tracking_uri(url)
        try:  # the model the container logged, through the server's proxied artifacts
            info = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
        finally:
            mlflow.set_tracking_uri(None)
        assert "keras" in info.flavors


def test_docker_env_project_on_the_default_sqlite_store_says_what_to_use(clone):
    data_uri = data_stages(clone["tracking"], clone["main"]["source"])
    trained = docker_env_train(clone, clone["tracking"], data_uri)
    assert trained["returncode"] != 0
    assert (
        "error: the docker_env project cannot write this machine's local tracking store"
        in trained["output"]
    )
    assert "make docker-run" in trained["output"]


@pytest.fixture(scope="module")
def compose_stack(docker_bases, tmp_path_factory):
    """deploy/compose.yaml brought up (PostgreSQL and mlflow server with login), then down."""
    admin_password = secrets.token_urlsafe(16)
    mlflow_port = free_port()
    env = {
        **os.environ,
        "PGPASSWORD": secrets.token_urlsafe(16),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
        "PGPORT": str(free_port()),
        "MLFLOW_PORT": str(mlflow_port),
        "MLPIPE_LISTEN_ADDRESS": "127.0.0.1",
        "MLFLOW_ALLOWED_HOSTS": f"127.0.0.1:{mlflow_port},localhost:{mlflow_port}",
    }
    project = f"mlpipe-test-{secrets.token_hex(3)}"
    compose = ["docker-compose", "-p", project, "-f", str(REPO_DIR / "deploy" / "compose.yaml")]
    up = subprocess.run(compose + ["up", "-d", "--build"], env=env, capture_output=True, text=True)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        url = f"http://127.0.0.1:{mlflow_port}"
        wait_for_health(url)
        yield {
            "url": url,
            "login": {"MLFLOW_TRACKING_USERNAME": "admin"}
            | {"MLFLOW_TRACKING_PASSWORD": admin_password},
        }
    finally:
        logs = subprocess.run(compose + ["logs", "--tail", "40"], env=env, capture_output=True)
        down = subprocess.run(compose + ["down", "-v"], env=env, capture_output=True, text=True)
        assert down.returncode == 0, down.stderr + logs.stdout.decode(errors="replace")


def test_compose_stack_runs_main_twice_and_docker_env_with_login(clone, compose_stack, tmp_path):
    tracking = {
        "uri": compose_stack["url"],
        "experiment_id": "0",
        "cwd": tmp_path,
        "project": clone["dir"],
        "env": compose_stack["login"],
    }
    first = mlflow_run(tracking, "main", **clone["main"])
    assert "all stages done; the model is models:/mnist_classifier@champion" in first["output"]
    second = mlflow_run(tracking, "main", **clone["main"])
    for stage in ("get_data", "explore_data", "preprocess", "train", "package"):
        assert f"[{stage}] reusing finished run" in second["output"], stage

    # MLflow's docker_env backend logs to the same server with the login passed through.
    client = mlflow.MlflowClient(tracking_uri=compose_stack["url"])
    os.environ.update(compose_stack["login"])
    try:
        (preprocess,) = client.search_runs(["0"], "tags.`mlflow.project.entryPoint` = 'preprocess'")
        data_uri = f"runs:/{preprocess.info.run_id}/preprocessed"
        trained = docker_env_train(clone, tracking, data_uri, "network=host", "env-file=login.env")
        assert trained["returncode"] == 0, trained["output"][-4000:]
        runs = client.search_runs(["0"], "tags.`mlflow.project.env` = 'docker'", max_results=5)
        assert runs and runs[0].info.status == "FINISHED"
        assert runs[0].data.tags["mlflow.user"] == "admin"

        # Without the login passed in, the container's stage says what to add.
        refused = docker_env_train(clone, tracking, data_uri, "network=host")
        assert refused["returncode"] != 0
        assert "-A env-file=login.env" in refused["output"]
    finally:
        for name in compose_stack["login"]:
            del os.environ[name]
    assert json.dumps(compose_stack["login"]["MLFLOW_TRACKING_PASSWORD"]) not in (
        first["output"] + second["output"]
    )
