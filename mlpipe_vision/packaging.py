"""The package stage: wrap a trained Keras model into the served pyfunc and register it.

The normalization and the class names are found through lineage, not by path: the train
run's `mlpipe.input_uri` tag names the data it was trained on (a preprocess run's
`preprocessed/` artifact, or a local folder), whose `meta.json` holds both. The network is
saved in float32 whatever precision it was trained in, and the model states its pip
requirements (`mlpipe_vision.environment`), so it serves on any machine MLflow can build an
environment on.
"""

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

from mlpipe_vision import (
    artifacts,
    console,
    environment,
    lineage,
    liveness,
    models,
    promotion,
    pyfunc_model,
    request_bodies,
    serving,
    shards,
)
from mlpipe_vision.preprocessing import make_normalization

PYFUNC_CODE_PATH = Path(pyfunc_model.__file__)
MLPIPE_DIR = PYFUNC_CODE_PATH.parent


@dataclass
class TrainedModel:
    """A Keras model to package and what lineage tells about it."""

    keras_model_uri: str
    train_run_id: str
    preprocessed_uri: str | None


def parse_models_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """Split `models:/<name>@<alias>` or `models:/<name>/<version>` into (name, alias, version).

    Raises:
        ValueError: If the URI has neither an alias nor a version.
    """
    rest = model_uri.removeprefix("models:/").strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, alias, None
    if "/" in rest:
        name, version = rest.rsplit("/", 1)
        return name, None, version
    raise ValueError(
        f"expected models:/<name>@<alias> or models:/<name>/<version>, got {model_uri!r}"
    )


def resolve_trained_model(model_uri: str, client: MlflowClient) -> TrainedModel:
    """Follow a model URI, a registered model or a sweep back to the train run's Keras model.

    Args:
        model_uri: `runs:/<train_run_id>/model`, `runs:/<sweep_parent_run_id>`,
            `models:/<name>@<alias>` or `models:/<name>/<version>`.
        client: Tracking client.

    Returns:
        The Keras model URI and its train run.

    Raises:
        ValueError: If the URI or the run it names is not something that can be packaged.
    """
    expected = (
        "runs:/<train_run_id>/model, runs:/<train_batch_parent_run_id> or models:/<name>@<alias>"
    )
    try:
        if model_uri.startswith("models:/"):
            name, alias, version = parse_models_uri(model_uri)
            model_version = (
                client.get_model_version_by_alias(name, alias)
                if alias
                else client.get_model_version(name, version)
            )
            run = client.get_run(model_version.run_id)
            if run.data.tags.get(artifacts.STAGE_TAG) == "package":
                # A packaged model: repackage the network it was built from.
                return resolve_trained_model(run.data.tags[artifacts.INPUT_URI_TAG], client)
            return TrainedModel(
                model_uri, run.info.run_id, run.data.tags.get(artifacts.INPUT_URI_TAG)
            )
        run_id, artifact_path = artifacts.parse_runs_uri(model_uri)
        run = client.get_run(run_id)
    except MlflowException as error:
        raise ValueError(
            f"cannot find {model_uri!r} ({console.first_line(error)}); expected {expected}"
        ) from error
    stage = run.data.tags.get(artifacts.STAGE_TAG)
    if stage == "train_batch":
        best_run_id = run.data.tags.get(artifacts.BEST_RUN_TAG)
        if not best_run_id:
            raise ValueError(f"sweep run {run_id} has no finished trial to package")
        return resolve_trained_model(artifacts.artifact_uri(best_run_id, "model"), client)
    if stage != "train":
        raise ValueError(f"run {run_id} is a {stage or 'non-mlpipe'} run; expected {expected}")
    return TrainedModel(
        artifacts.artifact_uri(run_id, artifact_path or "model"),
        run_id,
        run.data.tags.get(artifacts.INPUT_URI_TAG),
    )


