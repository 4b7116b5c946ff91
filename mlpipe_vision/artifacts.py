"""What the stages hand each other: artifact URIs, the artifacts and their meta.json, run tags.

Stages never read another run's files from disk directly; they hand each other
`runs:/<run_id>/<path>` URIs and open them here through MLflow, so the same code works
against the local sqlite store and a shared tracking server. Where the store keeps its
artifacts on this machine's disk (the local default), a stage reads the artifact folder in
place instead of copying it: a dataset of several GB is then stored once, not once more for
every stage that reads it.

    get_data      dataset/       meta.json, files.json, uint8 shards (mlpipe_vision.shards)
    explore_data  stats.json     pixel statistics and class counts
    preprocess    preprocessed/  meta.json (with the normalization), train/validation/test shards
    train         model/         the Keras model (MLflow's keras flavor)
    package       a pyfunc model, registered; its run tagged with the registered version

Every `mlpipe.*` tag a run carries is named here too. No TensorFlow here: `main` chains the
stages through this module without loading it.
"""

import contextlib
import hashlib
import json
import os
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.utils.file_utils import local_file_uri_to_path

from mlpipe_vision import shards
from mlpipe_vision.console import first_line

# ------------------------------------------------------------------------ artifact names

DATASET = "dataset"
STATS = "stats.json"
PREPROCESSED = "preprocessed"
MODEL = "model"
# The train run's Keras BackupAndRestore files, logged after every epoch (see resume.py).
CHECKPOINT = "checkpoint"
CHECKPOINT_META_FILE = "training_metadata.json"
META_FILE = "meta.json"
FILES_FILE = "files.json"
PREPROCESSED_SPLITS = ("train", "validation", "test")
DATASET_FROM = "runs:/<get_data_run_id>/dataset from a get_data run"
STATS_FROM = "runs:/<explore_data_run_id>/stats.json"
PREPROCESSED_FROM = "runs:/<preprocess_run_id>/preprocessed from a preprocess run"

# ----------------------------------------------------------------------------- run tags

