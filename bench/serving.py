"""Serving latency and throughput of `mlflow models serve` on the packaged model.

Builds everything it serves from scratch in a temporary sqlite tracking store: the real
pipeline on real Fashion-MNIST (get_data, preprocess on 10 %, one epoch of training,
package), then serves, side by side:

- product: the packaged pyfunc (`mlpipe_vision.pyfunc_model`, registered as bench_fashion@champion);
- product_uv: the same model under `--env-manager uv`, in an environment MLflow builds from
  the model's own requirements in a fresh folder (uv's download cache stays warm), as a
  user serving it anywhere but the project's venv would;
- keras_flavor (a): the same network logged with MLflow's built-in Keras flavor;
- predict_pyfunc (b): the product's pyfunc with `Model.predict` instead of its compiled
  path, the way the original workshop called the network (bench/pyfuncs/predict_pyfunc.py);
- floor (c): the network alone, called in this process (`predict_on_batch` and
  `network(x, training=False)`), with no server at all;
- server_floor (d): a pyfunc that does no work and answers a precomputed table of the
  product's shape, so its latency is the scoring server's own cost (HTTP, FastAPI, JSON
  and pandas) for the same request body: what no model can go below
  (bench/pyfuncs/server_floor.py).

Every other server runs under `python -m mlflow models serve --env-manager local`. The two
product servers start first, one at a time, and their start-up (until /ping answers) is
reported too; the rest start together after them. Requests carry
one 28x28 image (the workshop's `dataframe_split` body: 28 rows x 28 columns of raw 0-255
pixels; for the Keras flavor the normalized tensor `{"inputs": (1, 28, 28, 1)}`) or a batch
of 64 (64 rows x 784 columns; `{"inputs": (64, 28, 28, 1)}`), sent by one client
(sequential) or by 8 concurrent clients. Servers are measured in interleaved rounds
(round-robin, the order rotating each round) because absolute times on shared machines
drift; ratios are taken within each round and their median is reported.

Reads: /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist).
Writes: bench/results/serving.json (or --output) and a markdown table on stdout.

Usage:
    .venv/bin/python bench/serving.py            # full run, about 5 minutes
    .venv/bin/python bench/serving.py --quick    # smoke run, under about 90 s
"""

import argparse
import contextlib
import json
import os
import platform
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

REPO_DIR = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT_PATH = REPO_DIR / "bench" / "results" / "serving.json"
# The comparison pyfuncs (b) and (d), logged as models-from-code.
PYFUNCS_DIR = REPO_DIR / "bench" / "pyfuncs"
REGISTERED_MODEL_NAME = "bench_fashion"
BATCH_SIZE = 64
SERVER_START_SECONDS = 300
# The first uv build on a machine downloads TensorFlow (~700 MB); later ones use uv's cache.
UV_SERVER_START_SECONDS = 900
TARGET_P50_MS = 5.0
TARGET_SPEEDUP = 15.0

SERVERS = ("product", "product_uv", "keras_flavor", "predict_pyfunc", "server_floor")
# Started alone, one after the other, so that their start-up times are their own.
TIMED_STARTS = ("product", "product_uv")
FLOORS = ("floor_predict_on_batch", "floor_call")
LABELS = {
    "product": "product (packaged pyfunc)",
    "product_uv": "product, --env-manager uv",
    "keras_flavor": "(a) MLflow Keras flavor",
    "predict_pyfunc": "(b) pyfunc with Model.predict",
    "floor_predict_on_batch": "(c) in-process predict_on_batch",
    "floor_call": "(c) in-process network(x)",
    "server_floor": "(d) do-nothing pyfunc (server floor)",
}
TABLE_ORDER = (
    "product",
    "product_uv",
    "keras_flavor",
    "predict_pyfunc",
    "floor_predict_on_batch",
    "floor_call",
    "server_floor",
)
CASES = (
    ("single", "sequential"),
    ("batch", "sequential"),
    ("single", "concurrent"),
    ("batch", "concurrent"),
)


@dataclass
class Settings:
    """How much to measure."""

    rounds: int
    requests: int
    concurrent_requests: int
    clients: int
    block_seconds: float
    warmup: int
    percentage: float