def find_model_meta(trained: TrainedModel, mean: float | None, std: float | None) -> dict:
    """Class names, input shape, dataset name and normalization of a trained model.

    They are read from the `meta.json` of the data the model was trained on: a preprocess
    run's `preprocessed/` artifact, or a local folder of preprocessed data. Explicit `mean`
    and `std` override the normalization found there.

    Raises:
        ValueError: If the training data's meta.json cannot be found or read.
    """
    if (mean is None) != (std is None):
        raise ValueError(f"give both mean and std or neither; got mean={mean}, std={std}")
    if not trained.preprocessed_uri:
        raise ValueError(
            f"train run {trained.train_run_id} has no {artifacts.INPUT_URI_TAG} tag, so the data "
            "it was trained on (class names, image shape, normalization) cannot be found; "
            "package a model trained by this pipeline's train stage"
        )
    meta_uri = f"{trained.preprocessed_uri.rstrip('/')}/meta.json"
    try:
        meta = artifacts.read_json_artifact(meta_uri)
    except (MlflowException, OSError, ValueError) as error:
        raise ValueError(
            f"cannot read {meta_uri}, the meta.json of the data train run "
            f"{trained.train_run_id} was trained on ({console.first_line(error)}); expected "
            "a preprocess run's preprocessed/ artifact or a folder preprocess wrote"
        ) from error
    normalization = meta["normalization"]
    if mean is not None:
        normalization = make_normalization(mean, std, meta["image_shape"][-1])
    return {
        "dataset": meta.get("dataset", "model"),
        "class_names": meta["class_names"],
        "image_shape": meta["image_shape"],
        "normalization": normalization,
        "trained_on": trained.preprocessed_uri,
    }


def output_signature(class_names: list[str]) -> ModelSignature:
    """The answer's schema; the input is left open because the model checks it itself.

    An input schema would make MLflow coerce or refuse requests before `predict` sees
    them, and this model takes several layouts (pixel tables, tensors, base64 images).
    """
    columns = [
        ColSpec("long", "class_id"),
        ColSpec("string", "class_name"),
        ColSpec("double", "probability"),
    ] + [ColSpec("double", column) for column in serving.probability_columns(class_names)]
    return ModelSignature(outputs=Schema(columns))


def input_example(meta: dict, sample: np.ndarray | None) -> pd.DataFrame | np.ndarray:
    """One image in the workshop's layout (H x W table) for grayscale, a tensor otherwise."""
    height, width, channels = meta["image_shape"]
    image = sample if sample is not None else np.zeros((height, width, channels), np.uint8)
    if channels == 1:
        return pd.DataFrame(image[:, :, 0].astype(np.int64))
    return image[np.newaxis].astype(np.int64)


def sample_test_image(preprocessed_uri: str | None) -> np.ndarray | None:
    """A raw test image of the data the model was trained on, for the input example.

    Only meta.json and the first test shard are fetched, not the whole artifact.
    """
    if not preprocessed_uri:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            meta = artifacts.read_json_artifact(f"{preprocessed_uri}/{artifacts.META_FILE}")
            first = shards.split_shards(meta, "test")[0]
            path = mlflow.artifacts.download_artifacts(
                f"{preprocessed_uri}/{first['file']}", dst_path=tmp
            )
            return shards.load(Path(path).parent, first, "images")[0]
        except (ValueError, MlflowException, OSError, IndexError):
            return None  # the example is a convenience: without it, a blank image


def save_model_files(meta: dict, keras_model_uri: str, artifacts_dir: Path) -> dict[str, str]:
    """Write the network and meta.json that the pyfunc loads; return the artifacts mapping."""
    import mlflow.keras

    # Downloaded into artifacts_dir, which the caller removes: MLflow's own download folder
    # for load_model(uri) is a temporary folder that nobody removes (7.8 MB a package run).
    local_model = mlflow.artifacts.download_artifacts(
        keras_model_uri, dst_path=str(artifacts_dir / "keras_model")
    )
    try:
        network = models.as_float32(mlflow.keras.load_model(local_model))
    except Exception as error:  # a damaged file fails in any of Keras' or h5py's errors
        raise ValueError(
            f"the Keras model at {keras_model_uri} cannot be loaded ({console.first_line(error)});"
            " it is damaged: rerun train"
        ) from error
    network_path = artifacts_dir / "network.keras"
    network.save(network_path)
    meta_path = artifacts_dir / "meta.json"
    meta_path.write_text(json.dumps(meta, indent=2))
    return {"network": str(network_path), "meta": str(meta_path)}