# Every stage run: which stage, what it read, and why it failed.
STAGE_TAG = "mlpipe.stage"
INPUT_URI_TAG = "mlpipe.input_uri"
ERROR_TAG = "mlpipe.error"
# get_data and train: the dataset's name; get_data: whether its files' checksums matched.
DATASET_TAG = "mlpipe.dataset"
VERIFIED_TAG = "mlpipe.verified"
# preprocess: where the normalization came from (stats.json, given, or computed).
NORMALIZATION_FROM_TAG = "mlpipe.normalization_from"
# train: what it ran on and how.
DEVICE_TAG = "mlpipe.device"
DTYPE_POLICY_TAG = "mlpipe.dtype_policy"
# train: the device record (mlpipe_vision.devices.device_record); "none" where not known.
DEVICE_KIND_TAG = "mlpipe.device_kind"
DEVICE_COUNT_TAG = "mlpipe.device_count"
GPU_NAMES_TAG = "mlpipe.gpu_names"
GPU_DRIVER_TAG = "mlpipe.gpu_driver"
CPU_MODEL_TAG = "mlpipe.cpu_model"
TF_VERSION_TAG = "mlpipe.tensorflow_version"
TF_CUDA_TAG = "mlpipe.tensorflow_cuda"
TF_CUDNN_TAG = "mlpipe.tensorflow_cudnn"
STRATEGY_TAG = "mlpipe.strategy"
REPLICAS_TAG = "mlpipe.replicas"
POSITIVE_CLASS_TAG = "mlpipe.positive_class"
WARNING_TAG = "mlpipe.warning"
TRAINING_STEPS_TAG = "mlpipe.training_steps"
TEST_SET_DIGEST_TAG = "mlpipe.test_set_digest"  # what package compares champions on
# What a train run trains (its data and parameters), so a later one can resume it.
TRAIN_KEY_TAG = "mlpipe.train_key"
RESUMED_FROM_TAG = "mlpipe.resumed_from"
RESUMED_AT_EPOCH_TAG = "mlpipe.resumed_at_epoch"
# train_batch: the trial a child run is, the sweep's settings as resolved, its best trial.
TRIAL_NUMBER_TAG = "mlpipe.trial_number"
SWEEP_WORKER_TAG = "mlpipe.sweep_worker_of"
SAMPLER_TAG = "mlpipe.sampler"
DIRECTION_TAG = "mlpipe.direction"
STUDY_NAME_TAG = "mlpipe.study_name"
STUDY_STORAGE_TAG = "mlpipe.study_storage"
BEST_RUN_TAG = "mlpipe.best_run_id"
BEST_MODEL_TAG = "mlpipe.best_model_uri"
BEST_TRIAL_TAG = "mlpipe.best_trial_number"
BEST_PARAMETER_TAG_PREFIX = "mlpipe.best."
# package: the train run it packaged, the registered version it made or reused.
TRAIN_RUN_TAG = "mlpipe.train_run_id"
PACKAGE_KEY_TAG = "mlpipe.package_key"  # on the version: its train run and meta.json
REGISTERED_MODEL_TAG = "mlpipe.registered_model_uri"  # the alias's URI if it holds it
# package, on the version and the run: whether it took the alias, and why (promotion.py).
PROMOTION_TAG = "mlpipe.promotion"  # promoted, kept or current
PROMOTION_REASON_TAG = "mlpipe.promotion_reason"
PROMOTION_METRIC_TAG = "mlpipe.promotion_metric"
CANDIDATE_SCORE_TAG = "mlpipe.candidate_score"
CHAMPION_SCORE_TAG = "mlpipe.champion_score"
CHAMPION_BEFORE_TAG = "mlpipe.champion_version_before"
# Every stage run: the process it hangs on and its heartbeat (mlpipe_vision.liveness), and
# why a later command closed it when that process was gone.
HOST_TAG = "mlpipe.host"
PID_TAG = "mlpipe.pid"
PROCESS_STARTED_TAG = "mlpipe.process_started"
HEARTBEAT_TAG = "mlpipe.heartbeat"
CLOSED_BECAUSE_TAG = "mlpipe.closed_because"
# main: the run of each stage it chained, `mlpipe.run.<entry point>`.
STAGE_RUN_TAG_PREFIX = "mlpipe.run."


def record_key(record: dict) -> str:
    """A short stable hash of a JSON-able record: what makes two runs the same work."""
    text = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stage_run_tag(entry_point: str) -> str:
    """The tag on main's run that holds the run ID of one of its stages."""
    return f"{STAGE_RUN_TAG_PREFIX}{entry_point}"


# ---------------------------------------------------------------------------------- URIs


def artifact_uri(run_id: str, path: str) -> str:
    """Build the `runs:/` URI of an artifact path in a run."""
    return f"runs:/{run_id}/{path}"


def parse_runs_uri(uri: str) -> tuple[str, str]:
    """Split a `runs:/<run_id>/<path>` URI into the run ID and the artifact path.

    Args:
        uri: The URI.

    Returns:
        (run_id, artifact_path); the path is "" for the run's artifact root.

    Raises:
        ValueError: If the URI is not a runs:/ URI with a run ID.
    """
    prefix = "runs:/"
    if not uri.startswith(prefix) or not uri[len(prefix) :].strip("/"):
        raise ValueError(f"expected a URI like runs:/<run_id>/<path>, got {uri!r}")
    run_id, _, artifact_path = uri[len(prefix) :].strip("/").partition("/")
    return run_id, artifact_path


