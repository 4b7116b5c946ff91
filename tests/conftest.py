"""Shared fixtures: synthetic data, a temporary tracking store, and real `mlflow run` calls."""

import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_DIR = Path(__file__).resolve().parents[1]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in IDX format (the inverse of mlpipe_vision.datasets.parse_idx)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(size).to_bytes(4, "big") for size in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def synthetic_images(labels: np.ndarray, size: int = 28, seed: int = 0) -> np.ndarray:
    """Learnable images: each class is a bright bar at its own position, plus noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(len(labels), size, size)).astype(np.uint8)
    band = max(1, size // 10)
    for index, label in enumerate(labels):
        row = (int(label) * band) % (size - band)
        images[index, row : row + band, 2 : size - 2] = 230
    return images


def write_idx_mirror(
    folder: Path, train_count: int = 300, test_count: int = 100, classes: int = 10, seed: int = 0
) -> Path:
    """Write the four gzip IDX files of a tiny MNIST-like dataset into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, count in (("train", train_count), ("t10k", test_count)):
        labels = np.resize(np.arange(classes), count)
        rng.shuffle(labels)
        images = synthetic_images(labels, seed=seed + count)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    return folder


@pytest.fixture(scope="session")
def idx_mirror_dir(tmp_path_factory) -> Path:
    """A folder holding a tiny synthetic dataset as the four IDX files."""
    return write_idx_mirror(tmp_path_factory.mktemp("idx_mirror"))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Keep every test's download cache in its own temporary folder."""
    monkeypatch.setenv("MLPIPE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def tracking(tmp_path_factory):
    """A temporary sqlite tracking store with an experiment whose artifacts stay in tmp."""
    import mlflow

    root = tmp_path_factory.mktemp("tracking")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("tests", artifact_location=str(root / "artifacts"))
    return {"uri": uri, "experiment_id": experiment_id, "client": client, "root": root}


@pytest.fixture
def use_tracking(tracking, monkeypatch):
    """Point in-process MLflow calls at the temporary store and its experiment."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking["uri"])
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", tracking["experiment_id"])
    mlflow.set_tracking_uri(tracking["uri"])
    yield tracking
    mlflow.set_tracking_uri(None)


def mlflow_run(tracking: dict, entry_point: str, check: bool = True, **parameters) -> dict:
    """Run an entry point through the real `mlflow run` CLI, as a user would.

    Returns:
        {"run_id", "output" (stdout and stderr), "returncode"}.
    """
    command = [sys.executable, "-m", "mlflow", "run", str(REPO_DIR), "-e", entry_point]
    command += ["--env-manager", "local", "--experiment-id", tracking["experiment_id"]]
    for name, value in parameters.items():
        command += ["-P", f"{name}={value}"]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking["uri"],
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    completed = subprocess.run(
        command, cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=1200
    )
    output = completed.stdout + completed.stderr
    if check and completed.returncode != 0:
        raise AssertionError(f"mlflow run -e {entry_point} failed:\n{output[-6000:]}")
    # The last run ID printed is this command's own; nested stages print theirs before it.
    run_ids = re.findall(r"Run \(ID '([0-9a-f]+)'\)", output)
    return {
        "run_id": run_ids[-1] if run_ids else None,
        "output": output,
        "returncode": completed.returncode,
    }