def save_to_folder(output_dir: str, **model_arguments: object) -> None:
    """Also save the pyfunc to a local folder, replacing an earlier saved model there.

    Raises:
        ValueError: If the folder exists and is not a saved MLflow model.
    """
    target = Path(output_dir)
    if target.exists():
        if not (target / "MLmodel").is_file():
            raise ValueError(
                f"output_dir {output_dir} exists and is not a saved MLflow model; "
                "choose a new or empty folder"
            )
        shutil.rmtree(target)
    mlflow.pyfunc.save_model(path=str(target), **model_arguments)


def package_key(train_run_id: str, meta: dict) -> str:
    """What makes two packagings the same: the train run and the pyfunc's meta.json.

    meta.json holds the normalization, the class names and the input shape.
    """
    return artifacts.record_key({"train_run_id": train_run_id, "meta": meta})


def registered_versions(client: MlflowClient, name: str, key: str) -> list:
    """The versions of `name` registered with this package key, oldest first."""
    if not client.search_registered_models(f"name = '{name}'"):
        return []
    versions = client.search_model_versions(f"name = '{name}'")
    same = [v for v in versions if v.tags.get(artifacts.PACKAGE_KEY_TAG) == key]
    return sorted(same, key=lambda version: int(version.version))


def register_once(client: MlflowClient, name: str, model_uri: str, tags: dict) -> str:
    """Register the logged pyfunc as a version of `name`, unless its package key has one.

    Two packagings of the same thing at once (two `main`s) may both register; each then
    keeps the oldest version with the key and deletes its own newer one, so one remains.
    The key is tagged on the version as it is created, so each sees the other's.

    Returns:
        The version number.
    """
    liveness.stop_if_stopped()  # nothing is registered after the user stopped the command
    registered = mlflow.register_model(model_uri, name, tags=tags)
    oldest = registered_versions(client, name, tags[artifacts.PACKAGE_KEY_TAG])[0]
    if oldest.version != registered.version:
        client.delete_model_version(name, registered.version)
    return str(oldest.version)


def log_and_register(
    client: MlflowClient,
    trained: TrainedModel,
    meta: dict,
    name: str,
    key: str,
    tmp: Path,
    output_dir: str,
) -> str:
    """Log the served pyfunc to the active run and register it once (see `register_once`).

    Returns:
        The version number.
    """
    sample = sample_test_image(trained.preprocessed_uri)
    model_arguments = {
        "python_model": str(PYFUNC_CODE_PATH),
        "artifacts": save_model_files(meta, trained.keras_model_uri, tmp),
        "code_paths": [str(MLPIPE_DIR)],
        "pip_requirements": environment.pinned_requirements(
            environment.PACKAGED_MODEL_DISTRIBUTIONS
        ),
        "signature": output_signature(meta["class_names"]),
        "input_example": input_example(meta, sample),
    }
    model_info = mlflow.pyfunc.log_model(name="model", **model_arguments)
    version_tags = {artifacts.TRAIN_RUN_TAG: trained.train_run_id, artifacts.PACKAGE_KEY_TAG: key}
    version = register_once(client, name, model_info.model_uri, version_tags)
    if output_dir:
        save_to_folder(output_dir, **model_arguments)
    return version


