"""The search-space language: parsing, sampler and direction choice, study names."""

import importlib.util

import optuna
import pytest

from mlpipe_vision import search_space, sweep_study, train_parameters
from tests.conftest import REPO_DIR


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), REPO_DIR / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lists_ranges_and_fixed_values_are_parsed_with_their_types():
    space = search_space.parse_search_space(
        {
            "conv_filters": "8,16, 32",
            "learning_rate": "1e-4:1e-2:log",
            "dense_units": "32:256",
            "dropout_rate": "0.25",
            "augment": "true,false",
            "optimizer": "adam",
            "epochs": "",
        }
    )
    assert space.fixed == {"dropout_rate": 0.25, "optimizer": "adam"}
    dimensions = {dimension.name: dimension for dimension in space.dimensions}
    assert dimensions["conv_filters"].choices == (8, 16, 32)
    assert dimensions["augment"].choices == (True, False)
    rate = dimensions["learning_rate"]
    assert (rate.low, rate.high, rate.log, rate.integer) == (1e-4, 1e-2, True, False)
    units = dimensions["dense_units"]
    assert (units.low, units.high, units.log, units.integer) == (32, 256, False, True)
    assert isinstance(units.distribution(), optuna.distributions.IntDistribution)
    assert isinstance(rate.distribution(), optuna.distributions.FloatDistribution)
    assert list(dimensions) == ["conv_filters", "learning_rate", "dense_units", "augment"]


def test_a_list_of_one_value_is_a_fixed_value():
    space = search_space.parse_search_space({"conv_filters": "16,16,"})
    assert space.fixed == {"conv_filters": 16}
    assert space.dimensions == ()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"filters": "8,16"}, "'filters' is not a train parameter; expected one of convolutions"),
        ({"conv_filters": "8,sixteen"}, "conv_filters: 'sixteen' is not a valid int"),
        ({"conv_filters": "8.5"}, "conv_filters: '8.5' is not a valid int"),
        ({"augment": "maybe"}, "augment: expected true or false, got 'maybe'"),
        ({"optimizer": "adam:sgd"}, None),
        ({"learning_rate": "0.1:0.01"}, "the low end must be below the high end"),
        ({"learning_rate": "0:0.1:log"}, "a log range needs a positive low end"),
        ({"learning_rate": "0.1:1:linear"}, r"expected low:high or low:high:log"),
        ({"learning_rate": "0.1:0.5:1:log"}, r"expected low:high or low:high:log"),
    ],
)
def test_bad_search_spaces_are_refused(raw, message):
    if message is None:  # a colon in a text parameter is part of the value
        assert search_space.parse_search_space(raw).fixed == {"optimizer": "adam:sgd"}
        return
    with pytest.raises(ValueError, match=message):
        search_space.parse_search_space(raw)


def test_the_grid_is_every_combination_first_dimension_slowest():
    space = search_space.parse_search_space({"conv_filters": "8,16", "dropout_rate": "0.2,0.4,0.6"})
    assert space.is_grid
    grid = space.grid()
    assert len(grid) == 6
    assert grid[:3] == [
        {"conv_filters": 8, "dropout_rate": 0.2},
        {"conv_filters": 8, "dropout_rate": 0.4},
        {"conv_filters": 8, "dropout_rate": 0.6},
    ]


@pytest.mark.parametrize(
    ("raw", "sampler", "expected"),
    [
        ({"conv_filters": "8,16"}, "auto", "grid"),
        ({"conv_filters": "8,16", "learning_rate": "1e-4:1e-2"}, "auto", "tpe"),
        ({"conv_filters": "8,16"}, "tpe", "tpe"),
    ],
)
def test_the_sampler_follows_the_space(raw, sampler, expected):
    assert search_space.resolve_sampler(sampler, search_space.parse_search_space(raw)) == expected


@pytest.mark.parametrize(
    ("raw", "sampler", "message"),
    [
        ({"conv_filters": "8:64"}, "grid", "a grid needs lists of values; conv_filters are ranges"),
        ({"conv_filters": "8"}, "auto", "nothing to sweep"),
        ({"conv_filters": "8,16"}, "random", "unknown sampler 'random'"),
    ],
)
def test_impossible_sampler_choices_are_refused(raw, sampler, message):
    with pytest.raises(ValueError, match=message):
        search_space.resolve_sampler(sampler, search_space.parse_search_space(raw))


@pytest.mark.parametrize(
    ("direction", "metric", "expected"),
    [
        ("auto", "val_accuracy", "maximize"),
        ("auto", "val_loss", "minimize"),
        ("minimize", "val_accuracy", "minimize"),
    ],
)
def test_direction(direction, metric, expected):
    assert search_space.resolve_direction(direction, metric) == expected


def test_study_name_depends_on_the_definition_only():
    data = "runs:/a/preprocessed"
    name = search_space.default_study_name(data, {"conv_filters": "8,16"}, "grid", "m", "maximize")
    same = search_space.default_study_name(
        data, {"epochs": "", "conv_filters": " 8,16"}, "grid", "m", "maximize"
    )
    others = [
        search_space.default_study_name(data, {"conv_filters": "8,32"}, "grid", "m", "maximize"),
        search_space.default_study_name(data, {"conv_filters": "8,16"}, "tpe", "m", "maximize"),
        search_space.default_study_name(data, {"conv_filters": "8,16"}, "grid", "m", "minimize"),
    ]
    assert name == same
    assert name not in others
    assert name.startswith("sweep-")
    assert sweep_study.default_study_storage(name).endswith(f"optuna-{name}.db")


def test_train_parameters_agree_across_the_schema_and_the_scripts():
    """train.py's defaults are the schema's; batch_train.py sweeps exactly those parameters."""
    types = search_space.train_parameter_types()
    batch_parser = load_script("batch_train.py").build_parser()
    swept = [action.dest for action in batch_parser._actions if action.dest in types]
    assert swept == list(types)
    parser = load_script("train.py").build_parser()
    actions = {action.dest: action for action in parser._actions if action.dest != "help"}
    assert set(actions) == {"data", *types}
    for field in train_parameters.fields():
        assert actions[field.name].default == field.default, field.name


def test_a_fixed_value_is_checked_by_the_schema_a_listed_one_by_its_trial():
    space = search_space.parse_search_space({"dropout_rate": "1.5", "conv_filters": "8,16"})
    with pytest.raises(ValueError, match=r"dropout_rate must be in \[0, 1\), got 1.5"):
        search_space.check_fixed_values(space)
    search_space.check_fixed_values(search_space.parse_search_space({"conv_filters": "0,16"}))
