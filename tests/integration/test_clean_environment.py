"""The logged models served where users serve them: in an environment MLflow builds itself.

`mlflow models serve --env-manager uv` makes a fresh virtual environment from nothing but
the model's own files (python_env.yaml and requirements.txt), so these tests fail if a
requirement is missing, names the wrong distribution or drags in packages serving never
uses. uv keeps its download cache in its default place (~/.cache/uv), so only the first run
on a machine downloads TensorFlow; each test run builds its environments anew from it.
"""

import base64
import json
import subprocess
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import yaml

from mlpipe_vision import artifacts, datasets, environment
from mlpipe_vision.images import normalize
from tests.conftest import png_bomb, served_model

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow(reason="builds environments with uv, TensorFlow included: minutes"),
]

# The first build on a machine downloads TensorFlow and its CUDA-free wheels (~700 MB).
START_SECONDS = 900

# Run by the served environment's own Python, isolated (-I keeps the current folder, and any
# egg-info in it, off sys.path): every installed distribution, and every distribution the
# given requirements reach through their dependencies.
CLOSURE_SCRIPT = """
import importlib.metadata as metadata, json, sys
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

installed = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}
reached, pending = set(), [Requirement(line) for line in json.loads(sys.argv[1])]
while pending:
    requirement = pending.pop()
    name = canonicalize_name(requirement.name)
    extras = {""} | set(requirement.extras)
    if name in reached and not requirement.extras or name not in installed:
        continue
    reached.add(name)
    for line in installed[name].requires or []:
        dependency = Requirement(line)
        if not dependency.marker or any(dependency.marker.evaluate({"extra": e}) for e in extras):
            pending.append(dependency)
print(json.dumps({"installed": sorted(installed), "reached": sorted(reached)}))
"""


@pytest.fixture(scope="module")
def env_root(tmp_path_factory) -> Path:
    """MLflow's folder of built environments, empty at the start: every build is fresh."""
    return tmp_path_factory.mktemp("mlflow_envs")


def built_environment(env_root: Path, model_dir: Path) -> dict:
    """What the environment MLflow built for a model holds, and what the model asked for."""
    (env_dir,) = [path for path in env_root.iterdir() if path.name.startswith("mlflow-")]
    python_env = yaml.safe_load((model_dir / "python_env.yaml").read_text())
    requirements = (model_dir / "requirements.txt").read_text().split()
    asked = requirements + python_env["build_dependencies"]
    completed = subprocess.run(
        [str(env_dir / "bin" / "python"), "-I", "-c", CLOSURE_SCRIPT, json.dumps(asked)],
        capture_output=True,
        text=True,
        check=True,
    )
    return {"requirements": requirements, **json.loads(completed.stdout)}


def check_environment(env_root: Path, model_dir: Path, distributions: tuple[str, ...]) -> None:
    """The model asks for exactly the pinned distributions, and the environment holds
    nothing that they do not reach."""
    built = built_environment(env_root, model_dir)
    assert built["requirements"] == environment.pinned_requirements(distributions)
    unasked = set(built["installed"]) - set(built["reached"])
    assert not unasked, f"installed but not asked for by the model: {sorted(unasked)}"
    for stranger in ("mlpipe", "mlpipe-vision", "matplotlib", "scikit-learn", "scipy", "pyarrow"):
        assert stranger not in built["installed"]


def post(url: str, body: dict) -> requests.Response:
    return requests.post(
        f"{url}/invocations",
        data=json.dumps(body),
        headers={"Content-Type": "application/json"},
        timeout=120,
    )


def answer_table(response: requests.Response) -> pd.DataFrame:
    assert response.status_code == 200, response.text
    return pd.DataFrame(response.json()["predictions"])


def test_packaged_model_serves_in_an_environment_built_from_its_own_files(
    use_tracking, packaged, env_root
):
    model_dir = packaged["output_dir"]
    dataset = datasets.read_dataset(Path(mlflow.artifacts.download_artifacts(packaged["data_uri"])))
    image = dataset.test_images[0, :, :, 0]
    ok, png = cv2.imencode(".png", 255 - image)
    workshop = pd.DataFrame(image.astype(np.int64))
    encoded = pd.DataFrame({"image": [base64.b64encode(png.tobytes()).decode()]})
    in_process = mlflow.pyfunc.load_model(str(model_dir))

    with served_model(
        str(model_dir),
        use_tracking["uri"],
        use_tracking["root"] / "serve_uv.log",
        env_manager="uv",
        extra_env={"MLFLOW_ENV_ROOT": str(env_root)},
        start_seconds=START_SECONDS,
    ) as served:
        url = served["url"]
        served_workshop = answer_table(
            post(url, {"dataframe_split": workshop.to_dict(orient="split")})
        )
        served_encoded = answer_table(
            post(url, {"dataframe_split": encoded.to_dict(orient="split", index=False)})
        )
        bomb = base64.b64encode(png_bomb(10000, 10000)).decode()
        refused = post(url, {"dataframe_split": {"columns": ["image"], "data": [[bomb]]}})
        assert refused.status_code == 400, refused.text
        assert "MLPIPE_MAX_IMAGE_PIXELS" in refused.json()["message"]
        assert requests.get(f"{url}/ping", timeout=5).status_code == 200

    for served_answer, request in ((served_workshop, workshop), (served_encoded, encoded)):
        expected = in_process.predict(request)
        assert list(served_answer.columns) == list(expected.columns)
        assert served_answer["class_name"].tolist() == expected["class_name"].tolist()
        pd.testing.assert_frame_equal(
            served_answer.drop(columns="class_name"),
            expected.drop(columns="class_name"),
            check_dtype=False,
            atol=1e-6,
        )
    check_environment(env_root, model_dir, environment.PACKAGED_MODEL_DISTRIBUTIONS)


def test_keras_flavor_model_serves_in_an_environment_built_from_its_own_files(
    use_tracking, packaged, tmp_path
):
    keras_model_uri = f"runs:/{packaged['train_run_id']}/model"
    model_dir = Path(mlflow.artifacts.download_artifacts(keras_model_uri, dst_path=tmp_path))
    preprocessed = Path(mlflow.artifacts.download_artifacts(packaged["preprocessed_uri"]))
    split_arrays, meta = artifacts.load_preprocessed(preprocessed)
    images = normalize(split_arrays["test"][0][:4], meta["normalization"])
    expected = mlflow.keras.load_model(keras_model_uri).predict_on_batch(images)
    env_root = tmp_path / "envs"
    with served_model(
        keras_model_uri,
        use_tracking["uri"],
        tmp_path / "serve_uv.log",
        env_manager="uv",
        extra_env={"MLFLOW_ENV_ROOT": str(env_root)},
        start_seconds=START_SECONDS,
    ) as served:
        response = post(served["url"], {"inputs": images.tolist()})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(np.array(response.json()["predictions"]), expected, atol=1e-6)
    check_environment(env_root, model_dir, environment.KERAS_MODEL_DISTRIBUTIONS)
