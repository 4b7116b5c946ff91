"""Shared fixtures: synthetic data, a temporary tracking store, and real `mlflow run` calls."""

import contextlib
import gzip
import os
import re
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from bench.memory import run_measured

REPO_DIR = Path(__file__).resolve().parents[1]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
PACKAGED_MODEL_NAME = "tiny_digits"


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in IDX format (the inverse of mlpipe_vision.idx_files.parse_idx)."""
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


def mlflow_run_command(
    tracking: dict, entry_point: str, **parameters
) -> tuple[list[str], dict[str, str]]:
    """The `mlflow run` command line and environment of an entry point, as a user runs it.

    `tracking` may also hold "env" (more environment variables, such as a login), "cwd"
    (the working folder; the repository by default) and "project" (the project folder; the
    repository by default).
    """
    project = tracking.get("project", REPO_DIR)
    command = [sys.executable, "-m", "mlflow", "run", str(project), "-e", entry_point]
    command += ["--env-manager", "local", "--experiment-id", tracking["experiment_id"]]
    for name, value in parameters.items():
        command += ["-P", f"{name}={value}"]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking["uri"],
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **tracking.get("env", {}),
    }
    return command, env


def mlflow_run(tracking: dict, entry_point: str, check: bool = True, **parameters) -> dict:
    """Run an entry point through the real `mlflow run` CLI (`mlflow_run_command`).

    Returns:
        {"run_id", "output" (stdout and stderr), "returncode", "peak_rss" (bytes: the peak
        resident memory of the command's whole process tree)}.
    """
    command, env = mlflow_run_command(tracking, entry_point, **parameters)
    completed = run_measured(command, timeout=2400, cwd=tracking.get("cwd", REPO_DIR), env=env)
    output = completed["output"]
    if check and completed["returncode"] != 0:
        raise AssertionError(f"mlflow run -e {entry_point} failed:\n{output[-6000:]}")
    # The last run ID printed is this command's own; nested stages print theirs before it.
    run_ids = re.findall(r"Run \(ID '([0-9a-f]+)'\)", output)
    return {
        "run_id": run_ids[-1] if run_ids else None,
        "output": output,
        "returncode": completed["returncode"],
        "peak_rss": completed["peak_rss"],
    }


@pytest.fixture(scope="session")
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
        registered_model_name=PACKAGED_MODEL_NAME,
        output_dir=output_dir,
    )
    return {
        "data_uri": data_uri,
        "preprocessed_uri": preprocessed_uri,
        "train_run_id": train["run_id"],
        "package": package,
        "output_dir": output_dir,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def served_model(
    model_uri: str,
    tracking_uri: str,
    log_path: Path,
    env_manager: str = "local",
    extra_env: dict[str, str] | None = None,
    start_seconds: float = 180,
) -> Iterator[dict]:
    """Run `mlflow models serve` on a free port until the block ends.

    Yields:
        {"url", "process", "start_seconds" (until /ping first answered)}.
    """
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        **(extra_env or {}),
    }
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri]
    command += ["-p", str(port), "--env-manager", env_manager]
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        while True:
            if process.poll() is not None:
                raise AssertionError(f"server exited:\n{log_path.read_text()[-4000:]}")
            if time.monotonic() - started > start_seconds:
                raise AssertionError(f"server did not start:\n{log_path.read_text()[-4000:]}")
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        yield {"url": url, "process": process, "start_seconds": time.monotonic() - started}
    finally:
        # The server runs in its own session: uvicorn and any environment shell go with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        process.wait(timeout=30)


def png_bomb(width: int, height: int) -> bytes:
    """A valid grayscale PNG of width x height black pixels, compressed to almost nothing.

    Written row by row, so making a 20000x20000 image takes little memory here; decoding it
    takes width x height bytes.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    compressor = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then black pixels
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def docker_answers() -> bool:
    completed = subprocess.run(["docker", "info"], capture_output=True)
    return completed.returncode == 0


@pytest.fixture(scope="session")
def docker_bases() -> None:
    """A Docker engine, and the base images our Dockerfiles name (local stand-ins where the
    public ones cannot be pulled: docker/bases.sh reuses any that are present)."""
    if not docker_answers():
        pytest.fail(
            "no Docker engine answers: start one (as root: dockerd --bridge=none "
            "--iptables=false &; .ci/run does) or deselect these tests with -m 'not docker'"
        )
    subprocess.run(["bash", str(REPO_DIR / "docker" / "bases.sh")], check=True)


@pytest.fixture(scope="session")
def training_image(docker_bases) -> str:
    """The training image, built once per test run by `make docker-build` from this tree."""
    completed = subprocess.run(
        ["make", "--no-print-directory", "docker-build"],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return "mlpipe-gpu:latest"


def clone_project(destination: Path) -> Path:
    """A git clone of the repository with the working tree's changes copied over it.

    Stands for a user's own checkout: its default sqlite store and artifacts are its own.
    """
    subprocess.run(["git", "clone", "-q", str(REPO_DIR), str(destination)], check=True)
    changed = subprocess.run(
        ["git", "ls-files", "-z", "--modified", "--others", "--exclude-standard"],
        cwd=REPO_DIR,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (item.decode() for item in changed)):
        source, target = REPO_DIR / name, destination / name
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            target.chmod(source.stat().st_mode)
    return destination
