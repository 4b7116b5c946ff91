"""The packaged model's Docker image, checked as far as a machine without a Docker engine allows.

`mlflow models generate-dockerfile` writes the Dockerfile and the model folder that
`mlflow models build-docker` builds from. Here the Dockerfile is linted and read: it must
install MLflow's own serving package and then the model's requirements, exactly as the
model states them, on the Python the model was packaged with.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlpipe_vision import environment

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
