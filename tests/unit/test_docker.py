"""The GPU Docker path, checked as far as a machine without a Docker engine allows."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_DIR

DOCKERFILE = (REPO_DIR / "Dockerfile").read_text()


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.fail("hadolint is missing: install the dev extras (pip install -e '.[dev]')")
    completed = subprocess.run([hadolint, "Dockerfile"], cwd=REPO_DIR, capture_output=True)
    assert completed.returncode == 0, completed.stdout.decode() + completed.stderr.decode()


def test_base_image_is_the_pinned_tensorflow_gpu_release_of_the_project():
    pyproject = (REPO_DIR / "pyproject.toml").read_text()
    minor = re.search(r'"tensorflow>=(\d+\.\d+)', pyproject).group(1)
    base = re.search(r"^FROM (\S+)", DOCKERFILE, re.MULTILINE).group(1)
    assert re.fullmatch(rf"tensorflow/tensorflow:{re.escape(minor)}\.\d+-gpu", base), base


def test_image_runs_as_a_non_root_user_and_bakes_in_no_secrets():
    users = re.findall(r"^USER (\S+)", DOCKERFILE, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert not re.search(r"^(ENV|ARG)\s+\S*(TOKEN|PASSWORD|SECRET|KEY)", DOCKERFILE, re.M | re.I)
    assert "mlflow.db" in (REPO_DIR / ".dockerignore").read_text()


def test_docker_run_command_uses_the_gpu_and_the_hosts_tracking():
    completed = subprocess.run(
        [
            "make",
            "-n",
            "--no-print-directory",
            "docker-run",
            "STAGE=train",
            "ARGS=-P data=runs:/abc/preprocessed",
        ],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        check=True,
    )
    # Under `make test` the outer make's flags reach this make; keep only the command.
    command = next(line for line in completed.stdout.splitlines() if line.startswith("docker"))
    assert command.startswith("docker run --rm --gpus all --network host")
    assert f'-v "{REPO_DIR}:{REPO_DIR}" -w "{REPO_DIR}"' in command
    assert 'MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}"' in command
    assert command.endswith(
        "mlpipe-gpu:latest mlflow run . -e train -P data=runs:/abc/preprocessed --env-manager local"
    )
