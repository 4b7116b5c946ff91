"""The container paths' cost: image sizes, build times, training and serving in Docker vs the host.

1. Image sizes of the stand-in bases, the training image and the packaged model's image.
2. Build times of the training image from a copy of this checkout: cold (`--no-cache`), warm
   (cache kept, nothing changed) and after a code change (one file of mlpipe_vision touched:
   only the last COPY layer is rebuilt); and of the model's image (generate-dockerfile, cold).
3. A training step: `train` on the same preprocessed share of Fashion-MNIST, on the host
   (`mlflow run`) and in the training image (`make docker-run`), rounds interleaved; a step is
   the median `epoch_seconds` of epochs 2.. divided by the steps per epoch (epoch 1 also
   traces the graph). Target: container / host at most 1.05.
4. Served p50 of one 28x28 image: the model's image (`docker run --network host`, port 8080,
   nginx in front of uvicorn) against `mlflow models serve` on the host, same model, rounds
   interleaved.

Usage:
    .venv/bin/python bench/docker.py                   # 5 % of Fashion-MNIST, 3 epochs, 2 rounds
    .venv/bin/python bench/docker.py --percentage 2 --rounds 1
Needs a Docker engine and the stand-in bases (make docker-bases). Writes
bench/results/docker.json and prints a markdown table.
"""

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import requests

REPO_DIR = Path(__file__).resolve().parents[1]
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_OUTPUT_PATH = REPO_DIR / "bench" / "results" / "docker.json"
BASES = [
    "debian:bookworm-slim",
    "python:3.11.7-slim",
    "tensorflow/tensorflow:2.21.0-gpu",
    "postgres:17",
    "ghcr.io/mlflow/mlflow:v3.17.2",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed(command: list[str], **kwargs) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, **kwargs)
    return time.perf_counter() - started


def image_size(name: str) -> int:
    completed = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Size}}", name],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(completed.stdout.strip())


