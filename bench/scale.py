"""Scale: memory, time and artifact size of the data stages and train as the dataset grows.

Writes a folder shaped like the NIH malaria `cell_images/` (27,558 RGB PNGs in two class
folders, 110-160 px; synthetic cells, real sizes and counts), and copies of it 2x and 4x as
large (hard links under new names: the stages read every file, so only the disk is spared).
For every size it runs, each through `mlflow run` as a user would:

- get_data -P dataset=image_dir (default image_size=100), explore_data, preprocess (100 %);
- train, 1 epoch, on a second preprocess run with --train-percentage of the data, to keep
  training time sane while the data stages see every image;

and reports per stage the peak resident memory of the stage's whole process tree, wall time,
images/s and the bytes of its artifacts. Then the same on full Fashion-MNIST (train: 2 epochs,
images/s of the second), with the train stage of --baseline-commit (the in-memory version
before streaming) run in the same session on the same data as the baseline.

Targets: every stage's peak under 3 GB at every size and flat from 1x to 4x (within 20 %);
Fashion-MNIST train images/s not below the baseline's; preprocess artifact bytes at most the
uint8 size of the pixels (plus 1 % for the labels and the files' headers).

With --vgg16 it also runs the malaria configuration of the seed project at 1x: get_data at
image_size=224 on all images, explore_data, preprocess, and train -P convolutions=0
-P weights=none on --vgg16-percentage of the data.

Usage:
    .venv/bin/python bench/scale.py                  # 1x, 2x, 4x and Fashion-MNIST, ~30 min
    .venv/bin/python bench/scale.py --sizes 1 --no-fashion-mnist --vgg16
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import mlflow
import numpy as np
from tqdm import tqdm

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))  # run as a script, `bench` is not on the path
from bench.memory import run_measured  # noqa: E402

DEFAULT_OUTPUT_PATH = REPO_DIR / "bench" / "results" / "scale.json"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
MALARIA_IMAGES = 27_558
CLASS_FOLDERS = ("Parasitized", "Uninfected")
PEAK_TARGET_BYTES = 3 * 2**30
FLATNESS_TARGET = 1.20
STAGES = ("get_data", "explore_data", "preprocess", "train")


def cell_image(index: int, parasitized: bool) -> np.ndarray:
    """A synthetic blood cell like the NIH crops: a stained disc on black, 110-160 px."""
    rng = np.random.default_rng(index)
    height, width = (int(size) for size in rng.integers(110, 161, size=2))
    image = np.zeros((height, width, 3), dtype=np.uint8)
    centre = (width // 2, height // 2)
    axes = (width // 2 - int(rng.integers(2, 8)), height // 2 - int(rng.integers(2, 8)))
    colour = tuple(int(c) for c in rng.integers((150, 90, 170), (200, 130, 220)))  # BGR pink
    cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    texture = rng.normal(0, 6, size=image.shape)
    image = np.where(image > 0, np.clip(image + texture, 0, 255), 0).astype(np.uint8)
    for _ in range(int(rng.integers(1, 4)) if parasitized else 0):
        spot = (
            int(rng.integers(width // 4, 3 * width // 4)),
            int(rng.integers(height // 4, 3 * height // 4)),
        )
        cv2.circle(image, spot, int(rng.integers(4, 10)), (120, 40, 90), -1)
    return image


def write_malaria_like_folder(root: Path) -> Path:
    """MALARIA_IMAGES PNGs, half in each class folder; reused when already complete."""
    paths = [
        (root / CLASS_FOLDERS[index % 2] / f"cell_{index:06d}.png", index)
        for index in range(MALARIA_IMAGES)
    ]
    for folder in CLASS_FOLDERS:
        (root / folder).mkdir(parents=True, exist_ok=True)

    def write(item: tuple[Path, int]) -> None:
        path, index = item
        if not path.is_file():
            cv2.imwrite(str(path), cell_image(index, parasitized=index % 2 == 0))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(tqdm(pool.map(write, paths), total=len(paths), desc="writing cells", unit="image"))
    return root


def replicate(original: Path, factor: int, root: Path) -> Path:
    """A folder `factor` times as large: hard links of every file under `factor` names."""
    for folder in CLASS_FOLDERS:
        (root / folder).mkdir(parents=True, exist_ok=True)
        for path in sorted((original / folder).iterdir()):
            for copy in range(factor):
                link = root / folder / f"{path.stem}_{copy}{path.suffix}"
                if not link.exists():
                    os.link(path, link)
    return root


class Pipeline:
    """Runs stages through `mlflow run` against one sqlite store and measures them."""

    def __init__(self, work_dir: Path, repo_dir: Path = REPO_DIR, pythonpath: str = "") -> None:
        self.repo_dir = repo_dir
        self.tracking_uri = f"sqlite:///{work_dir / 'mlflow.db'}"
        self.client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        name = f"scale-{repo_dir.name}"
        experiment = self.client.get_experiment_by_name(name)
        self.experiment_id = (
            experiment.experiment_id
            if experiment
            else self.client.create_experiment(name, artifact_location=str(work_dir / "artifacts"))
        )
        self.env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        if pythonpath:
            self.env["PYTHONPATH"] = pythonpath

    def run(self, stage: str, artifact: str, **parameters: object) -> dict:
        """Run one stage; returns its run ID, peak RSS, seconds and artifact bytes."""
        command = [sys.executable, "-m", "mlflow", "run", str(self.repo_dir), "-e", stage]
        command += ["--env-manager", "local", "--experiment-id", self.experiment_id]
        for name, value in parameters.items():
            command += ["-P", f"{name}={value}"]
        measured = run_measured(command, cwd=self.repo_dir, env=self.env)
        if measured["returncode"] != 0:
            raise RuntimeError(f"{stage} failed:\n{measured['output'][-4000:]}")
        run_id = re.findall(r"Run \(ID '([0-9a-f]+)'\)", measured["output"])[-1]
        run = self.client.get_run(run_id)
        artifact_dir = Path(run.info.artifact_uri.removeprefix("file://")) / artifact
        artifact_bytes = sum(p.stat().st_size for p in artifact_dir.rglob("*") if p.is_file())
        return {
            "run_id": run_id,
            "uri": f"runs:/{run_id}/{artifact}",
            "peak_rss": measured["peak_rss"],
            "seconds": measured["seconds"],
            "artifact_bytes": artifact_bytes,
            "metrics": run.data.metrics,
        }

    def epoch_seconds(self, run_id: str) -> list[float]:
        """The per-epoch training times the train stage logs."""
        history = self.client.get_metric_history(run_id, "epoch_seconds")
        return [metric.value for metric in sorted(history, key=lambda m: m.step)]


def data_stages(
    pipeline: Pipeline,
    train_percentage: float,
    epochs: int,
    train: dict | None = None,
    **get_data: object,
) -> dict:
    """get_data, explore_data, preprocess (all images) and train (on a share); one row each.

    `train` holds parameters of the train stage beyond data, epochs and no early stopping.
    """
    rows = {"get_data": pipeline.run("get_data", "dataset", **get_data)}
    data_uri = rows["get_data"]["uri"]
    images = int(
        rows["get_data"]["metrics"]["train_examples"] + rows["get_data"]["metrics"]["test_examples"]
    )
    rows["explore_data"] = pipeline.run("explore_data", "stats.json", data=data_uri)
    rows["preprocess"] = pipeline.run("preprocess", "preprocessed", data=data_uri)
    for stage in ("get_data", "explore_data", "preprocess"):
        rows[stage]["images"] = images
    if train_percentage < 100:
        train_input = pipeline.run(
            "preprocess", "preprocessed", data=data_uri, percentage=train_percentage
        )
    else:
        train_input = rows["preprocess"]
    rows["train"] = pipeline.run(
        "train",
        "model",
        data=train_input["uri"],
        epochs=epochs,
        early_stopping_patience=0,
        **(train or {}),
    )
    rows["train"]["images"] = int(train_input["metrics"]["train_examples"]) * epochs
    return rows


def pixel_bytes(rows: dict, image_shape: tuple[int, int, int]) -> int:
    """The uint8 size of the dataset's pixels."""
    return rows["get_data"]["images"] * int(np.prod(image_shape))