@dataclass
class Server:
    """One `mlflow models serve` subprocess."""

    name: str
    model_uri: str
    port: int
    log_path: Path
    env_manager: str = "local"
    process: subprocess.Popen | None = None
    started: float = 0.0
    start_seconds: float | None = None

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Samples:
    """Latencies of one target in one case, kept per round."""

    latencies_by_round: list[list[float]] = field(default_factory=list)
    seconds_by_round: list[float] = field(default_factory=list)

    def add(self, latencies: list[float], seconds: float) -> None:
        """Record one round's block."""
        self.latencies_by_round.append(latencies)
        self.seconds_by_round.append(seconds)


# ----------------------------------------------------------------------------- building


def prepare_tracking(work_dir: Path) -> str:
    """Point MLflow at a fresh sqlite store in `work_dir` with local artifacts there."""
    import mlflow

    tracking_uri = f"sqlite:///{work_dir / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    os.environ["MLPIPE_CACHE_DIR"] = str(work_dir / "cache")
    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = mlflow.MlflowClient().create_experiment(
        "bench_serving", artifact_location=str(work_dir / "artifacts")
    )
    mlflow.set_experiment(experiment_id=experiment_id)
    return tracking_uri


def build_product(percentage: float) -> dict[str, str]:
    """Run get_data, preprocess, train (1 epoch) and package on real Fashion-MNIST.

    Returns:
        The data URI, the train run's Keras model URI and the packaged model URI.
    """
    from mlpipe_vision import datasets, packaging, preprocessing, training
    from mlpipe_vision.train_parameters import TrainParameters

    data_uri = datasets.run_get_data("fashion_mnist")
    preprocessed_uri = preprocessing.run_preprocess(data_uri, percentage=percentage)
    keras_model_uri = training.run_train(
        preprocessed_uri,
        TrainParameters(
            convolutions=3,
            conv_filters=32,
            dense_units=128,
            dropout_rate=0.3,
            epochs=1,
            batch_size=64,
            learning_rate=0.001,
            optimizer="adam",
            augment=False,
            early_stopping_patience=0,
            seed=42,
            weights="none",
            fine_tune_epochs=0,
        ),
    )
    product_uri = packaging.run_package(
        keras_model_uri, registered_model_name=REGISTERED_MODEL_NAME
    )
    return {"data": data_uri, "keras_model": keras_model_uri, "product": product_uri}


def log_keras_flavor(network: object, example: np.ndarray) -> str:
    """Log the network with MLflow's own Keras flavor (a); return its model URI."""
    import mlflow
    from mlflow.models import infer_signature

    from mlpipe_vision import environment

    signature = infer_signature(example, np.asarray(network.predict_on_batch(example)))
    with mlflow.start_run(run_name="bench_keras_flavor"):
        # input_example raises FileNotFoundError with the Keras flavor in MLflow 3.17.2.
        info = mlflow.keras.log_model(
            network,
            name="keras_flavor",
            signature=signature,
            pip_requirements=environment.pinned_requirements(environment.KERAS_MODEL_DISTRIBUTIONS),
        )
    return info.model_uri


def log_code_pyfunc(name: str, product_dir: Path) -> str:
    """Log bench/pyfuncs/<name>.py as code with the product's own artifacts; return its URI.

    Args:
        name: Run name, model name and file name in bench/pyfuncs/.
        product_dir: The downloaded packaged model, whose network and meta.json are reused.
    """
    import mlflow

    from mlpipe_vision import environment, packaging

    code_path = PYFUNCS_DIR / f"{name}.py"
    meta = json.loads((product_dir / "artifacts" / "meta.json").read_text())
    with mlflow.start_run(run_name=f"bench_{name}"):
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(code_path),
            artifacts={
                "network": str(product_dir / "artifacts" / "network.keras"),
                "meta": str(product_dir / "artifacts" / "meta.json"),
            },
            code_paths=[str(packaging.MLPIPE_DIR)],
            signature=packaging.output_signature(meta["class_names"]),
            pip_requirements=environment.pinned_requirements(
                environment.PACKAGED_MODEL_DISTRIBUTIONS
            ),
        )
    return info.model_uri


def load_test_images(data_uri: str, count: int) -> np.ndarray:
    """The first `count` raw uint8 test images (N, 28, 28, 1) of the logged dataset."""
    import mlflow

    from mlpipe_vision import artifacts, shards

    with tempfile.TemporaryDirectory() as tmp:
        dataset_dir = Path(mlflow.artifacts.download_artifacts(data_uri, dst_path=tmp))
        meta = artifacts.read_dataset_meta(dataset_dir)
        return shards.read_images(dataset_dir, meta, "test", np.arange(count))