def copy_checkout(destination: Path) -> Path:
    """The checkout's tracked and new files (no store, no .venv), as a git clone would hold."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_DIR,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (item.decode() for item in files)):
        if (REPO_DIR / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_DIR / name, destination / name)
    subprocess.run(["git", "init", "-q"], cwd=destination, check=True)
    subprocess.run(["git", "add", "-A"], cwd=destination, check=True)
    subprocess.run(
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "x"],
        cwd=destination,
        check=True,
    )
    return destination


def build_times(checkout: Path, tag: str) -> dict[str, float]:
    build = ["docker", "build", "--network", "host", "-q", "-t", tag, "."]
    cold = timed(build[:2] + ["--no-cache"] + build[2:], cwd=checkout)
    warm = timed(build, cwd=checkout)
    touched = checkout / "mlpipe_vision" / "__init__.py"
    touched.write_text(touched.read_text() + "\n# touched by bench/docker.py\n")
    changed = timed(build, cwd=checkout)
    return {"cold": cold, "warm": warm, "code_change": changed}


def mlflow_run(checkout: Path, entry_point: str, **parameters: object) -> str:
    command = [sys.executable, "-m", "mlflow", "run", ".", "-e", entry_point]
    command += ["--env-manager", "local"]
    for name, value in parameters.items():
        command += ["-P", f"{name}={value}"]
    completed = subprocess.run(
        command, cwd=checkout, env=host_env(), capture_output=True, text=True
    )
    if completed.returncode != 0:
        raise RuntimeError(f"mlflow run -e {entry_point} failed:\n{completed.stderr[-3000:]}")
    return re.findall(r"Run \(ID '([0-9a-f]+)'\)", completed.stdout + completed.stderr)[-1]


def host_env() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("MLFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def docker_train(checkout: Path, tag: str, **parameters: object) -> str:
    arguments = " ".join(f"-P {name}={value}" for name, value in parameters.items())
    completed = subprocess.run(
        ["make", "--no-print-directory", "docker-run", f"IMAGE_TAG={tag}"]
        + ["STAGE=train", f"ARGS={arguments}"],
        cwd=checkout,
        env=host_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return re.findall(r"Run \(ID '([0-9a-f]+)'\)", completed.stdout + completed.stderr)[-1]


def step_seconds(client: mlflow.MlflowClient, run_id: str) -> float:
    history = client.get_metric_history(run_id, "epoch_seconds")
    later = [metric.value for metric in sorted(history, key=lambda m: m.step)[1:]]
    steps = float(client.get_run(run_id).data.params["steps_per_epoch"])
    return statistics.median(later) / steps


def wait_for_ping(url: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer /ping")


def latencies(url: str, body: dict, count: int) -> list[float]:
    session = requests.Session()
    for _ in range(10):  # warm-up
        session.post(f"{url}/invocations", json=body, timeout=30)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        response = session.post(f"{url}/invocations", json=body, timeout=30)
        times.append(time.perf_counter() - started)
        response.raise_for_status()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--percentage", type=float, default=5.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT_PATH)
    args = parser.parse_args()

    subprocess.run(["bash", str(REPO_DIR / "docker" / "bases.sh")], check=True)
    results: dict = {"machine": f"{os.cpu_count()} CPUs, {platform.processor() or 'unknown'}"}
    tag = "mlpipe-gpu:bench"
    with tempfile.TemporaryDirectory() as temporary:
        checkout = copy_checkout(Path(temporary) / "mlpipe")
        print("building the training image (cold, warm, after a code change) ...", flush=True)
        results["training_image_build_seconds"] = build_times(checkout, tag)

        print("data stages and training rounds, host and container ...", flush=True)
        get_data = mlflow_run(checkout, "get_data", source=FASHION_MNIST_DIR)
        preprocess = mlflow_run(
            checkout, "preprocess", data=f"runs:/{get_data}/dataset", percentage=args.percentage
        )
        train = {"data": f"runs:/{preprocess}/preprocessed", "epochs": args.epochs}
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{checkout / 'mlflow.db'}")
        steps: dict[str, list[float]] = {"host": [], "container": []}
        ratios = []
        for _ in range(args.rounds):
            host_run = mlflow_run(checkout, "train", **train)
            host = step_seconds(client, host_run)
            container = step_seconds(client, docker_train(checkout, tag, **train))
            steps["host"].append(host)
            steps["container"].append(container)
            ratios.append(container / host)
        results["train_step_seconds"] = steps
        results["train_step_ratio"] = statistics.median(ratios)

        print("packaging, the model's image, serving rounds ...", flush=True)
        mlflow_run(checkout, "package", model=f"runs:/{host_run}/model")
        results.update(serving(checkout, args))
    results["image_bytes"] = {name: image_size(name) for name in BASES + [tag]}
    subprocess.run(["docker", "rmi", tag], capture_output=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print_table(results)


def serving(checkout: Path, args: argparse.Namespace) -> dict:
    """Build the registered model's image and time it against `mlflow models serve`."""
    model_uri = "models:/fashion_mnist_classifier@champion"
    env = {**host_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{checkout / 'mlflow.db'}"}
    image_dir = checkout / "model-image"
    subprocess.run(
        [sys.executable, "-m", "mlflow", "models", "generate-dockerfile", "-m", model_uri]
        + ["-d", str(image_dir)],
        env=env,
        check=True,
        capture_output=True,
    )
    tag = "mlpipe-model:bench"
    build = timed(
        ["docker", "build", "--network", "host", "--no-cache", "-q", "-t", tag, "."], cwd=image_dir
    )
    size = image_size(tag)
    port = free_port()
    host_server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "-p", str(port)]
        + ["--env-manager", "local"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    container = subprocess.run(
        ["docker", "run", "-d", "--rm", "--network", "host", "-e", "MLFLOW_MODELS_WORKERS=1", tag],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    image = np.zeros((28, 28), dtype=np.uint8)
    body = {"dataframe_split": {"columns": list(range(28)), "data": image.tolist()}}
    p50 = {"host": [], "container": []}
    try:
        wait_for_ping(f"http://127.0.0.1:{port}")
        wait_for_ping("http://127.0.0.1:8080")
        for _ in range(args.rounds):
            for name, url in (
                ("host", f"http://127.0.0.1:{port}"),
                ("container", "http://127.0.0.1:8080"),
            ):
                p50[name].append(statistics.median(latencies(url, body, args.requests)) * 1000)
    finally:
        subprocess.run(["docker", "stop", container], capture_output=True)
        os.killpg(host_server.pid, 15)
        host_server.wait(timeout=30)
        subprocess.run(["docker", "rmi", tag], capture_output=True)
    ratios = [c / h for c, h in zip(p50["container"], p50["host"], strict=True)]
    return {
        "model_image_build_seconds": build,
        "model_image_bytes": size,
        "served_p50_ms": p50,
        "served_p50_ratio": statistics.median(ratios),
    }


def print_table(results: dict) -> None:
    gb = 1e9
    print("\n| what | value |\n|---|---:|")
    for name, size in results["image_bytes"].items():
        print(f"| image size: {name} | {size / gb:.2f} GB |")
    print(f"| image size: the model's image | {results['model_image_bytes'] / gb:.2f} GB |")
    for name, seconds in results["training_image_build_seconds"].items():
        print(f"| training image build, {name.replace('_', ' ')} | {seconds:.0f} s |")
    print(f"| model image build, cold | {results['model_image_build_seconds']:.0f} s |")
    steps = results["train_step_seconds"]
    print(
        f"| train step, host (median of rounds) | "
        f"{statistics.median(steps['host']) * 1000:.0f} ms |"
    )
    print(
        f"| train step, container (median of rounds) | "
        f"{statistics.median(steps['container']) * 1000:.0f} ms |"
    )
    print(f"| train step, container / host (target <= 1.05) | {results['train_step_ratio']:.3f} |")
    p50 = results["served_p50_ms"]
    print(
        f"| served p50, mlflow models serve on the host | {statistics.median(p50['host']):.2f} ms |"
    )
    print(f"| served p50, the model's container | {statistics.median(p50['container']):.2f} ms |")
    print(f"| served p50, container / host | {results['served_p50_ratio']:.2f} |")


if __name__ == "__main__":
    main()
