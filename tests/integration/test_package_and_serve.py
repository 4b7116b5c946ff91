"""package through `mlflow run`, then a real `mlflow models serve` answering over HTTP."""

import base64
import json
import subprocess
import sys
from pathlib import Path

import cv2
import keras
import mlflow
import numpy as np
import pytest
import requests
import yaml

from bench.memory import process_tree_peak_memory
from mlpipe_vision import artifacts, datasets
from mlpipe_vision.images import normalize
from tests.conftest import (
    PACKAGED_MODEL_NAME,
    REPO_DIR,
    mlflow_run,
    mlflow_run_command,
    png_bomb,
    served_model,
)

pytestmark = pytest.mark.integration

MODEL_NAME = PACKAGED_MODEL_NAME


@pytest.fixture(scope="module")
def served(tracking, packaged):
    """`mlflow models serve` of the registered alias in this environment, stopped afterwards."""
    with served_model(
        f"models:/{MODEL_NAME}@champion", tracking["uri"], tracking["root"] / "serve.log"
    ) as running:
        yield running


@pytest.fixture(scope="module")
def server(served):
    return served["url"]


def invoke(url: str, body: dict | str) -> requests.Response:
    data = body if isinstance(body, str) else json.dumps(body)
    return requests.post(
        f"{url}/invocations",
        data=data,
        headers={"Content-Type": "application/json"},
        timeout=60,
    )


def raw_test_images(use_tracking, packaged) -> tuple[np.ndarray, np.ndarray]:
    dataset = datasets.read_dataset(Path(mlflow.artifacts.download_artifacts(packaged["data_uri"])))
    return dataset.test_images, dataset.test_labels


def normalized_test_images(preprocessed_dir: Path) -> np.ndarray:
    """The test split of a `preprocessed/` folder as training feeds it to the network."""
    split_arrays, meta = artifacts.load_preprocessed(preprocessed_dir)
    return normalize(split_arrays["test"][0], meta["normalization"])


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


def test_packaging_the_same_train_run_again_reuses_its_version(use_tracking, packaged, tmp_path):
    client = use_tracking["client"]
    versions = client.search_model_versions(f"name = '{MODEL_NAME}'")
    model = f"runs:/{packaged['train_run_id']}/model"
    # Its own temporary folder, to see that package leaves nothing behind in it.
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    again = mlflow_run(
        dict(use_tracking, env={"TMPDIR": str(temporary)}),
        "package",
        model=model,
        registered_model_name=MODEL_NAME,
    )
    assert "reused, not registered again" in again["output"]
    assert len(client.search_model_versions(f"name = '{MODEL_NAME}'")) == len(versions)
    # `mlflow run` itself leaves an empty folder for its `path` parameters; no file stays.
    assert not [path for path in temporary.rglob("*") if path.is_file()]


