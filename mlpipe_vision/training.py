"""Training: the tf.data pipeline, per-epoch MLflow logging, plots, and the train stage.

The functions above "the stage" work on arrays and models. The stage reads like its steps:
`run_train` opens the `preprocessed/` artifact (`mlpipe_vision.artifacts`) and checks the
parameters (`TrainParameters`), `prepare` builds the pipelines and the network, `log_setup`
logs what the run is, `fit` trains and logs every epoch, and `log_results` evaluates on the
test split and logs the plots and the model.
"""

import dataclasses
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402
from mlflow.models.model import ModelInfo  # noqa: E402

from mlpipe_vision import (  # noqa: E402
    artifacts,
    console,
    devices,
    environment,
    lineage,
    models,
    resume,
    shards,
    train_parameters,
)
from mlpipe_vision.devices import Devices  # noqa: E402
from mlpipe_vision.images import normalize  # noqa: E402
from mlpipe_vision.train_parameters import TrainParameters  # noqa: E402

# Fine-tuning VGG16's top block at the full rate would wreck its pretrained filters.
FINE_TUNE_RATE_FACTOR = 0.1
POSITIVE_CLASS = 1
EVALUATION_BATCH_SIZE = 256
# Evaluation batches hold at most this much float32 input: 256 Fashion-MNIST images, 55 of
# VGG16's 224x224 RGB. Larger ones only cost memory: a 256-image batch at 224x224 RGB is 154 MB
# of input and about 400 MB of first-layer activations, and predict prepares the next batch
# meanwhile, so the peak depended on whether a split held one full batch or several.
EVALUATION_BATCH_BYTES = 32 * 2**20
MISCLASSIFIED_SHOWN = 25
# Below this many training images in some class, test metrics swing by several points
# from one seed or split to the next.
FEW_IMAGES_PER_CLASS = 300
# Random flips and shifts that keep the label true: digits must not be mirrored; clothes
# may be mirrored left-right but are centred, so shifting them only makes the task harder
# (measured with 32 filters at 10 epochs: 92.5% test accuracy without, 92.2% flipped,
# 90.6% flipped and shifted); cells have no up or down.
AUGMENTATIONS = {
    "mnist": ("shift",),
    "fashion_mnist": ("horizontal_flip",),
    "malaria": ("horizontal_flip", "vertical_flip", "shift"),
}
DEFAULT_AUGMENTATIONS = ("horizontal_flip", "shift")
SHIFT_FRACTION = 0.1
# Batches made ahead of the one training uses (see make_dataset).
PREFETCH_BATCHES = 2


# ---------------------------------------------------------------------- reproducibility


def make_reproducible(seed: int, deterministic_ops: bool) -> None:
    """Seed Python, NumPy, TensorFlow and Keras; make TF ops deterministic where asked.

    Args:
        seed: The seed.
        deterministic_ops: Also pick deterministic kernels (done on the CPU, where it is
            cheap; on a GPU it costs speed and some ops have no deterministic version).
    """
    keras.utils.set_random_seed(seed)
    if deterministic_ops:
        tf.config.experimental.enable_op_determinism()


# ---------------------------------------------------------------------------- pipelines


def augmentation_names(dataset_name: str) -> tuple[str, ...]:
    """The label-preserving augmentations for a dataset (see AUGMENTATIONS)."""
    return AUGMENTATIONS.get(dataset_name, DEFAULT_AUGMENTATIONS)


def build_augmentation(names: tuple[str, ...], seed: int) -> keras.Sequential:
    """Random flips and shifts as Keras layers, applied to training batches only.

    Args:
        names: Any of "horizontal_flip", "vertical_flip", "shift".
        seed: Seed of the random layers.

    Returns:
        A model mapping a batch of images to an augmented batch of the same shape.
    """
    layers = []
    if "horizontal_flip" in names and "vertical_flip" in names:
        layers.append(keras.layers.RandomFlip("horizontal_and_vertical", seed=seed))
    elif "horizontal_flip" in names:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    elif "vertical_flip" in names:
        layers.append(keras.layers.RandomFlip("vertical", seed=seed))
    if "shift" in names:
        # "nearest" repeats the border, which is background in these datasets.
        layers.append(
            keras.layers.RandomTranslation(
                SHIFT_FRACTION, SHIFT_FRACTION, fill_mode="nearest", seed=seed + 1
            )
        )
    return keras.Sequential(layers, name="augmentation")


