"""The train stage's hyperparameters: each one's type, default, help and check in one place.

train.py's command line, batch_train.py's swept parameters and their types, the checks both
run before any data is read, the parameters a train run logs and `training.run_train` all
come from `TrainParameters`. MLproject lists the same parameters for MLflow, which reads
only that file; tests/unit/test_entry_points.py keeps it equal to this schema. Adding a
hyperparameter means a field here, its line in the `train` and `train_batch` entry points
of MLproject and of docker/project/MLproject (kept word for word equal), and the code that
uses it.

No TensorFlow here: the sweep and the command lines import this before deciding to train.
"""

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
MIXED_PRECISION_CHOICES = ("auto", "true", "false")
DEVICE_CHOICES = ("auto", "cpu", "gpu")
VGG16_WEIGHTS = ("imagenet", "none")

Check = Callable[[str, object], str | None]


def at_least(smallest: int) -> Check:
    """A check that a count is at least `smallest`."""
    return lambda name, value: (
        f"{name} must be at least {smallest}, got {value}" if value < smallest else None
    )


def fraction_below_one(name: str, value: float) -> str | None:
    """A check for a rate in [0, 1)."""
    return None if 0.0 <= value < 1.0 else f"{name} must be in [0, 1), got {value}"


def positive_number(name: str, value: float) -> str | None:
    """A check for a finite number above 0."""
    if math.isfinite(value) and value > 0:
        return None
    return f"{name} must be a positive number, got {value}"


def unknown_optimizer(name: str, value: str) -> str | None:
    """A check that the optimizer is one of OPTIMIZERS."""
    if value in OPTIMIZERS:
        return None
    return f"unknown optimizer {value!r}; expected one of {', '.join(OPTIMIZERS)}"


def mixed_precision_choice(name: str, value: str) -> str | None:
    """A check that mixed_precision is one of MIXED_PRECISION_CHOICES."""
    if value in MIXED_PRECISION_CHOICES:
        return None
    return f"{name} must be one of {', '.join(MIXED_PRECISION_CHOICES)}, got {value!r}"


def device_choice(name: str, value: str) -> str | None:
    """A check that device is one of DEVICE_CHOICES."""
    if value in DEVICE_CHOICES:
        return None
    return f"{name} must be one of {', '.join(DEVICE_CHOICES)}, got {value!r}"


def parameter(default: object, help: str, check: Check | None = None) -> dataclasses.Field:
    """A field of TrainParameters: its default, its --help text and its check."""
    return dataclasses.field(default=default, metadata={"help": help, "check": check})


@dataclasses.dataclass(frozen=True)
class TrainParameters:
    """The train stage's hyperparameters; `check()` refuses impossible ones."""

    convolutions: int = parameter(
        3,
        "convolution blocks, each halving the image size; 0 = VGG16 transfer learning",
        at_least(0),
    )
    conv_filters: int = parameter(48, "filters of the first block (doubling)", at_least(1))
    dense_units: int = parameter(256, "units of the dense layer", at_least(1))
    dropout_rate: float = parameter(0.4, "dropout in [0, 1)", fraction_below_one)
    epochs: int = parameter(10, "epochs (VGG16: with the base frozen)", at_least(1))
    batch_size: int = parameter(
        64, "training batch size; the global batch, split among replicas", at_least(1)
    )
    learning_rate: float = parameter(
        0.001,
        "initial learning rate of the optimizer; it decays along a cosine to 0 by the last epoch",
        positive_number,
    )
    optimizer: str = parameter(
        "adam", "adam, adamw, sgd (Nesterov momentum) or rmsprop", unknown_optimizer
    )
    augment: bool = parameter(False, "random flips and shifts that suit the dataset (true/false)")
    early_stopping_patience: int = parameter(
        3,
        "stop after this many epochs without a better val_loss, keep the best; 0 = off",
        at_least(0),
    )
    seed: int = parameter(
        42,
        "seed of weights, shuffling and augmentation; same seed and data give the same "
        "metrics on the CPU",
    )
    weights: str = parameter(
        "imagenet", "VGG16 only: imagenet, none, or the path of a weights file"
    )
    fine_tune_epochs: int = parameter(
        0,
        "VGG16 only: epochs that also train its top block, at a tenth of the rate",
        at_least(0),
    )
    mixed_precision: str = parameter(
        "auto",
        "float16 compute with float32 weights: auto (where there is a GPU), true or false; "
        "the packaged model computes in float32 either way",
        mixed_precision_choice,
    )
    device: str = parameter(
        "auto",
        "auto (every GPU TensorFlow sees, else the CPU), cpu (GPUs hidden) or gpu (fails "
        "at once when TensorFlow sees none)",
        device_choice,
    )

    def check(self) -> None:
        """Refuse impossible parameters before any data is read.

        Checks that need the image shape happen when the network is built.

        Raises:
            ValueError: Naming the first bad value and what would be right.
        """
        for field in dataclasses.fields(self):
            check_value(field.name, getattr(self, field.name))
        if self.fine_tune_epochs and self.convolutions:
            raise ValueError(
                f"fine_tune_epochs={self.fine_tune_epochs} fine-tunes VGG16's top block, which "
                f"only exists with convolutions=0 (got convolutions={self.convolutions}); set "
                "fine_tune_epochs=0 or convolutions=0"
            )
        if self.convolutions == 0:
            vgg16_weights(self.weights)

    def as_dict(self) -> dict[str, object]:
        """Name to value, in the schema's order: what a train run logs as parameters."""
        return dataclasses.asdict(self)


def fields() -> tuple[dataclasses.Field, ...]:
    """The schema's fields, in order: name, type, default and metadata (help, check)."""
    return dataclasses.fields(TrainParameters)


def types() -> dict[str, type]:
    """Each train parameter's type by name, in the schema's order."""
    return {field.name: field.type for field in fields()}


def check_value(name: str, value: object) -> None:
    """Refuse one impossible value of one parameter (the checks that need no other one).

    Raises:
        ValueError: Naming the value and what would be right.
    """
    check = next(field for field in fields() if field.name == name).metadata["check"]
    problem = check(name, value) if check else None
    if problem:
        raise ValueError(problem)


def vgg16_weights(weights: str) -> str | None:
    """Turn the `weights` parameter into what `keras.applications.VGG16` expects.

    Args:
        weights: "imagenet", "none", or the path of a weights file (.h5 or .weights.h5).

    Returns:
        "imagenet", None, or the path.

    Raises:
        ValueError: If it is none of these or the file does not exist.
    """
    choice = weights.strip()
    if choice.lower() in VGG16_WEIGHTS:
        return None if choice.lower() == "none" else "imagenet"
    if not Path(choice).is_file():
        raise ValueError(
            f"weights must be imagenet, none or the path of a weights file; {weights!r} is "
            "not an existing file"
        )
    return choice