def main(argv: list[str] | None = None) -> None:
    """Run every size, print the table, write the JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        default="1,2,4",
        help="multiples of 27,558 images (default 1,2,4; '' for Fashion-MNIST alone)",
    )
    parser.add_argument(
        "--train-percentage", type=float, default=25.0, help="share trained on (default 25)"
    )
    parser.add_argument(
        "--no-fashion-mnist", action="store_true", help="skip the Fashion-MNIST rows"
    )
    parser.add_argument(
        "--baseline-commit",
        default="054eef3",
        help="in-memory version to compare train images/s with",
    )
    parser.add_argument(
        "--vgg16", action="store_true", help="also VGG16 at 224x224 on the 1x folder"
    )
    parser.add_argument(
        "--vgg16-percentage", type=float, default=2.0, help="share VGG16 trains on (default 2)"
    )
    parser.add_argument(
        "--work-dir", type=Path, help="keep folders and runs here (default: a temporary folder)"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT_PATH, help="JSON file")
    arguments = parser.parse_args(argv)
    try:
        sizes = [int(size) for size in arguments.sizes.split(",") if size.strip()]
    except ValueError:
        parser.error(f"--sizes takes whole multiples like 1,2,4, got {arguments.sizes!r}")

    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        work_dir = arguments.work_dir or Path(tmp)
        work_dir.mkdir(parents=True, exist_ok=True)
        if sizes or arguments.vgg16:
            original = write_malaria_like_folder(work_dir / "cells_1x" / "cell_images")
        pipeline = Pipeline(work_dir)
        results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "rows": []}
        for size in sizes:
            folder = (
                original
                if size == 1
                else replicate(original, size, work_dir / f"cells_{size}x" / "cell_images")
            )
            rows = data_stages(
                pipeline, arguments.train_percentage, 1, dataset="image_dir", source=folder
            )
            results["rows"].append(
                {
                    "data": f"malaria-like {size}x",
                    "image_size": 100,
                    "pixel_bytes": pixel_bytes(rows, (100, 100, 3)),
                    "stages": rows,
                }
            )
            print_rows(results["rows"][-1:])
        if arguments.vgg16:
            rows = data_stages(
                pipeline,
                arguments.vgg16_percentage,
                1,
                train={"convolutions": 0, "weights": "none"},
                dataset="image_dir",
                source=original,
                image_size=224,
            )
            results["rows"].append(
                {
                    "data": "malaria-like 1x, VGG16",
                    "image_size": 224,
                    "pixel_bytes": pixel_bytes(rows, (224, 224, 3)),
                    "stages": rows,
                }
            )
            print_rows(results["rows"][-1:])
        if not arguments.no_fashion_mnist:
            results["rows"] += fashion_mnist_rows(pipeline, work_dir, arguments.baseline_commit)
            print_rows(results["rows"][-2:])
        results["targets"] = check_targets(results["rows"])
    print("\n" + markdown_table(results["rows"]))
    print(json.dumps(results["targets"], indent=2))
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {arguments.output}")


def fashion_mnist_rows(pipeline: Pipeline, work_dir: Path, baseline_commit: str) -> list[dict]:
    """Full Fashion-MNIST through this version and through `baseline_commit`, 2 epochs each."""
    worktree = work_dir / f"baseline_{baseline_commit}"
    if not worktree.is_dir():
        subprocess.run(
            [
                "git",
                "-C",
                str(REPO_DIR),
                "worktree",
                "add",
                "--detach",
                str(worktree),
                baseline_commit,
            ],
            check=True,
            capture_output=True,
        )
    rows = []
    try:
        for label, runner in (
            ("Fashion-MNIST", pipeline),
            (
                f"Fashion-MNIST, in memory ({baseline_commit})",
                Pipeline(work_dir, worktree, str(worktree)),
            ),
        ):
            stages = data_stages(
                runner, 100.0, 2, dataset="fashion_mnist", source=FASHION_MNIST_DIR
            )
            epoch_seconds = runner.epoch_seconds(stages["train"]["run_id"])
            stages["train"]["images_per_second"] = stages["train"]["images"] / 2 / epoch_seconds[-1]
            rows.append(
                {
                    "data": label,
                    "image_size": 28,
                    "pixel_bytes": pixel_bytes(stages, (28, 28, 1)),
                    "stages": stages,
                }
            )
    finally:
        subprocess.run(
            ["git", "-C", str(REPO_DIR), "worktree", "remove", "--force", str(worktree)],
            check=False,
        )
    return rows


def images_per_second(row: dict, stage: str) -> float:
    """A stage's images/s: the second epoch's for Fashion-MNIST train, else over wall time."""
    result = row["stages"][stage]
    return result.get("images_per_second") or result["images"] / result["seconds"]


def markdown_table(rows: list[dict]) -> str:
    """One line per data and stage."""
    lines = [
        "| data | images | stage | peak RSS (GB) | wall (s) | images/s | artifact (GB) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        for stage in STAGES:
            result = row["stages"][stage]
            peak = result["peak_rss"] / 2**30
            lines.append(
                f"| {row['data']} | {result['images']:,} | {stage} | {peak:.2f} "
                f"| {result['seconds']:.0f} | {images_per_second(row, stage):,.0f} "
                f"| {result['artifact_bytes'] / 2**30:.3f} |"
            )
    return "\n".join(lines)


def print_rows(rows: list[dict]) -> None:
    """The table lines of some rows, as they are measured."""
    print("\n".join(markdown_table(rows).splitlines()[2:]), flush=True)


def check_targets(rows: list[dict]) -> dict[str, dict]:
    """Peak under 3 GB everywhere, flat from 1x to 4x, artifacts <= pixels, train images/s."""
    targets = {}
    for row in rows:
        for stage in STAGES:
            peak = row["stages"][stage]["peak_rss"]
            targets[f"peak {stage}, {row['data']}"] = {
                "value": peak / 2**30,
                "target": "< 3 GB",
                "met": peak < PEAK_TARGET_BYTES,
            }
        preprocess_bytes = row["stages"]["preprocess"]["artifact_bytes"]
        targets[f"preprocess artifact / pixels, {row['data']}"] = {
            "value": preprocess_bytes / row["pixel_bytes"],
            "target": "<= 1.01 (pixels plus labels and file headers)",
            "met": preprocess_bytes <= 1.01 * row["pixel_bytes"],
        }
    malaria = {
        row["data"]: row
        for row in rows
        if row["data"].startswith("malaria-like") and row["image_size"] == 100
    }
    smallest, largest = (
        malaria.get("malaria-like 1x"),
        max(malaria.values(), key=lambda r: r["stages"]["get_data"]["images"], default=None),
    )
    if smallest and largest is not smallest:
        for stage in STAGES:
            ratio = largest["stages"][stage]["peak_rss"] / smallest["stages"][stage]["peak_rss"]
            targets[f"peak {stage}, {largest['data']} / 1x"] = {
                "value": ratio,
                "target": f"<= {FLATNESS_TARGET}",
                "met": ratio <= FLATNESS_TARGET,
            }
    fashion = [row for row in rows if row["data"].startswith("Fashion-MNIST")]
    if len(fashion) == 2:
        ratio = images_per_second(fashion[0], "train") / images_per_second(fashion[1], "train")
        targets["Fashion-MNIST train images/s / in-memory baseline"] = {
            "value": ratio,
            "target": ">= 1",
            "met": ratio >= 1,
        }
    return targets


if __name__ == "__main__":
    main()