class EpochClock(keras.callbacks.Callback):
    """The epoch Keras is training, for the training pipeline's shuffle.

    The pipeline shuffles by (seed, epoch) rather than by how often it was iterated, so a
    training resumed at epoch 3 sees the same order as an uninterrupted one does there.
    Keras starts each epoch's iterator after `on_epoch_begin`, so the epoch is set in time.
    """

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Record the epoch that begins."""
        self.epoch = epoch


def batches_kept(count: int, batch_size: int, replicas: int = 1) -> int:
    """How many batches of `count` images a pipeline yields, dropping a too-small last one.

    A last batch smaller than the number of replicas is dropped: some replica would get no
    image, and its loss, a mean over nothing, is NaN. On one device every batch is kept.
    """
    full, remainder = divmod(count, batch_size)
    return full + (remainder >= replicas)


def even_split(images: tf.Tensor, labels: tf.Tensor, replicas: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Trim a batch to a multiple of `replicas` images, so that every replica gets as many.

    Keras builds a distributed model from the mean of the replicas' first batches, which
    fails unless they have one shape; equal shares also weigh every image alike. Batches of
    a `batch_size` that is a multiple of `replicas` are kept whole: only the last one of a
    split loses its fewer than `replicas` extra images.
    """
    kept = tf.shape(labels)[0] // replicas * replicas
    return images[:kept], labels[:kept]


def for_replicas(
    batches: tf.data.Dataset, count: int, batch_size: int, replicas: int
) -> tf.data.Dataset:
    """The batches of `count` images that split evenly among `replicas`, with their number.

    A split's last batch is cut to a multiple of the replicas (`even_split`), or dropped when
    smaller (`batches_kept`); on one device nothing changes.
    """
    batch_count = batches_kept(count, batch_size, replicas)
    dataset = batches.take(batch_count)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(batch_count))
    if replicas > 1:
        dataset = dataset.map(lambda x, y: even_split(x, y, replicas))
    return dataset


