"""Resuming a killed train run from its last finished epoch.

After every epoch the train run saves Keras' `BackupAndRestore` files (the weights with the
optimizer's state, and the epoch reached) and logs them to its `checkpoint/` artifact, so
they live in the tracking store: a resume works on another machine against the same server.
A train run is tagged with a key of what it trains (its data URI and every parameter). When
a train run starts, the newest KILLED or FAILED run with the same key and a checkpoint is
resumed: the new run is tagged `mlpipe.resumed_from`, copies the killed run's per-epoch
metrics before the checkpoint's epoch (so its history reads as one from epoch 0), and
`BackupAndRestore` restores the weights and starts `fit` at that epoch. The pipeline's
shuffle depends on (seed, epoch) only (`training.EpochClock`), so on the CPU the resumed
run ends as the uninterrupted one would. Not resumed: VGG16 fine-tuning runs (their second
phase recompiles the network), and early stopping's count of epochs without progress, which
starts afresh at the resumed epoch.
"""

import json
from pathlib import Path

import keras
import mlflow
from mlflow.entities import Metric, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlpipe_vision import artifacts
from mlpipe_vision.train_parameters import TrainParameters

SEED_STATES_FILE = "seed_states.json"
SEED_STATE_NAME = "seed_generator_state"  # how Keras names a random generator's variable
RESUMABLE_STATUSES = (RunStatus.to_string(RunStatus.KILLED), RunStatus.to_string(RunStatus.FAILED))


def train_key(data: str, parameters: TrainParameters) -> str:
    """What makes two train runs the same training: the data URI and every parameter."""
    return artifacts.record_key({"data": data, **parameters.as_dict()})


class ArtifactBackup(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore, with the network's random state, logged after every epoch.

    BackupAndRestore saves the weights and the optimizer's state but not the state of the
    network's random generators (dropout's), so a resumed run would drop other units than
    the uninterrupted one; this saves and restores them too (SEED_STATES_FILE).
    """

    def __init__(self, backup_dir: str) -> None:
        super().__init__(backup_dir, save_freq="epoch", double_checkpoint=False)
        self._seed_states_path = Path(backup_dir, SEED_STATES_FILE)

    def _seed_states(self) -> dict[str, keras.Variable]:
        return {v.path: v for v in self.model.variables if v.path.endswith(SEED_STATE_NAME)}

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Restore the weights, the optimizer, the epoch and the random state, if saved."""
        super().on_train_begin(logs)
        if self._seed_states_path.is_file():
            saved = json.loads(self._seed_states_path.read_text())
            for path, variable in self._seed_states().items():
                variable.assign(saved[path])

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Save the epoch's state, then log it as the run's `checkpoint/` artifact."""
        super().on_epoch_end(epoch, logs)
        states = {path: variable.numpy().tolist() for path, variable in self._seed_states().items()}
        self._seed_states_path.write_text(json.dumps(states))
        mlflow.log_artifacts(self.backup_dir, artifacts.CHECKPOINT)


def checkpoint_epoch(run_id: str) -> int | None:
    """The epoch a run's checkpoint reached (its small metadata file only); None if none."""
    uri = artifacts.artifact_uri(run_id, f"{artifacts.CHECKPOINT}/{artifacts.CHECKPOINT_META_FILE}")
    try:
        return int(artifacts.read_json_artifact(uri)["epoch"])
    except (MlflowException, OSError, ValueError, KeyError):
        return None


def is_checkpointed(parameters: TrainParameters) -> bool:
    """Whether a training saves checkpoints (not VGG16 fine-tuning: it recompiles the network)."""
    return not parameters.fine_tune_epochs


def find_resumable(
    client: MlflowClient, experiment_id: str, key: str, exclude: str, folder: Path
) -> tuple[str, int] | None:
    """The newest killed or failed train run with this key and a checkpoint, and its epoch.

    Its checkpoint is downloaded to `folder`, which must be named artifacts.CHECKPOINT (as
    MLflow names the downloaded folder). `exclude` is the run now starting.
    """
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{artifacts.TRAIN_KEY_TAG}` = '{key}'",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    for run in runs:
        if run.info.run_id == exclude or run.info.status not in RESUMABLE_STATUSES:
            continue
        epoch = checkpoint_epoch(run.info.run_id)
        if epoch:
            mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path=artifacts.CHECKPOINT, dst_path=folder.parent
            )
            return run.info.run_id, epoch
    return None


def copy_history(client: MlflowClient, source: str, target: str, before_epoch: int) -> dict:
    """Log `source`'s per-epoch metrics for epochs before `before_epoch` to `target`.

    Returns:
        Metric name to its values by epoch, as Keras' history holds them.
    """
    history = {}
    metrics = []
    for name in client.get_run(source).data.metrics:
        points = sorted(client.get_metric_history(source, name), key=lambda point: point.step)
        points = [point for point in points if point.step < before_epoch]
        if len(points) != before_epoch:
            continue  # not a per-epoch metric (best_epoch, test_*)
        history[name] = [point.value for point in points]
        metrics += [Metric(name, p.value, p.timestamp, p.step) for p in points]
    for start in range(0, len(metrics), 1000):  # log_batch takes 1,000 metrics at most
        client.log_batch(target, metrics=metrics[start : start + 1000])
    return history


def resume_if_killed(data: str, parameters: TrainParameters, backup_dir: Path) -> dict:
    """Tag the active train run with its key; resume the killed run with the same key, if any.

    Returns:
        The resumed epochs' history (metric name to values), empty when starting afresh.
    """
    client = MlflowClient()
    run = mlflow.active_run()
    key = train_key(data, parameters)
    mlflow.set_tag(artifacts.TRAIN_KEY_TAG, key)
    if not is_checkpointed(parameters):
        return {}
    found = find_resumable(client, run.info.experiment_id, key, run.info.run_id, backup_dir)
    if found is None:
        return {}
    killed_id, epoch = found
    mlflow.set_tags({artifacts.RESUMED_FROM_TAG: killed_id, artifacts.RESUMED_AT_EPOCH_TAG: epoch})
    history = copy_history(client, killed_id, run.info.run_id, epoch)
    print(f"resuming train run {killed_id} at epoch {epoch + 1} from its checkpoint", flush=True)
    return history
