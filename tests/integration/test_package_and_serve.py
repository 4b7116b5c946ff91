"""package through `mlflow run`, then a real `mlflow models serve` answering over HTTP."""

import base64
import json
import os
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

from tests.conftest import REPO_DIR, mlflow_run

pytestmark = pytest.mark.integration

MODEL_NAME = "tiny_digits"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def packaged(tracking, idx_mirror_dir, tmp_path_factory):
    """Data stages, one epoch of training and package, all through `mlflow run`."""
    get_data = mlflow_run(tracking, "get_data", dataset="mnist", source=idx_mirror_dir, verify=0)
    data_uri = f"runs:/{get_data['run_id']}/dataset"
    preprocess = mlflow_run(tracking, "preprocess", data=data_uri)
    preprocessed_uri = f"runs:/{preprocess['run_id']}/preprocessed"
    train = mlflow_run(tracking, "train", data=preprocessed_uri, epochs=1, batch_size=32)
    output_dir = tmp_path_factory.mktemp("saved") / "model"
    package = mlflow_run(
        tracking,
        "package",
        model=f"runs:/{train['run_id']}/model",
        registered_model_name=MODEL_NAME,
        output_dir=output_dir,
    )
    return {
        "data_uri": data_uri,
        "preprocessed_uri": preprocessed_uri,
        "train_run_id": train["run_id"],
        "package": package,
        "output_dir": output_dir,
    }


@pytest.fixture(scope="module")
def server(tracking, packaged):
    """`mlflow models serve` of the registered alias on a free port, stopped afterwards."""
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking["uri"],
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    command = [sys.executable, "-m", "mlflow", "models", "serve"]
    command += ["-m", f"models:/{MODEL_NAME}@champion", "-p", str(port), "--env-manager", "local"]
    log_path = tracking["root"] / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"server exited:\n{log_path.read_text()[-4000:]}")
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        else:
            process.kill()
            raise AssertionError(f"server did not start:\n{log_path.read_text()[-4000:]}")
        yield url
        process.terminate()
        process.wait(timeout=30)


def invoke(url: str, body: dict | str) -> requests.Response:
    data = body if isinstance(body, str) else json.dumps(body)
    return requests.post(
        f"{url}/invocations",
        data=data,
        headers={"Content-Type": "application/json"},
        timeout=60,
    )


def raw_test_images(use_tracking, packaged) -> tuple[np.ndarray, np.ndarray]:
    path = mlflow.artifacts.download_artifacts(f"{packaged['data_uri']}/test.npz")
    with np.load(path) as test_split:
        return test_split["images"], test_split["labels"]


def test_package_registers_a_code_model_with_alias(use_tracking, packaged):
    client = use_tracking["client"]
    version = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert f"models:/{MODEL_NAME}@champion" in packaged["package"]["output"]
    assert "mlflow models serve -m" in packaged["package"]["output"]
    saved = packaged["output_dir"]
    mlmodel = yaml.safe_load((saved / "MLmodel").read_text())
    assert "model_code_path" in mlmodel["flavors"]["python_function"]
    assert not list(saved.rglob("*.pkl")), "models-from-code: no pickled Python object"
    assert (saved / "artifacts" / "network.keras").is_file()
    meta = json.loads((saved / "artifacts" / "meta.json").read_text())
    assert meta["class_names"] == [str(digit) for digit in range(10)]
    assert len(meta["normalization"]["mean"]) == 1
    assert version.run_id != packaged["train_run_id"]


def test_every_request_layout_is_answered(use_tracking, packaged, server):
    images, _ = raw_test_images(use_tracking, packaged)
    first, batch = images[0, :, :, 0], images[:3, :, :, 0]
    ok, png = cv2.imencode(".png", 255 - first)
    bodies = {
        "workshop H x W table": {
            "dataframe_split": {"columns": list(range(28)), "data": first.tolist()}
        },
        "N flattened rows": {
            "dataframe_split": {
                "columns": list(range(784)),
                "data": batch.reshape(3, 784).tolist(),
            }
        },
        "inputs N,H,W": {"inputs": batch.tolist()},
        "inputs N,H,W,C": {"inputs": images[:3].tolist()},
        "inputs N,H*W": {"inputs": batch.reshape(3, 784).tolist()},
        "base64 png": {
            "dataframe_split": {
                "columns": ["image"],
                "data": [[base64.b64encode(png.tobytes()).decode()]],
            }
        },
    }
    for layout, body in bodies.items():
        response = invoke(server, body)
        assert response.status_code == 200, (layout, response.text)
        predictions = response.json()["predictions"]
        assert len(predictions) == (1 if layout in ("workshop H x W table", "base64 png") else 3)
        row = predictions[0]
        assert set(row) >= {"class_id", "class_name", "probability", "p_0", "p_9"}
        assert sum(row[f"p_{digit}"] for digit in range(10)) == pytest.approx(1, abs=1e-4)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"dataframe_split": {"columns": list(range(27)), "data": [[0] * 27] * 28}}, "28 rows"),
        ({"dataframe_split": {"columns": list(range(100)), "data": [[0] * 100]}}, "784 columns"),
        ({"inputs": [[[0] * 28] * 27]}, "expected (28, 28)"),
        ({"dataframe_split": {"columns": [0, 1], "data": [["a", "b"]]}}, "not a number"),
        ({"inputs": [[[float("nan")] * 28] * 28]}, "NaN"),
        ({"dataframe_split": {"columns": ["image"], "data": [["bm90IGFuIGltYWdl"]]}}, "image"),
        ({"dataframe_split": {"columns": ["image"], "data": [[""]]}}, "empty"),
        ({"dataframe_split": {"columns": ["picture"], "data": [["x"]]}}, "picture"),
    ],
)
def test_malformed_requests_get_400_and_the_server_stays_up(server, body, message):
    response = invoke(server, body)
    assert response.status_code == 400, response.text
    assert message.lower() in response.json()["message"].lower()
    assert requests.get(f"{server}/ping", timeout=5).status_code == 200


def test_served_predictions_match_keras_on_preprocessed_data(use_tracking, packaged, server):
    """No train/serve skew: raw pixels through the server equal the network on preprocessed."""
    images, _ = raw_test_images(use_tracking, packaged)
    network = mlflow.keras.load_model(f"runs:/{packaged['train_run_id']}/model")
    preprocessed_dir = Path(mlflow.artifacts.download_artifacts(packaged["preprocessed_uri"]))
    preprocessed = np.load(preprocessed_dir / "test_images.npy")
    expected = network.predict_on_batch(preprocessed[:16])
    response = invoke(server, {"inputs": images[:16].tolist()})
    assert response.status_code == 200, response.text
    served = np.array(
        [[row[f"p_{digit}"] for digit in range(10)] for row in response.json()["predictions"]]
    )
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_a_drawing_goes_through_png_to_pandas_and_the_server(server, tmp_path):
    drawing = np.full((140, 100, 3), 255, dtype=np.uint8)
    cv2.line(drawing, (30, 30), (70, 110), (0, 0, 0), 10)
    cv2.imwrite(str(tmp_path / "drawing.png"), drawing)
    completed = subprocess.run(
        [
            sys.executable,
            "png_to_pandas.py",
            str(tmp_path / "drawing.png"),
            "--output",
            str(tmp_path / "example.json"),
        ],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "curl -s -X POST" in completed.stdout
    body = (tmp_path / "example.json").read_text()
    response = invoke(server, body)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["class_name"] in [str(d) for d in range(10)]