def promote_version(
    client: MlflowClient,
    name: str,
    alias: str,
    version: str,
    train_run_id: str,
    promote: str,
    metric: str,
) -> promotion.Decision:
    """Point `alias` at `version` if the promotion rule says so; tag the decision.

    The decision, the metric and both scores are tagged on the version and the active run.
    """
    candidate = promotion.train_run_score(client, train_run_id, metric)
    champion_version = promotion.current_champion(client, name, alias)
    champion, before = None, None
    if champion_version is not None:
        before = str(champion_version.version)
        champion_run = champion_version.tags.get(artifacts.TRAIN_RUN_TAG)
        champion = (
            promotion.train_run_score(client, champion_run, metric)
            if champion_run
            else promotion.Score(None, None)
        )
    if before == str(version):
        decision = promotion.Decision(False, "current", "it is the champion already")
    else:
        decision = promotion.decide(promote, metric, candidate, champion, before)
    tags = promotion.decision_tags(decision, metric, candidate, champion, before)
    for tag, value in tags.items():
        client.set_model_version_tag(name, version, tag, value)
    mlflow.set_tags(tags)
    if decision.promote:
        liveness.stop_if_stopped()  # the alias is not moved after the user stopped the command
        client.set_registered_model_alias(name, alias, version)
    alias_uri = f"models:/{name}@{alias}"
    if decision.promote or decision.outcome == "current":
        print(f"{alias_uri} points at version {version}: {decision.reason}")
    elif before:
        print(f"{alias_uri} stays at version {before}: {decision.reason}")
    else:
        print(f"{alias_uri} is not set: {decision.reason}")
    return decision


def run_package(
    model: str,
    registered_model_name: str = "",
    alias: str = "champion",
    mean: float | None = None,
    std: float | None = None,
    output_dir: str = "",
    promote: str = "better",
    metric: str = promotion.DEFAULT_METRIC,
) -> str:
    """The package stage: log the served pyfunc, register it, and promote it if it earns it.

    Args:
        model: What to package (see `resolve_trained_model`).
        registered_model_name: Registry name; "" derives it from the dataset.
        alias: The alias a good enough version takes (see `promotion`).
        mean: Explicit normalization mean (0-255 scale), overriding lineage; with `std`.
        std: Explicit normalization std.
        output_dir: Also save the pyfunc to this local folder ("" to skip).
        promote: "better" (take the alias when at least as good as its holder on the same
            test set), "always" or "never".
        metric: The train run's metric compared, e.g. test_accuracy or test_loss.

    Returns:
        The model URI to serve: `models:/<name>@<alias>` when the alias points at this
        version, else `models:/<name>/<version>`.
    """
    promotion.check_promote(promote)
    client = MlflowClient()
    trained = resolve_trained_model(model, client)
    promotion.check_metric(client, trained.train_run_id, metric)
    meta = find_model_meta(trained, mean, std)
    name = registered_model_name or f"{meta['dataset']}_classifier"
    key = package_key(trained.train_run_id, meta)
    already = [] if output_dir else registered_versions(client, name, key)
    with (
        lineage.start_stage_run(
            "package", input_uri=trained.keras_model_uri, name=f"package {name}"
        ),
        tempfile.TemporaryDirectory() as tmp,
    ):
        mlflow.set_tag(artifacts.TRAIN_RUN_TAG, trained.train_run_id)
        if already:
            version = str(already[0].version)
            print(
                f"{name} version {version} already packages train run {trained.train_run_id} "
                "with this normalization: reused, not registered again"
            )
        else:
            version = log_and_register(client, trained, meta, name, key, Path(tmp), output_dir)
            print(f"\nregistered {name} version {version}")
        decision = promote_version(
            client, name, alias, version, trained.train_run_id, promote, metric
        )
        holds_alias = decision.promote or decision.outcome == "current"
        registered_uri = f"models:/{name}@{alias}" if holds_alias else f"models:/{name}/{version}"
        mlflow.set_tag(artifacts.REGISTERED_MODEL_TAG, registered_uri)
    if output_dir:
        print(f"also saved to {output_dir}")
    if not lineage.is_chained():  # main prints these once, at the end
        print(f"serve: mlflow models serve -m {registered_uri} -p 5000 --env-manager local")
        print(
            "query: python png_to_pandas.py drawing.png && "
            + request_bodies.curl_command("example.json", port=5000)
        )
    return registered_uri