# ------------------------------------------------------------------------------ servers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_environment(tracking_uri: str) -> dict[str, str]:
    """The environment of a server: the temporary store and this venv first on PATH."""
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def start_server(server: Server, environment: dict[str, str]) -> None:
    """Start `mlflow models serve` in its own process group, logging to `server.log_path`."""
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", server.model_uri]
    command += ["-p", str(server.port), "--env-manager", server.env_manager]
    server.started = time.monotonic()
    with open(server.log_path, "w") as log:
        server.process = subprocess.Popen(
            command,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_until_ready(servers: list[Server], timeout_seconds: float) -> None:
    """Wait for every server's /ping to answer 200.

    Raises:
        RuntimeError: If a server exits or does not answer in time, with its log's tail.
    """
    deadline = time.monotonic() + timeout_seconds
    waiting = list(servers)
    while waiting:
        for server in list(waiting):
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.name} server exited:\n{tail(server.log_path)}")
            with contextlib.suppress(requests.ConnectionError, requests.Timeout):
                if requests.get(f"{server.url}/ping", timeout=2).status_code == 200:
                    server.start_seconds = time.monotonic() - server.started
                    waiting.remove(server)
        if waiting and time.monotonic() > deadline:
            names = ", ".join(server.name for server in waiting)
            raise RuntimeError(f"{names} did not start:\n{tail(waiting[0].log_path)}")
        time.sleep(0.5)


def stop_servers(servers: list[Server]) -> None:
    """Terminate each server's process group and wait for it; kill it if it lingers."""
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGTERM)
    for server in servers:
        if server.process is None:
            continue
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=10)


def tail(path: Path, characters: int = 4000) -> str:
    """The end of a log file."""
    return path.read_text(errors="replace")[-characters:] if path.exists() else ""


# ------------------------------------------------------------------------------- bodies


def pixel_bodies(images: np.ndarray) -> dict[str, bytes]:
    """Raw-pixel bodies: one image as the workshop's H x W table, a batch as N x H*W rows."""
    single = images[0, :, :, 0].astype(np.int64)
    batch = images[:BATCH_SIZE].reshape(BATCH_SIZE, -1).astype(np.int64)
    return {
        "single": json_bytes(
            {"dataframe_split": {"columns": list(range(single.shape[1])), "data": single.tolist()}}
        ),
        "batch": json_bytes(
            {"dataframe_split": {"columns": list(range(batch.shape[1])), "data": batch.tolist()}}
        ),
    }


def tensor_bodies(normalized: np.ndarray) -> dict[str, bytes]:
    """Normalized-tensor bodies for the Keras flavor, rounded to keep JSON compact."""
    rounded = np.round(normalized.astype(np.float64), 4)
    return {
        "single": json_bytes({"inputs": rounded[:1].tolist()}),
        "batch": json_bytes({"inputs": rounded[:BATCH_SIZE].tolist()}),
    }


def json_bytes(body: dict) -> bytes:
    """Serialize a body once, so clients only send bytes."""
    return json.dumps(body).encode()


def post(session: requests.Session, url: str, body: bytes) -> requests.Response:
    """POST a JSON body to /invocations."""
    return session.post(
        f"{url}/invocations",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=120,
    )


def check_answer(name: str, response: requests.Response, expected_rows: int) -> None:
    """Refuse to measure a server that answers wrongly.

    Raises:
        RuntimeError: If the status is not 200 or the number of predictions is wrong.
    """
    if response.status_code != 200:
        raise RuntimeError(f"{name} answered {response.status_code}: {response.text[:500]}")
    rows = len(response.json()["predictions"])
    if rows != expected_rows:
        raise RuntimeError(f"{name} answered {rows} predictions; expected {expected_rows}")


# ---------------------------------------------------------------------------- measuring


def measure_sequential(
    call: Callable[[], object], count: int, time_limit: float
) -> tuple[list[float], float]:
    """Call `count` times one after another (or until `time_limit` seconds passed).

    Returns:
        (latencies in seconds, wall seconds of the block).
    """
    latencies = []
    started = time.perf_counter()
    while len(latencies) < count and time.perf_counter() - started < time_limit:
        before = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - before)
    return latencies, time.perf_counter() - started