def local_artifact_dir(uri: str) -> Path | None:
    """The folder of an artifact whose store is on this machine's disk; None otherwise."""
    if uri.startswith("runs:/"):
        try:
            run_id, artifact_path = parse_runs_uri(uri)
            root = mlflow.MlflowClient().get_run(run_id).info.artifact_uri
        except (MlflowException, ValueError):
            return None
        uri = f"{root.rstrip('/')}/{artifact_path}" if artifact_path else root
    if urllib.parse.urlparse(uri).scheme not in ("", "file"):
        return None
    local_dir = Path(local_file_uri_to_path(uri))
    return local_dir if local_dir.is_dir() else None


def resolve_artifact_dir(
    uri: str, required_file: str, produced_by: str, dst_path: str | None = None
) -> Path:
    """Make the artifact folder behind a URI available locally and check what it holds.

    Args:
        uri: A `runs:/`, `models:/` or any MLflow artifact URI, or a local folder.
        required_file: A file that must exist in the folder (e.g. "meta.json").
        produced_by: What would be right, for the error message (e.g. DATASET_FROM).
        dst_path: Where to download to (MLflow's default: a new temporary folder that
            nobody removes; pass a `tempfile.TemporaryDirectory` for large artifacts).

    Returns:
        The local folder: the artifact itself when its store is on this disk (only read
        it), else a downloaded copy.

    Raises:
        ValueError: If the URI cannot be resolved or does not hold `required_file`.
    """
    if not uri or not uri.strip():
        raise ValueError(f"no input URI given; expected {produced_by}")
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme == "file" or (not scheme and "/" in uri):
        path = Path(local_file_uri_to_path(uri)) if scheme else Path(uri)
        if not path.exists():
            raise ValueError(f"{uri!r}: {path} does not exist; expected {produced_by}")
    local_dir = Path(uri) if os.path.isdir(uri) else local_artifact_dir(uri)
    if local_dir is None:
        if "://" not in uri and ":/" not in uri:
            raise ValueError(
                f"{uri!r} is neither an existing folder nor a URI; expected {produced_by}"
            )
        try:
            local_dir = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst_path)
            )
        except (MlflowException, OSError) as error:
            raise ValueError(
                f"could not fetch {uri!r} ({first_line(error)}); expected {produced_by}"
            ) from error
    if not (local_dir / required_file).is_file():
        raise ValueError(f"{uri!r} does not hold {required_file}; expected {produced_by}")
    return local_dir


def read_json_artifact(uri: str) -> dict:
    """Download one JSON artifact (or read a local file) into a dict; nothing is left on disk.

    Raises:
        MlflowException, OSError: If the artifact cannot be fetched; ValueError if not JSON.
    """
    if Path(uri).is_file():
        return json.loads(Path(uri).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        return json.loads(Path(path).read_text())


# ---------------------------------------------------------------------- dataset/ (get_data)


def written_by(meta: dict) -> str | None:
    """The stage whose artifact a meta.json describes: "preprocess", "get_data" or None.

    A `preprocessed/` meta.json holds the normalization; a `dataset/` one lists shards but no
    normalization. Anything else is left to the checks of the stage reading it.
    """
    if "normalization" in meta:
        return "preprocess"
    return "get_data" if "shards" in meta else None


def check_kind(uri: str, meta: dict, expected: str, reader: str) -> None:
    """Refuse another stage's artifact, saying which stage made it and what `reader` reads.

    Raises:
        ValueError: If the artifact was written by another stage than `expected`.
    """
    found = written_by(meta)
    if found in (None, expected):
        return
    made = {"preprocess": "a preprocess output", "get_data": "a get_data output (dataset/)"}
    wanted = {"preprocess": "a preprocess run's preprocessed/", "get_data": DATASET_FROM}
    raise ValueError(f"{uri!r} is {made[found]}; {reader} reads {wanted[expected]}")


def read_meta(folder: Path, written_by: str) -> dict:
    """An artifact's meta.json as a dict.

    Raises:
        ValueError: If it is missing or not JSON, naming the file and the stage to rerun.
    """
    path = Path(folder) / META_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{path} is missing or corrupt ({first_line(error)}); rerun {written_by}"
        ) from error
    if not isinstance(meta, dict):
        raise ValueError(f"{path} holds no meta.json record; rerun {written_by}")
    return meta


