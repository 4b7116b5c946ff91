"""The team server's cost: the same pipeline against sqlite and against the team stack, and one
sweep over one and over two workers.

1. `mlflow run . -e main` on a share of Fashion-MNIST (one epoch), from a fresh working
   folder, against a fresh local sqlite store and against `team_stack.py`'s PostgreSQL +
   `mlflow server` with login and proxied artifacts; then `main` again on each (every stage
   reused). The rounds alternate sqlite and team; the table gives each wall time and the
   ratio team / sqlite.
2. A grid sweep of trials of equal cost (the same network, `seed` = 1..N) on that
   preprocessed data, in a PostgreSQL study: once with one `train_batch` worker, once with
   two workers started at the same time from separate folders. The ratio is two-worker
   wall time / one-worker wall time (0.5 would be perfect scaling; both share this
   machine's cores, so expect much less than a second machine would give).

Each "machine" is a folder of its own with only the server URL and logins in its
environment, as in tests/integration/test_team_server.py.

Usage:
    .venv/bin/python bench/team.py                       # 2 % of Fashion-MNIST, 4 trials
    .venv/bin/python bench/team.py --percentage 5 --trials 6
Writes bench/results/team.json and prints a markdown table.
"""

import argparse
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))

import team_stack  # noqa: E402

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_OUTPUT_PATH = REPO_DIR / "bench" / "results" / "team.json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mlflow_run(
    folder: Path, env: dict[str, str], entry_point: str, **parameters: object
) -> subprocess.Popen:
    """Start `mlflow run` of an entry point from `folder`, its output in folder/<entry>.log."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "mlflow", "run", str(REPO_DIR), "-e", entry_point]
    command += ["--env-manager", "local"]
    for name, value in parameters.items():
        command += ["-P", f"{name}={value}"]
    log = (folder / f"{entry_point}.log").open("a")
    return subprocess.Popen(
        command,
        cwd=folder,
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            **env,
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def timed(*processes: subprocess.Popen) -> float:
    """Wall time until every process has ended; fails on any non-zero exit."""
    start = time.perf_counter()
    for process in processes:
        if process.wait() != 0:
            raise SystemExit(f"error: {' '.join(process.args[:7])} failed; see its log")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--percentage", type=float, default=2.0, help="share of Fashion-MNIST")
    parser.add_argument("--trials", type=int, default=4, help="trials of the sweep (default 4)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT_PATH, help="JSON file")
    parser.add_argument("--work-dir", type=Path, help="keep folders here (default: temporary)")
    arguments = parser.parse_args(argv)

    logins = {
        "PGPASSWORD": f"db-{secrets.token_hex(12)}",
        "MLFLOW_AUTH_ADMIN_PASSWORD": f"admin-{secrets.token_hex(12)}",
    }
    os.environ.update(logins)
    with tempfile.TemporaryDirectory(prefix="bench_team_") as tmp:
        work_dir = arguments.work_dir or Path(tmp)
        stack = team_stack.start(work_dir / "stack", free_port(), free_port(), "mlpipe", 2)
        try:
            results = measure(stack, work_dir, arguments.percentage, arguments.trials)
        finally:
            team_stack.stop(work_dir / "stack")
            shutil.rmtree(Path(stack["postgres_data"]).parent, ignore_errors=True)
    results["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count()}
    print("\n" + markdown_table(results))
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(results, indent=2))
    print(f"wrote {arguments.output}")


def measure(stack: dict, work_dir: Path, percentage: float, trials: int) -> dict:
    """Both pipelines (twice each, alternating), then the sweep with one and two workers."""
    team_env = {
        "MLFLOW_TRACKING_URI": stack["tracking_uri"],
        "MLFLOW_TRACKING_USERNAME": stack["admin_username"],
        "MLFLOW_TRACKING_PASSWORD": os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"],
    }
    sqlite_env = {"MLFLOW_TRACKING_URI": f"sqlite:///{work_dir / 'sqlite' / 'mlflow.db'}"}
    pipeline = {"source": FASHION_MNIST_DIR, "percentage": percentage, "epochs": 1}
    seconds = {}
    for round_name in ("first", "reused"):
        for store, env in (("sqlite", sqlite_env), ("team", team_env)):
            key = f"main {round_name} {store}"
            seconds[key] = timed(mlflow_run(work_dir / store, env, "main", **pipeline))
            print(f"main ({round_name}) on {store}: {seconds[key]:.0f} s")

    os.environ.update(team_env)
    client = mlflow.MlflowClient(tracking_uri=stack["tracking_uri"])
    preprocess = client.search_runs(["0"], "tags.mlpipe.stage = 'preprocess'", max_results=1)[0]
    sweep = {
        "data": f"runs:/{preprocess.info.run_id}/preprocessed",
        "seed": ",".join(str(seed) for seed in range(1, trials + 1)),
        "epochs": 1,
        "study_storage": stack["study_storage"],
    }
    one = mlflow_run(work_dir / "one", team_env, "train_batch", study_name="one", **sweep)
    seconds["sweep 1 worker"] = timed(one)
    print(f"sweep of {trials} trials, 1 worker: {seconds['sweep 1 worker']:.0f} s")
    workers = [
        mlflow_run(work_dir / f"worker{index}", team_env, "train_batch", study_name="two", **sweep)
        for index in (1, 2)
    ]
    seconds["sweep 2 workers"] = timed(*workers)
    print(f"sweep of {trials} trials, 2 workers: {seconds['sweep 2 workers']:.0f} s")
    return {"percentage": percentage, "trials": trials, "seconds": seconds}


def markdown_table(results: dict) -> str:
    seconds = results["seconds"]
    rows = [
        "| measured | sqlite, one folder | team server | ratio |",
        "|---|---:|---:|---:|",
    ]
    for round_name, label in (("first", "`main`"), ("reused", "`main` again, all reused")):
        local, team = seconds[f"main {round_name} sqlite"], seconds[f"main {round_name} team"]
        rows.append(
            f"| {label}, {results['percentage']:g} % of Fashion-MNIST, 1 epoch "
            f"| {local:.0f} s | {team:.0f} s | {team / local:.2f} |"
        )
    one, two = seconds["sweep 1 worker"], seconds["sweep 2 workers"]
    rows += [
        "",
        "| sweep on the team server | 1 worker | 2 workers, separate folders | ratio |",
        "|---|---:|---:|---:|",
        f"| {results['trials']} equal trials (seed grid), 1 epoch each "
        f"| {one:.0f} s | {two:.0f} s | {two / one:.2f} |",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    main()