def connected_session(url: str) -> requests.Session:
    """A `requests.Session` whose kept-alive connection to the server is already open."""
    session = requests.Session()
    session.get(f"{url}/ping", timeout=10)
    return session


def measure_concurrent(
    url: str, body: bytes, clients: int, count: int, time_limit: float
) -> tuple[list[float], float]:
    """Send `count` requests from `clients` threads at once (or until `time_limit`).

    A `ThreadPoolExecutor` of `clients` workers sends them, each worker taking one of
    `clients` kept-alive sessions while it waits for its answer, so every client sends its
    next request as soon as the previous one is answered.

    Returns:
        (latencies in seconds, wall seconds from the first send to the last answer).
    """
    sessions: queue.SimpleQueue[requests.Session] = queue.SimpleQueue()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        # Start the workers and open the connections before the clock starts.
        for session in pool.map(connected_session, [url] * clients):
            sessions.put(session)
        started = time.perf_counter()
        deadline = started + time_limit

        def send(_: int) -> tuple[float, requests.Response] | None:
            if time.perf_counter() > deadline:
                return None
            session = sessions.get()  # never waits: as many sessions as workers
            try:
                before = time.perf_counter()
                response = post(session, url, body)
                return time.perf_counter() - before, response
            finally:
                sessions.put(session)

        answers = [answer for answer in pool.map(send, range(count)) if answer is not None]
        seconds = time.perf_counter() - started
    while not sessions.empty():
        sessions.get().close()
    errors = [
        f"{response.status_code}: {response.text[:200]}"
        for _, response in answers
        if response.status_code != 200
    ]
    if errors:
        raise RuntimeError(f"{url} failed {len(errors)} requests, e.g. {errors[0]}")
    return [latency for latency, _ in answers], seconds


def rotated(names: tuple[str, ...], offset: int) -> list[str]:
    """The names starting at `offset`, so no target is always measured first."""
    shift = offset % len(names)
    return list(names[shift:] + names[:shift])


def run_rounds(
    servers: dict[str, Server],
    bodies: dict[str, dict[str, bytes]],
    floor_calls: dict[str, dict[str, Callable[[], object]]],
    settings: Settings,
) -> dict[tuple[str, str, str], Samples]:
    """Measure every target in every case, round-robin, for `settings.rounds` rounds.

    Returns:
        Samples keyed by (target, size, mode); floors are measured sequentially only.
    """
    samples: dict[tuple[str, str, str], Samples] = {}
    sessions = {name: requests.Session() for name in servers}
    targets = SERVERS + FLOORS
    for round_index in range(settings.rounds):
        round_started = time.perf_counter()
        for size, mode in CASES:
            for target in rotated(targets, round_index):
                if target in floor_calls:
                    if mode != "sequential":
                        continue
                    latencies, seconds = measure_sequential(
                        floor_calls[target][size], settings.requests, settings.block_seconds
                    )
                elif mode == "sequential":
                    server, body = servers[target], bodies[target][size]
                    session = sessions[target]
                    latencies, seconds = measure_sequential(
                        lambda server=server, body=body, session=session: post(
                            session, server.url, body
                        ),
                        settings.requests,
                        settings.block_seconds,
                    )
                else:
                    latencies, seconds = measure_concurrent(
                        servers[target].url,
                        bodies[target][size],
                        settings.clients,
                        settings.concurrent_requests,
                        settings.block_seconds,
                    )
                samples.setdefault((target, size, mode), Samples()).add(latencies, seconds)
        elapsed = time.perf_counter() - round_started
        print(f"round {round_index + 1}/{settings.rounds} done in {elapsed:.1f} s", flush=True)
    for session in sessions.values():
        session.close()
    return samples


def warm_up(servers: dict[str, Server], bodies: dict[str, dict[str, bytes]], repeats: int) -> None:
    """Send each body a few times to each server and check the answers."""
    with requests.Session() as session:
        for name, server in servers.items():
            for size, body in bodies[name].items():
                expected_rows = 1 if size == "single" else BATCH_SIZE
                for _ in range(repeats):
                    check_answer(name, post(session, server.url, body), expected_rows)


# ---------------------------------------------------------------------------- reporting


def percentile_ms(latencies: list[float], percent: float) -> float:
    """A percentile of latencies in seconds, in milliseconds."""
    return float(np.percentile(np.asarray(latencies) * 1000.0, percent))