def read_dataset_meta(dataset_dir: Path) -> dict:
    """Read a `dataset/` folder's meta.json and check it lists shards."""
    meta = read_meta(dataset_dir, "get_data")
    for split in meta.get("counts", {}):
        shards.split_shards(meta, split)
    return meta


@contextlib.contextmanager
def open_dataset(data_uri: str, reader: str) -> Iterator[tuple[Path, dict]]:
    """Make a `dataset/` URI (or local folder) available on disk: yields (folder, meta).

    The shards are verified first (`shards.verify`). A downloaded copy lives in a temporary
    folder until the `with` block ends.

    Args:
        data_uri: The URI.
        reader: The stage that reads it, for messages ("explore_data", "preprocess").

    Raises:
        ValueError: If the URI holds no `dataset/`, another stage's artifact, or a damaged one.
    """
    with tempfile.TemporaryDirectory(prefix="mlpipe_dataset_") as download_dir:
        dataset_dir = resolve_artifact_dir(data_uri, META_FILE, DATASET_FROM, dst_path=download_dir)
        check_kind(data_uri, read_meta(dataset_dir, "get_data"), "get_data", reader)
        meta = read_dataset_meta(dataset_dir)
        shards.verify(dataset_dir, meta, "get_data")
        yield dataset_dir, meta


# ----------------------------------------------------------------- stats.json (explore_data)


def read_stats(stats_uri: str) -> dict:
    """Read a stats.json artifact by URI (or local path)."""
    try:
        return read_json_artifact(stats_uri)
    except Exception as error:
        raise ValueError(
            f"could not read stats from {stats_uri!r} ({first_line(error)}); expected {STATS_FROM}"
        ) from error


# --------------------------------------------------------------- preprocessed/ (preprocess)


def read_preprocessed_meta(preprocessed_dir: Path) -> dict:
    """Read a `preprocessed/` folder's meta.json and check that it lists every split.

    Raises:
        ValueError: If meta.json is missing or lists no shards (an older artifact).
    """
    meta = read_meta(preprocessed_dir, "preprocess")
    for split in PREPROCESSED_SPLITS:
        shards.split_shards(meta, split)
    return meta


@contextlib.contextmanager
def open_preprocessed(data: str, reader: str) -> Iterator[tuple[Path, dict]]:
    """Make a `preprocessed/` URI (or folder) available on disk: yields (folder, meta).

    The shards are verified first (`shards.verify`). A downloaded copy lives in a temporary
    folder until the `with` block ends.

    Args:
        data: The URI.
        reader: The stage that reads it, for messages ("train", "train_batch").

    Raises:
        ValueError: If the URI holds no `preprocessed/`, another stage's artifact, or a
            damaged one.
    """
    with tempfile.TemporaryDirectory(prefix="mlpipe_preprocessed_") as download_dir:
        preprocessed_dir = resolve_artifact_dir(
            data, META_FILE, PREPROCESSED_FROM, dst_path=download_dir
        )
        check_kind(data, read_meta(preprocessed_dir, "preprocess"), "preprocess", reader)
        try:
            meta = read_preprocessed_meta(preprocessed_dir)
        except ValueError as error:
            raise ValueError(f"{data!r}: {error}; expected {PREPROCESSED_FROM}") from error
        shards.verify(preprocessed_dir, meta, "preprocess")
        yield preprocessed_dir, meta


def load_preprocessed(
    preprocessed_dir: Path,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """Read a whole `preprocessed/` folder into memory (uint8): for tests and benchmarks."""
    meta = read_preprocessed_meta(preprocessed_dir)
    return {
        split: shards.read_split(preprocessed_dir, meta, split) for split in PREPROCESSED_SPLITS
    }, meta