def make_dataset(
    folder: Path,
    meta: dict,
    split: str,
    num_classes: int,
    batch_size: int,
    shuffle_seed: int | None = None,
    augmentation: keras.Sequential | None = None,
    clock: EpochClock | None = None,
    replicas: int = 1,
) -> tf.data.Dataset:
    """A tf.data pipeline of (normalized images, one-hot labels) batches, streamed from shards.

    Each shard is read in one NumPy call (`shards.load`) and, for training, put in a random
    order; shards come in a random order too, both drawn from (seed, epoch), so every epoch
    has its own order and a resumed training repeats the order of an uninterrupted one.
    Batches are cut from the shard and `rebatch` joins a shard's last, short batch with the
    next shard's first images. They are normalized as `images.normalize` does, with
    meta.json's values, the ones the served model applies. Python runs once per shard, not
    per batch (a `from_generator` of batches halved training speed on Fashion-MNIST), and no
    element is a single image (a per-image shuffle buffer let memory grow with the number of
    shards), so memory holds about a shard and its shuffled copy whatever the size of the
    data. The prefetch buffer is fixed (PREFETCH_BATCHES): an AUTOTUNE buffer grows with the
    length of the run, which made peak memory grow with the number of images.

    Args:
        folder: A `preprocessed/` folder.
        meta: Its meta.json.
        split: "train", "validation" or "test".
        num_classes: Width of the one-hot labels.
        batch_size: Batch size.
        shuffle_seed: Shuffle shards and images anew every epoch from this seed (training);
            None keeps the stored order (evaluation).
        augmentation: Layers applied to each training batch, or None.
        clock: Where the epoch is read when shuffling (the callback goes to `fit`); None
            shuffles as epoch 0.
        replicas: The replicas a strategy splits each batch among, of which `batch_size`
            must be a multiple (see `for_replicas`).

    Returns:
        The dataset, prefetching, with its number of batches as cardinality.
    """
    image_shape = tuple(int(size) for size in meta["image_shape"])
    records = shards.split_shards(meta, split)
    mean = tf.constant(meta["normalization"]["mean"], tf.float32)
    std = tf.constant(meta["normalization"]["std"], tf.float32)

    def read_shard(position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if shuffle_seed is None:
            record = records[int(position)]
            return shards.load(folder, record, "images"), shards.load(folder, record, "labels")
        epoch = clock.epoch if clock is not None else 0
        seed = shuffle_seed % 2**63
        index = int(np.random.default_rng([seed, epoch]).permutation(len(records))[position])
        images = shards.load(folder, records[index], "images")
        labels = shards.load(folder, records[index], "labels")
        order = np.random.default_rng([seed, epoch, index]).permutation(len(labels))
        return images[order], labels[order]

    def shard_batches(position: tf.Tensor) -> tf.data.Dataset:
        images, labels = tf.numpy_function(read_shard, [position], (tf.uint8, tf.int64))
        images.set_shape((None, *image_shape))
        labels.set_shape((None,))
        starts = tf.data.Dataset.range(0, tf.shape(labels, out_type=tf.int64)[0], batch_size)
        return starts.map(
            lambda start: (images[start : start + batch_size], labels[start : start + batch_size])
        )

    positions = tf.data.Dataset.range(len(records))
    batches = positions.flat_map(shard_batches).rebatch(batch_size)
    dataset = for_replicas(batches, int(meta["counts"][split]), batch_size, replicas)
    dataset = dataset.map(
        lambda x, y: ((tf.cast(x, tf.float32) - mean) / std, tf.one_hot(y, num_classes)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if augmentation is not None:
        dataset = dataset.map(
            lambda x, y: (augmentation(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE
        )
    return dataset.prefetch(PREFETCH_BATCHES)


# ------------------------------------------------------------------------------ compile


def make_optimizer(name: str, learning_rate: float, decay_steps: int) -> keras.optimizers.Optimizer:
    """Create an optimizer with a cosine decay of the rate from `learning_rate` to 0.

    The decay over the planned steps lets the last epochs settle into a minimum (a third of
    a point of test accuracy on Fashion-MNIST at 10 epochs). SGD uses Nesterov momentum 0.9.
    """
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps)
    if name == "adam":
        return keras.optimizers.Adam(schedule)
    if name == "adamw":
        return keras.optimizers.AdamW(schedule)
    if name == "sgd":
        return keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(schedule)
    known = ", ".join(train_parameters.OPTIMIZERS)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {known}")


def make_metrics(num_classes: int) -> list[keras.metrics.Metric]:
    """Accuracy; for two classes also AUC, precision and recall of class 1.

    Labels are one-hot. AUC is computed on the class-1 column only (label_weights [0, 1]),
    which is the usual binary ROC AUC of the softmax output.
    """
    metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if num_classes == 2:
        metrics += [
            keras.metrics.AUC(name="auc", multi_label=True, num_labels=2, label_weights=[0, 1]),
            keras.metrics.Precision(name="precision", class_id=POSITIVE_CLASS),
            keras.metrics.Recall(name="recall", class_id=POSITIVE_CLASS),
        ]
    return metrics


def metrics_of_probabilities(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """The loss and `make_metrics` metrics of predicted probabilities, as evaluate reports them.

    Args:
        labels: Integer labels (N,).
        probabilities: Softmax outputs (N, classes).

    Returns:
        Metric name ("loss", "accuracy", ...) to value.
    """
    one_hot = keras.ops.one_hot(labels, probabilities.shape[1])
    values = {"loss": float(keras.losses.CategoricalCrossentropy()(one_hot, probabilities))}
    for metric in make_metrics(probabilities.shape[1]):
        metric.update_state(one_hot, probabilities)
        values[metric.name] = float(metric.result())
    return values


def compile_model(
    model: keras.Model, optimizer: str, learning_rate: float, decay_steps: int, num_classes: int
) -> None:
    """Compile with categorical cross-entropy and the metrics of `make_metrics`.

    Args:
        model: The model.
        optimizer: One of train_parameters.OPTIMIZERS.
        learning_rate: The initial learning rate.
        decay_steps: Training steps over which the rate decays to 0.
        num_classes: Number of classes.
    """
    # jit_compile stays Keras' "auto": XLA on a GPU, off on a CPU-only machine, where it
    # made an epoch about 4x slower here.
    model.compile(
        optimizer=make_optimizer(optimizer, learning_rate, decay_steps),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=make_metrics(num_classes),
    )


# ---------------------------------------------------------------------------- callbacks


class MlflowEpochLogger(keras.callbacks.Callback):
    """Log every metric Keras reports at the end of an epoch, with step=epoch.

    Adds `epoch_seconds`, the wall time of the epoch including validation.
    """

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Start the epoch's clock."""
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Log the epoch's metrics to the active MLflow run."""
        values = {name: float(value) for name, value in (logs or {}).items()}
        values["epoch_seconds"] = time.perf_counter() - self._started
        mlflow.log_metrics(values, step=epoch)


def fit_phase(
    model: keras.Model,
    train_data: tf.data.Dataset,
    validation_data: tf.data.Dataset,
    first_epoch: int,
    epochs: int,
    early_stopping_patience: int,
    extra_callbacks: tuple[keras.callbacks.Callback, ...] = (),
) -> tuple[dict[str, list[float]], int]:
    """Fit for `epochs` epochs numbered from `first_epoch`, logging each to MLflow.

    With early stopping, training stops after `early_stopping_patience` epochs without a
    better validation loss and the weights of the best epoch are restored.

    Returns:
        (the history, metric name to one value per epoch run; the epoch whose weights the
        model holds at the end).
    """
    callbacks = [MlflowEpochLogger(), *extra_callbacks]
    stopper = None
    if early_stopping_patience:
        stopper = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=early_stopping_patience, restore_best_weights=True
        )
        callbacks.append(stopper)
    history = model.fit(
        train_data,
        validation_data=validation_data,
        initial_epoch=first_epoch,
        epochs=first_epoch + epochs,
        callbacks=callbacks,
        shuffle=False,  # the pipeline shuffles, with its own seed
        verbose=1 if sys.stdout.isatty() else 2,
    )
    last_epoch = history.epoch[-1] if history.epoch else first_epoch + epochs - 1
    best_epoch = stopper.best_epoch if stopper is not None else last_epoch
    return history.history, best_epoch


# -------------------------------------------------------------------- results and plots


def model_summary(model: keras.Model) -> str:
    """The Keras model summary as text."""
    lines = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    return "\n".join(lines)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs, true classes as rows."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def plot_learning_curves(
    history: dict[str, list[float]], fine_tune_start: int | None = None
) -> plt.Figure:
    """One panel per metric with its train and validation curves over the epochs."""
    names = [name for name in history if not name.startswith("val_") and f"val_{name}" in history]
    figure, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        epochs = np.arange(1, len(history[name]) + 1)
        axis.plot(epochs, history[name], marker="o", label="train")
        axis.plot(epochs, history[f"val_{name}"], marker="o", label="validation")
        if fine_tune_start is not None:
            axis.axvline(fine_tune_start + 0.5, color="gray", linestyle="--", label="fine-tuning")
        axis.set_xlabel("epoch")
        axis.set_title(name)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return figure


def plot_confusion_matrix(matrix: np.ndarray, class_names: list[str]) -> plt.Figure:
    """The confusion matrix with counts in the cells."""
    size = max(4.0, 0.6 * len(class_names) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    positions = np.arange(len(class_names))
    axis.set_xticks(positions, class_names, rotation=45, ha="right")
    axis.set_yticks(positions, class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        color = "white" if count > threshold else "black"
        axis.text(column, row, str(count), ha="center", va="center", color=color, fontsize=8)
    axis.set_title(f"Test set: {int(np.trace(matrix))} of {int(matrix.sum())} correct")
    figure.tight_layout()
    return figure


def confident_mistakes(
    labels: np.ndarray, probabilities: np.ndarray, limit: int = MISCLASSIFIED_SHOWN
) -> np.ndarray:
    """Positions of the most confidently misclassified examples, most confident first."""
    predictions = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predictions != labels)
    return wrong[np.argsort(-probabilities[wrong, predictions[wrong]], kind="stable")][:limit]


def plot_misclassified(
    images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]
) -> plt.Figure:
    """Misclassified images (uint8) with their true class and the predicted one."""
    predictions = probabilities.argmax(axis=1)
    columns = 5
    rows = max(1, math.ceil(len(labels) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 2.2, rows * 2.5), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, pixels, label, predicted, row in zip(
        axes.ravel(), images, labels, predictions, probabilities, strict=False
    ):
        axis.imshow(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, cmap="gray")
        axis.set_title(
            f"true {class_names[label]}\npred {class_names[predicted]} ({row[predicted]:.2f})",
            fontsize=8,
        )
    if not len(labels):
        axes[0, 0].set_title("no misclassified test images")
    figure.tight_layout()
    return figure


# ----------------------------------------------------------------------------- logging


class _KerasFlavorWithFolder:
    """mlflow.keras whose save_model creates the model folder first.

    MLflow 3.17's keras flavor writes input_example.json before it creates the folder and
    fails with FileNotFoundError; creating the folder first lets the example be recorded the
    documented way (MLmodel's saved_input_example_info and serving_input_example.json).
    """

    __name__ = "mlflow.keras"

    @staticmethod
    def save_model(path: str, validate_serving_input: bool = True, **kwargs: object) -> None:
        """Create `path`, then save as mlflow.keras does (Model.log validates, not save)."""
        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)


def log_keras_model(model: keras.Model, example_images: np.ndarray) -> ModelInfo:
    """Log the model at artifacts.MODEL with a tensor signature and an input example.

    Args:
        model: The trained model.
        example_images: A few normalized images (N, H, W, C) for the signature and example.

    Returns:
        The logged model's info.
    """
    example_images = example_images.astype(np.float32)
    signature = infer_signature(example_images, model.predict_on_batch(example_images))
    # Stated, not inferred: complete for serving, and MLflow's inference would load the
    # model again in a subprocess for several seconds.
    requirements = environment.pinned_requirements(environment.KERAS_MODEL_DISTRIBUTIONS)
    return mlflow.models.Model.log(
        artifact_path=None,
        name=artifacts.MODEL,
        flavor=_KerasFlavorWithFolder,
        flavor_name="mlflow.keras",
        model=model,
        signature=signature,
        input_example=example_images,
        pip_requirements=requirements,
        # The signature comes from a real prediction on this very example; MLflow's check
        # would reload the model and predict again, printing a Keras progress bar.
        validate_serving_input=False,
    )


def log_figure(figure: plt.Figure, artifact_file: str) -> None:
    """Log a matplotlib figure and free it."""
    mlflow.log_figure(figure, artifact_file)
    plt.close(figure)


# --------------------------------------------------------------------------- the stage


def fine_tune(
    model: keras.Model,
    strategy: tf.distribute.Strategy,
    train_data: tf.data.Dataset,
    validation_data: tf.data.Dataset,
    optimizer: str,
    learning_rate: float,
    num_classes: int,
    first_epoch: int,
    epochs: int,
    early_stopping_patience: int,
    clock: EpochClock,
) -> tuple[dict[str, list[float]], int]:
    """Train VGG16's top block too, at FINE_TUNE_RATE_FACTOR times the learning rate.

    Returns:
        As `fit_phase`.
    """
    unfrozen = models.unfreeze_top_block(model)
    print(f"fine-tuning VGG16's top block ({unfrozen} layers) for {epochs} epochs")
    steps = epochs * int(train_data.cardinality())
    with strategy.scope():
        compile_model(model, optimizer, learning_rate * FINE_TUNE_RATE_FACTOR, steps, num_classes)
    return fit_phase(
        model, train_data, validation_data, first_epoch, epochs, early_stopping_patience, (clock,)
    )


def evaluation_batch_size(image_shape: tuple[int, ...] | list[int], replicas: int = 1) -> int:
    """The batch size for validation and test: EVALUATION_BATCH_SIZE, less for large images.

    A multiple of `replicas`, as `make_dataset` needs.
    """
    image_bytes = 4 * math.prod(int(size) for size in image_shape)
    size = max(1, min(EVALUATION_BATCH_SIZE, EVALUATION_BATCH_BYTES // image_bytes))
    return max(replicas, size // replicas * replicas)


def log_test_results(
    model: keras.Model, folder: Path, meta: dict, class_names: list[str]
) -> dict[str, float]:
    """Evaluate on the test split; log test_* metrics, the confusion matrix and mistakes.

    Returns:
        The test metrics by Keras name (accuracy, loss, ...).
    """
    batch_size = evaluation_batch_size(meta["image_shape"])
    test_data = make_dataset(folder, meta, "test", len(class_names), batch_size)
    # One pass over the test set gives the metrics and the pictures (evaluate and then
    # predict would run the network over it twice).
    probabilities = model.predict(test_data, verbose=0)
    test_labels = shards.read_labels(folder, meta, "test")
    test_metrics = metrics_of_probabilities(test_labels, probabilities)
    mlflow.log_metrics({f"test_{name}": value for name, value in test_metrics.items()})
    matrix = confusion_matrix(test_labels, probabilities.argmax(axis=1), len(class_names))
    mlflow.log_dict(
        {"class_names": class_names, "matrix": matrix.tolist()}, "confusion_matrix.json"
    )
    log_figure(plot_confusion_matrix(matrix, class_names), "plots/confusion_matrix.png")
    mistakes = confident_mistakes(test_labels, probabilities)
    misclassified = plot_misclassified(
        shards.read_images(folder, meta, "test", mistakes),
        test_labels[mistakes],
        probabilities[mistakes],
        class_names,
    )
    log_figure(misclassified, "plots/misclassified.png")
    return test_metrics


def small_data_warning(labels: np.ndarray, class_names: list[str]) -> str | None:
    """One line of warning when some class has fewer than FEW_IMAGES_PER_CLASS images.

    Args:
        labels: The training labels.
        class_names: Class names by label.

    Returns:
        The warning, naming the class with the fewest images and what to do; None when
        every class has enough.
    """
    counts = np.bincount(labels, minlength=len(class_names))
    fewest = int(counts.argmin())
    if counts[fewest] >= FEW_IMAGES_PER_CLASS:
        return None
    return (
        f"warning: only {counts[fewest]} training images of class {class_names[fewest]!r} "
        f"(fewer than {FEW_IMAGES_PER_CLASS} per class), so test metrics will vary by several "
        "points between runs; add images, or try -P augment=true or VGG16 transfer learning "
        "(-P convolutions=0)"
    )


@dataclasses.dataclass
class Prepared:
    """What the train stage sets up before its run starts: data, devices and the network."""

    folder: Path
    meta: dict
    class_names: list[str]
    devices: Devices
    augmentations: tuple[str, ...]
    clock: EpochClock
    train_data: tf.data.Dataset
    validation_data: tf.data.Dataset
    model: keras.Model
    warning: str | None

    @property
    def steps_per_epoch(self) -> int:
        """Training batches per epoch."""
        return int(self.train_data.cardinality())


def prepare(folder: Path, meta: dict, parameters: TrainParameters, trained_on: Devices) -> Prepared:
    """Seed everything, build the input pipelines and compile the network on the devices."""
    class_names = list(meta["class_names"])
    num_classes = len(class_names)
    replicas = trained_on.replicas
    make_reproducible(parameters.seed, deterministic_ops=trained_on.kind == "cpu")
    augmentations = augmentation_names(meta.get("dataset", "")) if parameters.augment else ()
    augmentation = build_augmentation(augmentations, parameters.seed) if augmentations else None
    clock = EpochClock()
    train_data = make_dataset(
        folder,
        meta,
        "train",
        num_classes,
        parameters.batch_size,
        shuffle_seed=parameters.seed,
        augmentation=augmentation,
        clock=clock,
        replicas=replicas,
    )
    validation_data = make_dataset(
        folder,
        meta,
        "validation",
        num_classes,
        evaluation_batch_size(meta["image_shape"], replicas),
        replicas=replicas,
    )
    with trained_on.strategy.scope():
        model = models.build_network(
            tuple(int(size) for size in meta["image_shape"]),
            num_classes,
            meta["normalization"],
            parameters.convolutions,
            parameters.conv_filters,
            parameters.dense_units,
            parameters.dropout_rate,
            parameters.weights,
        )
        steps = parameters.epochs * int(train_data.cardinality())
        compile_model(model, parameters.optimizer, parameters.learning_rate, steps, num_classes)
    warning = small_data_warning(shards.read_labels(folder, meta, "train"), class_names)
    return Prepared(
        folder,
        meta,
        class_names,
        trained_on,
        augmentations,
        clock,
        train_data,
        validation_data,
        model,
        warning,
    )


def log_setup(prepared: Prepared, parameters: TrainParameters, summary: str) -> None:
    """Log the run's parameters (the schema's and what they became) and its setup tags."""
    model, meta = prepared.model, prepared.meta
    lineage.log_new_params(
        {
            **parameters.as_dict(),
            "network": model.name,
            "num_classes": len(prepared.class_names),
            "image_shape": "x".join(str(size) for size in meta["image_shape"]),
            "augmentations": ",".join(prepared.augmentations) or "none",
            "steps_per_epoch": prepared.steps_per_epoch,
            "total_parameters": model.count_params(),
            "trainable_parameters": sum(int(np.prod(w.shape)) for w in model.trainable_weights),
            **{f"{split}_examples": count for split, count in meta["counts"].items()},
        }
    )
    mlflow.set_tags(
        {
            **devices.device_record(prepared.devices),
            artifacts.DATASET_TAG: meta.get("dataset", ""),
            artifacts.TEST_SET_DIGEST_TAG: shards.content_digest(prepared.folder, meta, "test"),
        }
    )
    if len(prepared.class_names) == 2:
        mlflow.set_tag(artifacts.POSITIVE_CLASS_TAG, prepared.class_names[POSITIVE_CLASS])
    if prepared.warning:
        mlflow.set_tag(artifacts.WARNING_TAG, prepared.warning)
    mlflow.log_text(summary, "model_summary.txt")


def fit(
    prepared: Prepared, parameters: TrainParameters, backup_dir: Path, resumed: dict
) -> tuple[dict[str, list[float]], int]:
    """Train (and for VGG16 fine-tune); log each epoch, best_epoch and the learning curves.

    Args:
        prepared: The data and the compiled network.
        parameters: The hyperparameters.
        backup_dir: Where each epoch's checkpoint is saved before it is logged; holds a
            killed run's checkpoint to resume from (see `resume`).
        resumed: The resumed epochs' history from the killed run; empty when starting afresh.
            Early stopping starts counting afresh at the resumed epoch.

    Returns:
        (metric name to one value per epoch run, the epoch whose weights the model holds).
    """
    backup = (resume.ArtifactBackup(str(backup_dir)),) if resume.is_checkpointed(parameters) else ()
    phase, best_epoch = fit_phase(
        prepared.model,
        prepared.train_data,
        prepared.validation_data,
        0,
        parameters.epochs,
        parameters.early_stopping_patience,
        (prepared.clock, *backup),
    )
    history = {name: resumed.get(name, []) + values for name, values in phase.items()}
    fine_tune_start = None
    if parameters.fine_tune_epochs:
        fine_tune_start = len(history["loss"])
        tuned, best_epoch = fine_tune(
            prepared.model,
            prepared.devices.strategy,
            prepared.train_data,
            prepared.validation_data,
            parameters.optimizer,
            parameters.learning_rate,
            len(prepared.class_names),
            fine_tune_start,
            parameters.fine_tune_epochs,
            parameters.early_stopping_patience,
            prepared.clock,
        )
        history = {name: history[name] + tuned[name] for name in history}
    mlflow.log_metric("best_epoch", best_epoch)
    mlflow.set_tag(artifacts.TRAINING_STEPS_TAG, len(history["loss"]) * prepared.steps_per_epoch)
    log_figure(plot_learning_curves(history, fine_tune_start), "plots/learning_curves.png")
    return history, best_epoch


def log_results(prepared: Prepared) -> dict[str, float]:
    """Evaluate on the test split and log the metrics, plots and the Keras model.

    Returns:
        The test metrics by Keras name.
    """
    folder, meta = prepared.folder, prepared.meta
    test_metrics = log_test_results(prepared.model, folder, meta, prepared.class_names)
    examples = shards.read_images(folder, meta, "test", np.arange(2))
    log_keras_model(prepared.model, normalize(examples, meta["normalization"]))
    return test_metrics


def run_name(meta: dict, model: keras.Model, epochs: int) -> str:
    """The run's name: 'train fashion_mnist: cnn_3x48, 10 epochs'."""
    return f"train {meta.get('dataset', '')}: {model.name}, {epochs} epoch" + "s" * (epochs > 1)


def run_train(data: str, parameters: TrainParameters | None = None) -> str:
    """The train stage: train on `preprocessed/`, log metrics, plots and the model.

    Args:
        data: URI of a preprocess run's `preprocessed/` artifact (or a local folder).
        parameters: The hyperparameters (see `TrainParameters`); None takes every default.

    Returns:
        The model URI, `runs:/<run_id>/model`.

    Raises:
        ValueError: For a URI without `preprocessed/`, impossible parameters or device=gpu
            without a GPU, before training starts.
    """
    parameters = parameters or TrainParameters()
    parameters.check()
    trained_on = devices.configure_devices(parameters.device, parameters.mixed_precision)
    devices.check_global_batch(parameters.batch_size, trained_on.replicas)
    # The preprocessed shards stay on disk (downloaded if remote) while training streams them.
    with artifacts.open_preprocessed(data, "train") as (preprocessed_dir, meta):
        prepared = prepare(preprocessed_dir, meta, parameters, trained_on)
        model = prepared.model
        summary = model_summary(model)
        if console.VERBOSE:
            print(summary)
        else:  # the table is the run's model_summary.txt
            print(f"network {model.name}: {model.count_params():,} parameters")
        started = time.perf_counter()
        name = run_name(meta, model, parameters.epochs)
        with (
            lineage.start_stage_run("train", input_uri=data, name=name) as run,
            tempfile.TemporaryDirectory() as tmp,
        ):
            log_setup(prepared, parameters, summary)
            # Not `tmp` itself: BackupAndRestore removes its folder when fit ends.
            backup_dir = Path(tmp, artifacts.CHECKPOINT)
            resumed = resume.resume_if_killed(data, parameters, backup_dir)
            history, _ = fit(prepared, parameters, backup_dir, resumed)
            test_metrics = log_results(prepared)
            run_id = run.info.run_id
    model_uri = artifacts.artifact_uri(run_id, artifacts.MODEL)
    seconds = time.perf_counter() - started
    shown = ", ".join(f"test {name} {value:.4f}" for name, value in test_metrics.items())
    epochs_run = len(history["loss"])
    epochs_shown = f"{epochs_run} epoch" + "s" * (epochs_run != 1)
    print(
        f"\n{shown} ({epochs_shown} of {prepared.steps_per_epoch} steps, batch "
        f"{parameters.batch_size}, in {seconds:.0f} s, on {prepared.devices.description})"
    )
    if prepared.warning:
        print(prepared.warning)
    print(f"train run ID: {run_id}")
    print(f"model URI: {model_uri}")
    lineage.print_next("package", model=model_uri)
    return model_uri