def summarize(samples: dict[tuple[str, str, str], Samples]) -> dict[str, dict]:
    """Pool each target's latencies per case into p50, p99 and requests per second.

    Returns:
        {"<target>/<size>/<mode>": {...}} with round medians as well as pooled values.
    """
    summary = {}
    for (target, size, mode), sample in samples.items():
        pooled = [latency for block in sample.latencies_by_round for latency in block]
        if not pooled:
            continue
        summary[f"{target}/{size}/{mode}"] = {
            "target": target,
            "size": size,
            "mode": mode,
            "requests": len(pooled),
            "p50_ms": percentile_ms(pooled, 50),
            "p99_ms": percentile_ms(pooled, 99),
            "mean_ms": float(np.mean(pooled) * 1000.0),
            "requests_per_second": len(pooled) / sum(sample.seconds_by_round),
            "round_p50_ms": [percentile_ms(block, 50) for block in sample.latencies_by_round],
        }
    return summary


def ratios(summary: dict[str, dict]) -> dict[str, dict]:
    """p50 of each comparison divided by the product's, per round; their median and range.

    Returns:
        {"<other>_over_product/<size>/<mode>": {"median", "min", "max", "per_round"}}.
    """
    result = {}
    for size, mode in CASES:
        product = summary.get(f"product/{size}/{mode}")
        if product is None:
            continue
        for other in ("product_uv", "keras_flavor", "predict_pyfunc", "server_floor", *FLOORS):
            entry = summary.get(f"{other}/{size}/{mode}")
            if entry is None:
                continue
            per_round = [
                other_p50 / product_p50
                for other_p50, product_p50 in zip(
                    entry["round_p50_ms"], product["round_p50_ms"], strict=True
                )
            ]
            result[f"{other}_over_product/{size}/{mode}"] = {
                "median": statistics.median(per_round),
                "min": min(per_round),
                "max": max(per_round),
                "per_round": per_round,
            }
    return result


def check_targets(summary: dict[str, dict], ratio_table: dict[str, dict]) -> dict[str, dict]:
    """The issue's targets for one image per request, sent sequentially."""
    p50 = summary["product/single/sequential"]["p50_ms"]
    targets = {
        "product_single_p50_ms": {
            "value": p50,
            "target": f"<= {TARGET_P50_MS}",
            "met": p50 <= TARGET_P50_MS,
        }
    }
    floor_p50s = summary["server_floor/single/sequential"]["round_p50_ms"]
    for other in ("keras_flavor", "predict_pyfunc"):
        speedup = ratio_table[f"{other}_over_product/single/sequential"]["median"]
        other_p50s = summary[f"{other}/single/sequential"]["round_p50_ms"]
        targets[f"{other}_over_product_single_p50"] = {
            "value": speedup,
            "target": f">= {TARGET_SPEEDUP}",
            "met": speedup >= TARGET_SPEEDUP,
            # What a model doing no work at all would reach behind the same server.
            "ceiling_with_a_do_nothing_model": statistics.median(
                other_p50 / floor_p50
                for other_p50, floor_p50 in zip(other_p50s, floor_p50s, strict=True)
            ),
        }
    return targets


