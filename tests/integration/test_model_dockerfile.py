"""The packaged model's Docker image: its Dockerfile read, then built and run for real.

`mlflow models generate-dockerfile` writes the Dockerfile and the model folder that
`mlflow models build-docker --env-manager local` builds from. The Dockerfile is linted and
read: it must install MLflow's own serving package and then the model's requirements, exactly
as the model states them, on the Python the model was packaged with. Then it is built with
`docker build --network host` (build-docker has no network option, and this machine's
containers have no bridge) and its answers are compared with the model's in this process.
"""

import base64
import contextlib
import json
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest
import requests
import yaml

from mlpipe_vision import environment
from tests.conftest import png_bomb, synthetic_images

pytestmark = pytest.mark.integration

# What hadolint says of MLflow's own Dockerfile template (not ours to change): nginx comes
# from apt unpinned (DL3008), pip keeps its cache (DL3042), and two style notes (info).
KNOWN_TEMPLATE_FINDINGS = {"DL3008", "DL3009", "DL3042", "DL3059"}


@pytest.fixture(scope="module")
def generated(packaged, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("docker")
    subprocess.run(
        [sys.executable, "-m", "mlflow", "models", "generate-dockerfile"]
        + ["-m", str(packaged["output_dir"]), "-d", str(output_dir)],
        check=True,
        capture_output=True,
    )
    return output_dir


def test_generated_dockerfile_has_no_lint_errors_beyond_mlflows_known_template(generated):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is missing: install the dev extras (pip install -e '.[dev]')"
    completed = subprocess.run(
        [hadolint, "--format", "json", "--no-fail", str(generated / "Dockerfile")],
        capture_output=True,
        text=True,
        check=True,
    )
    findings = json.loads(completed.stdout)
    assert not [finding for finding in findings if finding["level"] == "error"], findings
    assert {finding["code"] for finding in findings} <= KNOWN_TEMPLATE_FINDINGS, findings


def test_generated_image_installs_exactly_the_models_requirements(packaged, generated):
    dockerfile = (generated / "Dockerfile").read_text()
    model_dir = generated / "model_dir" / "model"
    python_version = yaml.safe_load((model_dir / "python_env.yaml").read_text())["python"]
    assert re.search(rf"^FROM python:{re.escape(python_version)}-slim$", dockerfile, re.M)
    assert (model_dir / "requirements.txt").read_text().split() == (
        environment.pinned_requirements(environment.PACKAGED_MODEL_DISTRIBUTIONS)
    )
    assert "COPY model_dir/model /opt/ml/model" in dockerfile
    # The model's python_env.yaml and requirements.txt, installed by MLflow's own code.
    assert "C._install_pyfunc_deps('/opt/ml/model', install_mlflow=False" in dockerfile
    # The one other install: MLflow's server for the container, the version of the model's.
    (skinny,) = environment.pinned_requirements(("mlflow-skinny",))
    version = skinny.split("==")[1]
    assert re.findall(r"pip install (\S+)", dockerfile) == [f"mlflow=={version}"]


def test_the_images_install_steps_resolve_together(generated, tmp_path):
    """What the image's two pip steps install, resolved as one set for its Python (uv)."""
    dockerfile = (generated / "Dockerfile").read_text()
    model_dir = generated / "model_dir" / "model"
    python_env = yaml.safe_load((model_dir / "python_env.yaml").read_text())
    python_version = python_env["python"]
    requirements = re.findall(r"pip install (\S+)", dockerfile) + python_env["build_dependencies"]
    requirements += (model_dir / "requirements.txt").read_text().split()
    requirements.append("gunicorn[gevent]")  # what _install_pyfunc_deps adds for its server
    (tmp_path / "image-requirements.in").write_text("\n".join(requirements))
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))
    assert uv, "uv is missing: install the dev extras (pip install -e '.[dev]')"
    completed = subprocess.run(
        [uv, "pip", "compile", "--quiet", "--python-version", python_version]
        + [str(tmp_path / "image-requirements.in")],
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stderr
    resolved = dict(line.split("==", 1) for line in completed.stdout.splitlines() if "==" in line)
    for requirement in (model_dir / "requirements.txt").read_text().split():
        name, version = requirement.split("==")
        assert resolved[name] == version


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def model_container(docker_bases, generated):
    """The generated Dockerfile built (on the python:<version>-slim stand-in) and run.

    MLflow's image serves on 8080 (nginx) in front of 8000 (uvicorn); with the host's network
    (no bridge here) those are the host's ports, so they must be free.
    """
    busy = [port for port in (8080, 8000) if not port_is_free(port)]
    if busy:
        pytest.fail(f"ports {busy} are taken on this machine; MLflow's model image needs them")
    tag = f"mlpipe-model-test:{secrets.token_hex(4)}"
    subprocess.run(
        ["docker", "build", "--network", "host", "-q", "-t", tag, str(generated)],
        check=True,
        capture_output=True,
    )
    container = subprocess.run(
        ["docker", "run", "-d", "--rm", "--network", "host", "-e", "MLFLOW_MODELS_WORKERS=1", tag],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    url = "http://127.0.0.1:8080"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            time.sleep(1)
        else:
            logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True)
            raise AssertionError(f"the model's container did not answer:\n{logs.stderr[-3000:]}")
        yield url
    finally:
        subprocess.run(["docker", "stop", container], capture_output=True)
        subprocess.run(["docker", "rmi", tag], capture_output=True)


def in_process(model, body: dict):
    """The packaged model's answer in this process, or the message it refuses the body with."""
    from mlflow.pyfunc import scoring_server

    try:
        data = scoring_server.infer_and_parse_data(body, model.metadata.get_input_schema())
        return model.predict(data).to_dict(orient="records")
    except Exception as error:  # the server turns the same exceptions into HTTP 400
        return str(error)


@pytest.mark.docker
def test_the_models_container_answers_and_refuses_as_the_model_in_process(
    packaged, model_container
):
    model = mlflow.pyfunc.load_model(str(packaged["output_dir"]))
    image = synthetic_images(np.array([4]), seed=9)[0]
    ok, png = cv2.imencode(".png", image)
    bodies = {
        "workshop H x W table": {
            "dataframe_split": {"columns": list(range(28)), "data": image.tolist()}
        },
        "base64 png": {
            "dataframe_split": {
                "columns": ["image"],
                "data": [[base64.b64encode(png.tobytes()).decode()]],
            }
        },
        "oversized image": {
            "dataframe_split": {
                "columns": ["image"],
                "data": [[base64.b64encode(png_bomb(10000, 10000)).decode()]],
            }
        },
    }
    for name, body in bodies.items():
        expected = in_process(model, body)
        response = requests.post(f"{model_container}/invocations", json=body, timeout=60)
        if isinstance(expected, str):
            assert response.status_code == 400, (name, response.text)
            assert expected in response.json()["message"], name
        else:
            assert response.status_code == 200, (name, response.text)
            (served,) = response.json()["predictions"]
            assert served["class_id"] == expected[0]["class_id"], name
            for digit in range(10):
                assert served[f"p_{digit}"] == pytest.approx(expected[0][f"p_{digit}"], abs=1e-6)
    assert "10000x10000 = 100,000,000 pixels" in in_process(model, bodies["oversized image"])
