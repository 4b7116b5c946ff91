"""The sweep's search-space language: which train parameters a sweep fixes and which it varies.

A search space maps train parameters to text: `8,16,32` is a list of values (a grid
dimension, or a categorical one for TPE), `1e-4:1e-2:log` and `8:64` are ranges for TPE
(integer when the parameter is), anything else is a fixed value, and "" is train's default.
This module parses that text, picks the sampler and direction a sweep's settings mean, and
names the study after the sweep's definition. It runs nothing.
"""

import argparse
import hashlib
import itertools
import json
from dataclasses import dataclass

import optuna

from mlpipe_vision import console, train_parameters
from mlpipe_vision.cli import str_to_bool

SAMPLERS = ("auto", "grid", "tpe")
DIRECTIONS = ("auto", "maximize", "minimize")


@dataclass(frozen=True)
class Dimension:
    """One swept parameter: a list of values, or a numeric range for TPE."""

    name: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    @property
    def is_range(self) -> bool:
        """True for a low:high range, False for a list of values."""
        return self.choices is None

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """The Optuna distribution to sample this dimension from."""
        if not self.is_range:
            return optuna.distributions.CategoricalDistribution(self.choices)
        if self.integer:
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)

    def suggest(self, trial: optuna.Trial) -> object:
        """This dimension's value for a trial: sampled, or the queued point's value.

        The same distribution as `distribution()`, through Optuna's public suggest API.
        """
        if not self.is_range:
            return trial.suggest_categorical(self.name, self.choices)
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


@dataclass(frozen=True)
class SearchSpace:
    """Fixed train parameters and swept dimensions."""

    fixed: dict
    dimensions: tuple[Dimension, ...]

    @property
    def is_grid(self) -> bool:
        """True when every dimension is a list of values."""
        return all(not dimension.is_range for dimension in self.dimensions)

    def grid(self) -> list[dict]:
        """Every combination of the listed values, first dimension slowest."""
        if not self.is_grid:
            ranges = [dimension.name for dimension in self.dimensions if dimension.is_range]
            raise ValueError(f"a grid needs lists of values; {', '.join(ranges)} are ranges")
        names = [dimension.name for dimension in self.dimensions]
        choices = [dimension.choices for dimension in self.dimensions]
        return [dict(zip(names, values, strict=True)) for values in itertools.product(*choices)]

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Optuna distributions by parameter name."""
        return {dimension.name: dimension.distribution() for dimension in self.dimensions}

    def suggest(self, trial: optuna.Trial) -> dict[str, object]:
        """A trial's value of every dimension, by parameter name, in the space's order."""
        return {dimension.name: dimension.suggest(trial) for dimension in self.dimensions}


def train_parameter_types() -> dict[str, type]:
    """The train stage's parameters and their types, from its schema (TrainParameters)."""
    return train_parameters.types()


def convert_value(name: str, text: str, kind: type) -> object:
    """Convert one value of parameter `name` from text to `kind`, naming it on failure.

    Raises:
        ValueError: If the text is not a valid `kind`.
    """
    text = text.strip()
    try:
        if kind is bool:
            return str_to_bool(text)
        return kind(text)
    except argparse.ArgumentTypeError as error:
        raise ValueError(f"{name}: {error}") from None
    except ValueError as error:
        raise ValueError(
            f"{name}: {text!r} is not a valid {kind.__name__} ({console.first_line(error)})"
        ) from None


def parse_range(name: str, text: str, kind: type) -> Dimension:
    """Parse `low:high` or `low:high:log` for a numeric parameter.

    Raises:
        ValueError: If the parameter is not numeric, the bounds are bad, or the scale is
            not "log".
    """
    parts = [part.strip() for part in text.split(":")]
    if kind not in (int, float):
        raise ValueError(
            f"{name}={text!r}: ranges low:high are for numeric parameters; give "
            f"{name} a comma-separated list of values instead"
        )
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise ValueError(f"{name}={text!r}: expected low:high or low:high:log")
    low, high = convert_value(name, parts[0], kind), convert_value(name, parts[1], kind)
    log = len(parts) == 3
    if not low < high:
        raise ValueError(f"{name}={text!r}: the low end must be below the high end")
    if log and low <= 0:
        raise ValueError(f"{name}={text!r}: a log range needs a positive low end")
    return Dimension(name, low=low, high=high, log=log, integer=kind is int)


def parse_search_space(raw: dict[str, str]) -> SearchSpace:
    """Parse train parameters given as text into fixed values and swept dimensions.

    Args:
        raw: Parameter name to text. Empty text means "train's default" and is dropped.
            `a,b,c` lists values, `low:high[:log]` is a numeric range, anything else is
            one fixed value.

    Returns:
        The search space; dimensions keep the order of `raw`.

    Raises:
        ValueError: For an unknown parameter or a value that does not fit its type.
    """
    types = train_parameter_types()
    fixed, dimensions = {}, []
    for name, value in raw.items():
        text = str(value).strip()
        if not text:
            continue
        if name not in types:
            raise ValueError(
                f"{name!r} is not a train parameter; expected one of {', '.join(types)}"
            )
        kind = types[name]
        if "," in text:
            values = [convert_value(name, part, kind) for part in text.split(",") if part.strip()]
            unique = tuple(dict.fromkeys(values))
            if len(unique) > 1:
                dimensions.append(Dimension(name, choices=unique))
            elif unique:
                fixed[name] = unique[0]
        elif ":" in text and kind in (int, float):
            dimensions.append(parse_range(name, text, kind))
        else:
            fixed[name] = convert_value(name, text, kind)
    return SearchSpace(fixed=fixed, dimensions=tuple(dimensions))


def check_fixed_values(space: SearchSpace) -> None:
    """Refuse an impossible fixed value with the train stage's own check, before any trial.

    A fixed value would fail every trial; a listed one fails only its own trial.

    Raises:
        ValueError: Naming the value and what would be right.
    """
    for name, value in space.fixed.items():
        train_parameters.check_value(name, value)


def resolve_sampler(sampler: str, space: SearchSpace) -> str:
    """Pick "grid" or "tpe": "auto" means grid when every dimension is a list.

    Raises:
        ValueError: For an unknown sampler, nothing to sweep, or a grid over ranges.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if not space.dimensions:
        raise ValueError(
            "nothing to sweep: give at least one train parameter as a list (conv_filters=8,16) "
            "or a range (learning_rate=1e-4:1e-2:log)"
        )
    if sampler == "auto":
        return "grid" if space.is_grid else "tpe"
    if sampler == "grid":
        space.grid()  # raises for ranges
    return sampler


def resolve_direction(direction: str, metric: str) -> str:
    """Pick the optimization direction: "auto" minimizes losses and maximizes the rest."""
    if direction not in DIRECTIONS:
        raise ValueError(
            f"unknown direction {direction!r}; expected one of {', '.join(DIRECTIONS)}"
        )
    if direction == "auto":
        return "minimize" if metric.endswith("loss") else "maximize"
    return direction


def default_study_name(
    data: str, raw: dict[str, str], sampler: str, metric: str, direction: str
) -> str:
    """A study name that is the same whenever the sweep's definition is the same.

    It depends on the data, the search space and fixed values, the sampler, the metric and
    the direction, not on n_trials or workers, so repeating a command (with a larger
    n_trials, say) continues the same study.
    """
    definition = {
        "data": data,
        "space": {name: str(value).strip() for name, value in sorted(raw.items()) if value},
        "sampler": sampler,
        "metric": metric,
        "direction": direction,
    }
    digest = hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()
    return f"sweep-{digest[:12]}"