def test_two_packagings_at_once_register_one_version(use_tracking, packaged):
    client = use_tracking["client"]
    model = f"runs:/{packaged['train_run_id']}/model"
    commands = [
        mlflow_run_command(use_tracking, "package", model=model, registered_model_name="raced")
        for _ in range(2)
    ]
    processes = [
        subprocess.Popen(command, env=env, cwd=REPO_DIR, stdout=subprocess.PIPE, text=True)
        for command, env in commands
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    versions = client.search_model_versions("name = 'raced'")
    assert len(versions) == 1, [(v.version, v.tags) for v in versions]
    alias = client.get_model_version_by_alias("raced", "champion")
    assert alias.version == versions[0].version


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
    preprocessed = normalized_test_images(preprocessed_dir)
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


def base64_body(encoded: bytes) -> dict:
    return {
        "dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(encoded).decode()]]}
    }


@pytest.mark.parametrize(
    ("side", "message"),
    [
        (10000, "10000x10000 = 100,000,000 pixels; at most 25,000,000"),
        (20000, "more than 178,956,970 pixels; at most 25,000,000"),
    ],
)
def test_an_image_too_large_to_decode_gets_400_and_is_never_decoded(served, side, message):
    """A ~0.1-0.4 MB PNG that decodes to side x side bytes: refused from its header."""
    body = base64_body(png_bomb(side, side))
    peak_before = process_tree_peak_memory(served["process"].pid)
    response = invoke(served["url"], body)
    assert response.status_code == 400, response.text
    assert message in response.json()["message"]
    assert "MLPIPE_MAX_IMAGE_PIXELS" in response.json()["message"]
    # Decoding would have needed side * side bytes (100 MB and more) at once.
    growth = process_tree_peak_memory(served["process"].pid) - peak_before
    assert growth < side * side // 4, f"peak memory grew by {growth / 1e6:.0f} MB"
    assert requests.get(f"{served['url']}/ping", timeout=5).status_code == 200


def test_a_request_over_the_image_count_limit_gets_400_and_the_limit_itself_passes(server):
    images = np.zeros((1001, 784), dtype=np.uint8).tolist()
    columns = list(range(784))
    response = invoke(server, {"dataframe_split": {"columns": columns, "data": images}})
    assert response.status_code == 400, response.text
    assert "1001 images; at most 1000" in response.json()["message"]
    assert "MLPIPE_MAX_REQUEST_IMAGES" in response.json()["message"]
    response = invoke(server, {"inputs": np.zeros((1001, 28, 28), dtype=np.uint8).tolist()})
    assert response.status_code == 400, response.text
    response = invoke(server, {"dataframe_split": {"columns": columns, "data": images[:1000]}})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 1000


def test_the_limits_are_read_from_the_server_environment(tracking, packaged, tmp_path):
    with served_model(
        str(packaged["output_dir"]),
        tracking["uri"],
        tmp_path / "serve.log",
        extra_env={"MLPIPE_MAX_REQUEST_IMAGES": "2", "MLPIPE_MAX_IMAGE_PIXELS": "100"},
    ) as running:
        response = invoke(running["url"], {"inputs": np.zeros((3, 28, 28)).tolist()})
        assert response.status_code == 400, response.text
        assert "3 images; at most 2" in response.json()["message"]
        response = invoke(running["url"], base64_body(png_bomb(11, 10)))
        assert response.status_code == 400, response.text
        assert "11x10 = 110 pixels; at most 100" in response.json()["message"]
        response = invoke(running["url"], base64_body(png_bomb(10, 10)))
        assert response.status_code == 200, response.text


def test_a_mixed_precision_network_from_a_local_folder_packages_and_answers_in_float32(
    use_tracking, packaged, tmp_path
):
    """Trained as on a GPU box (float16 compute), on data that is not a runs:/ URI."""
    preprocessed_dir = Path(
        mlflow.artifacts.download_artifacts(packaged["preprocessed_uri"], dst_path=tmp_path)
    )
    # MLproject's `uri` parameters take a local folder as a file: URI.
    data_uri = preprocessed_dir.as_uri()
    train = mlflow_run(
        use_tracking,
        "train",
        data=data_uri,
        epochs=1,
        batch_size=32,
        mixed_precision="true",
    )
    train_run = use_tracking["client"].get_run(train["run_id"])
    assert train_run.data.tags["mlpipe.dtype_policy"] == "mixed_float16"
    keras_model_uri = f"runs:/{train['run_id']}/model"
    mlflow_run(
        use_tracking,
        "package",
        model=keras_model_uri,
        registered_model_name="mixed_digits",
        output_dir=tmp_path / "model",
    )
    network = keras.models.load_model(tmp_path / "model" / "artifacts" / "network.keras")
    assert {layer.dtype_policy.name for layer in network._flatten_layers()} == {"float32"}

    # The served answer against the network as trained, computing in float16.
    images, _ = raw_test_images(use_tracking, packaged)
    answer = mlflow.pyfunc.load_model(str(tmp_path / "model")).predict(images[:16])
    served = answer[[f"p_{digit}" for digit in range(10)]].to_numpy()
    assert served.dtype == np.float64
    trained = mlflow.keras.load_model(keras_model_uri)
    assert trained.get_layer("dense").compute_dtype == "float16"
    preprocessed = normalized_test_images(preprocessed_dir)[:16]
    np.testing.assert_allclose(served, trained.predict_on_batch(preprocessed), atol=2e-3)
    np.testing.assert_allclose(served, network.predict_on_batch(preprocessed), atol=1e-6)

    explicit = mlflow_run(
        use_tracking,
        "package",
        model=keras_model_uri,
        registered_model_name="mixed_digits",
        mean=30,
        std=60,
        output_dir=tmp_path / "explicit",
    )
    assert "registered mixed_digits version 2" in explicit["output"]
    meta = json.loads((tmp_path / "explicit" / "artifacts" / "meta.json").read_text())
    assert meta["normalization"] == {"mean": [30.0], "std": [60.0]}
    assert meta["trained_on"] == data_uri