def markdown_table(summary: dict[str, dict], ratio_table: dict[str, dict], clients: int) -> str:
    """The results as a markdown table, one row per target and case."""
    lines = [
        "| request | clients | served model | p50 ms | p99 ms | req/s | p50 vs product |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for size, mode in CASES:
        request = "1 image (28x28)" if size == "single" else f"batch of {BATCH_SIZE}"
        for target in TABLE_ORDER:
            entry = summary.get(f"{target}/{size}/{mode}")
            if entry is None:
                continue
            ratio = ratio_table.get(f"{target}_over_product/{size}/{mode}")
            shown_ratio = "1.00x" if target == "product" else f"{ratio['median']:.2f}x"
            shown_clients = "1" if mode == "sequential" else str(clients)
            lines.append(
                f"| {request} | {shown_clients} | {LABELS[target]} | {entry['p50_ms']:.2f} | "
                f"{entry['p99_ms']:.2f} | {entry['requests_per_second']:.1f} | {shown_ratio} |"
            )
    return "\n".join(lines)


def machine_info() -> dict[str, object]:
    """CPU, OS and library versions of this run."""
    import keras
    import mlflow
    import pandas as pd
    import tensorflow as tf

    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "cpu": cpu_model or platform.processor(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "mlflow": mlflow.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
    }


# --------------------------------------------------------------------------------- main


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        description=(
            "Benchmark `mlflow models serve` on the packaged model against MLflow's Keras "
            "flavor, a Model.predict pyfunc and the in-process network (p50, p99, req/s)."
        )
    )
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument(
        "--requests",
        type=int,
        default=25,
        help="sequential requests per target, case and round (default 25)",
    )
    parser.add_argument(
        "--concurrent-requests",
        type=int,
        default=64,
        help="requests per target, case and round with concurrent clients (default 64)",
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument(
        "--block-seconds",
        type=float,
        default=3.0,
        help="time cap of one target's block in one round (default 3.0)",
    )
    parser.add_argument(
        "--warmup", type=int, default=5, help="warm-up requests per body and server (default 5)"
    )
    parser.add_argument(
        "--percentage",
        type=float,
        default=10.0,
        help="share of Fashion-MNIST to train the served network on (default 10)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2 rounds of a few requests, 2 %% of the data",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT_PATH,
        help=f"JSON results path (default {DEFAULT_OUTPUT_PATH.relative_to(REPO_DIR)})",
    )
    parser.add_argument(
        "--keep-dir",
        action="store_true",
        help="keep the temporary tracking store and server logs, and print where they are",
    )
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.rounds, arguments.requests, arguments.concurrent_requests = 2, 8, 16
        arguments.block_seconds, arguments.warmup, arguments.percentage = 1.0, 2, 2.0
    for name in ("rounds", "requests", "concurrent_requests", "clients", "warmup"):
        if getattr(arguments, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if arguments.block_seconds <= 0:
        parser.error("--block-seconds must be positive")
    return arguments


@contextlib.contextmanager
def work_directory(keep: bool) -> Iterator[Path]:
    """A temporary folder for the tracking store and logs, removed unless `keep`."""
    work_dir = Path(tempfile.mkdtemp(prefix="bench_serving_"))
    try:
        yield work_dir
    finally:
        if keep:
            print(f"kept {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)


def floor_calls(network: object, normalized: np.ndarray) -> dict[str, dict[str, Callable]]:
    """The in-process floor: the network alone on one normalized image and on a batch."""
    single, batch = normalized[:1], normalized[:BATCH_SIZE]
    return {
        "floor_predict_on_batch": {
            "single": lambda: network.predict_on_batch(single),
            "batch": lambda: network.predict_on_batch(batch),
        },
        "floor_call": {
            "single": lambda: np.asarray(network(single, training=False)),
            "batch": lambda: np.asarray(network(batch, training=False)),
        },
    }


def make_servers(uris: dict[str, str], work_dir: Path) -> dict[str, Server]:
    """One server per name in SERVERS on a free port; adds product_uv (the product) to `uris`."""
    uris["product_uv"] = uris["product"]
    return {
        name: Server(
            name,
            uris[name],
            free_port(),
            work_dir / f"serve_{name}.log",
            env_manager="uv" if name == "product_uv" else "local",
        )
        for name in SERVERS
    }


def start_servers(servers: dict[str, Server], environment: dict[str, str]) -> dict[str, float]:
    """Start TIMED_STARTS one at a time, then the rest together; their start-up seconds.

    Raises:
        RuntimeError: If a server exits or does not answer /ping in time.
    """
    for name in TIMED_STARTS:
        start_server(servers[name], environment)
        wait_until_ready([servers[name]], UV_SERVER_START_SECONDS)
    untimed = [server for name, server in servers.items() if name not in TIMED_STARTS]
    for server in untimed:
        start_server(server, environment)
    wait_until_ready(untimed, SERVER_START_SECONDS)
    return {name: servers[name].start_seconds for name in TIMED_STARTS}


def results_record(
    settings: Settings,
    bodies: dict[str, dict[str, bytes]],
    uris: dict[str, str],
    start_seconds: dict[str, float],
    samples: dict[tuple[str, str, str], Samples],
    seconds: dict[str, float],
) -> dict:
    """The JSON record of one run: machine, settings, URIs, latencies, ratios and targets."""
    summary = summarize(samples)
    ratio_table = ratios(summary)
    return {
        "benchmark": "serving",
        "machine": machine_info(),
        "settings": {
            **vars(settings),
            "batch_size": BATCH_SIZE,
            "server_command": "python -m mlflow models serve -m <uri> -p <port> "
            "--env-manager local",
            "bodies": {
                "product, predict_pyfunc": "dataframe_split of raw 0-255 ints: single = 28 rows "
                "x 28 columns (workshop), batch = 64 rows x 784 columns",
                "keras_flavor": "inputs: normalized float tensor (N, 28, 28, 1), 4 decimals",
            },
            "body_bytes": {
                name: {size: len(body) for size, body in sizes.items()}
                for name, sizes in bodies.items()
            },
            "build_seconds": seconds["build"],
            "total_seconds": seconds["total"],
        },
        "model_uris": uris,
        "start_seconds": start_seconds,
        "results": summary,
        "ratios": ratio_table,
        "targets": check_targets(summary, ratio_table),
    }


def run_benchmark(arguments: argparse.Namespace, work_dir: Path) -> dict:
    """Build the models, serve them, measure, and return the results record."""
    import keras
    import mlflow

    from mlpipe_vision.images import normalize

    settings = Settings(
        rounds=arguments.rounds,
        requests=arguments.requests,
        concurrent_requests=arguments.concurrent_requests,
        clients=arguments.clients,
        block_seconds=arguments.block_seconds,
        warmup=arguments.warmup,
        percentage=arguments.percentage,
    )
    started = time.perf_counter()
    tracking_uri = prepare_tracking(work_dir)
    uris = build_product(settings.percentage)
    product_dir = Path(mlflow.artifacts.download_artifacts(uris["product"]))
    meta = json.loads((product_dir / "artifacts" / "meta.json").read_text())
    network = keras.models.load_model(product_dir / "artifacts" / "network.keras", compile=False)
    images = load_test_images(uris["data"], BATCH_SIZE)
    normalized = normalize(images, meta["normalization"])
    uris["keras_flavor"] = log_keras_flavor(network, normalized[:2])
    uris["predict_pyfunc"] = log_code_pyfunc("predict_pyfunc", product_dir)
    uris["server_floor"] = log_code_pyfunc("server_floor", product_dir)
    build_seconds = time.perf_counter() - started
    print(f"\nbuilt everything in {build_seconds:.0f} s: {uris}", flush=True)

    servers = make_servers(uris, work_dir)
    # A new folder of environments: the uv server builds its own from the model's files.
    environment = {**server_environment(tracking_uri), "MLFLOW_ENV_ROOT": str(work_dir / "envs")}
    try:
        start_seconds = start_servers(servers, environment)
        print(
            f"servers up after {time.perf_counter() - started:.0f} s; start-up "
            + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in start_seconds.items()),
            flush=True,
        )
        pixels, tensors = pixel_bodies(images), tensor_bodies(normalized)
        bodies = {
            "product": pixels,
            "product_uv": pixels,
            "keras_flavor": tensors,
            "predict_pyfunc": pixels,
            "server_floor": pixels,
        }
        warm_up(servers, bodies, settings.warmup)
        calls = floor_calls(network, normalized)
        for size_calls in calls.values():
            for call in size_calls.values():
                for _ in range(settings.warmup):
                    call()
        samples = run_rounds(servers, bodies, calls, settings)
    finally:
        stop_servers(list(servers.values()))
    seconds = {"build": build_seconds, "total": time.perf_counter() - started}
    return results_record(settings, bodies, uris, start_seconds, samples, seconds)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the table and write the JSON."""
    arguments = parse_arguments(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with work_directory(arguments.keep_dir) as work_dir:
        record = run_benchmark(arguments, work_dir)
    table = markdown_table(record["results"], record["ratios"], record["settings"]["clients"])
    print("\n" + table + "\n")
    for name, seconds in record["start_seconds"].items():
        print(f"start-up of {LABELS[name]}: {seconds:.1f} s (until /ping answers)")
    for name, target in record["targets"].items():
        status = "met" if target["met"] else "MISSED"
        ceiling = target.get("ceiling_with_a_do_nothing_model")
        shown_ceiling = f"; a do-nothing model would reach {ceiling:.1f}" if ceiling else ""
        print(f"{name}: {target['value']:.2f} (target {target['target']}): {status}{shown_ceiling}")
    record["table"] = table
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(record, indent=2))
    print(f"wrote {arguments.output}")


if __name__ == "__main__":
    main()
