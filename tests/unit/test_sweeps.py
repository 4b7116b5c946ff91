"""Search-space parsing, sampler choice, study names, resuming, and the trial objective."""

import importlib.util
import inspect

import mlflow
import optuna
import pytest

from mlpipe_vision import sweeps, training
from tests.conftest import REPO_DIR

optuna.logging.set_verbosity(optuna.logging.WARNING)


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), REPO_DIR / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lists_ranges_and_fixed_values_are_parsed_with_their_types():
    space = sweeps.parse_search_space(
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
    space = sweeps.parse_search_space({"conv_filters": "16,16,"})
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
        assert sweeps.parse_search_space(raw).fixed == {"optimizer": "adam:sgd"}
        return
    with pytest.raises(ValueError, match=message):
        sweeps.parse_search_space(raw)


def test_the_grid_is_every_combination_first_dimension_slowest():
    space = sweeps.parse_search_space({"conv_filters": "8,16", "dropout_rate": "0.2,0.4,0.6"})
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
    assert sweeps.resolve_sampler(sampler, sweeps.parse_search_space(raw)) == expected


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
        sweeps.resolve_sampler(sampler, sweeps.parse_search_space(raw))


@pytest.mark.parametrize(
    ("direction", "metric", "expected"),
    [
        ("auto", "val_accuracy", "maximize"),
        ("auto", "val_loss", "minimize"),
        ("minimize", "val_accuracy", "minimize"),
    ],
)
def test_direction(direction, metric, expected):
    assert sweeps.resolve_direction(direction, metric) == expected


def test_study_name_depends_on_the_definition_only():
    data = "runs:/a/preprocessed"
    name = sweeps.default_study_name(data, {"conv_filters": "8,16"}, "grid", "m", "maximize")
    same = sweeps.default_study_name(
        data, {"epochs": "", "conv_filters": " 8,16"}, "grid", "m", "maximize"
    )
    others = [
        sweeps.default_study_name(data, {"conv_filters": "8,32"}, "grid", "m", "maximize"),
        sweeps.default_study_name(data, {"conv_filters": "8,16"}, "tpe", "m", "maximize"),
        sweeps.default_study_name(data, {"conv_filters": "8,16"}, "grid", "m", "minimize"),
    ]
    assert name == same
    assert name not in others
    assert name.startswith("sweep-")
    assert sweeps.default_study_storage(name).endswith(f"optuna-{name}.db")


def test_train_parameters_agree_across_run_train_and_the_scripts():
    """train.py's defaults are run_train's; batch_train.py sweeps exactly those parameters."""
    types = sweeps.train_parameter_types()
    assert list(types) == list(load_script("batch_train.py").TRAIN_PARAMETERS)
    parser = load_script("train.py").build_parser()
    actions = {action.dest: action for action in parser._actions if action.dest != "help"}
    assert set(actions) == {"data", *types}
    for name, parameter in inspect.signature(training.run_train).parameters.items():
        if name != "data":
            assert actions[name].default == parameter.default, name


def grid_study(tmp_path, name="grid"):
    return optuna.create_study(
        study_name=name, storage=f"sqlite:///{tmp_path / 'study.db'}", load_if_exists=True
    )


def test_a_grid_queues_only_the_points_not_finished(tmp_path, use_tracking):
    space = sweeps.parse_search_space({"conv_filters": "8,16,32,64"})
    study = grid_study(tmp_path)
    assert sweeps.plan_trials(study, space, "grid", 0) == 4
    finished = study.ask(space.distributions())
    study.tell(finished, 0.9)
    failed = study.ask(space.distributions())
    failed.set_user_attr(sweeps.FAILURE_ATTRIBUTE, "exit code 1")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    interrupted = study.ask(space.distributions())  # the sweep is killed here

    # A new session: the interrupted point runs again, the finished and failed ones do not,
    # and the point still queued is not queued twice.
    resumed = grid_study(tmp_path)
    assert sweeps.recover_interrupted(resumed, use_tracking["client"]) == 1
    assert sweeps.plan_trials(resumed, space, "grid", 0) == 2
    left = [resumed.ask(space.distributions()).params["conv_filters"] for _ in range(2)]
    assert sorted(left) == sorted([interrupted.params["conv_filters"], 64])
    assert {finished.params["conv_filters"], failed.params["conv_filters"]} == {8, 16}


def test_a_grid_with_n_trials_runs_the_first_points_only(tmp_path):
    space = sweeps.parse_search_space({"conv_filters": "8,16,32"})
    assert sweeps.plan_trials(grid_study(tmp_path), space, "grid", 2) == 2


def test_interrupted_trials_are_failed_and_run_again(tmp_path, use_tracking):
    space = sweeps.parse_search_space({"learning_rate": "1e-4:1e-2:log"})
    study = grid_study(tmp_path, "tpe")
    done = study.ask(space.distributions())
    study.tell(done, 0.8)
    interrupted = study.ask(space.distributions())
    with mlflow.start_run() as run:
        pass
    use_tracking["client"].set_terminated(run.info.run_id, "RUNNING")
    interrupted.set_user_attr(sweeps.RUN_ID_ATTRIBUTE, run.info.run_id)

    resumed = grid_study(tmp_path, "tpe")
    assert sweeps.recover_interrupted(resumed, use_tracking["client"]) == 1
    assert use_tracking["client"].get_run(run.info.run_id).info.status == "KILLED"
    assert sweeps.plan_trials(resumed, space, "tpe", 3) == 2
    again = resumed.ask(space.distributions())
    assert again.params == interrupted.params
    states = [trial.state for trial in resumed.get_trials()]
    assert states[:2] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert not sweeps.counts_as_done(resumed.get_trials()[1])


def test_the_objective_is_read_at_the_best_epoch(use_tracking):
    with mlflow.start_run() as run:
        for epoch, value in enumerate([0.80, 0.90, 0.85]):
            mlflow.log_metric("val_accuracy", value, step=epoch)
        mlflow.log_metric("best_epoch", 1)
        mlflow.log_metric("test_accuracy", 0.88)
    client = use_tracking["client"]
    assert sweeps.trial_objective(client, run.info.run_id, "val_accuracy") == 0.90
    assert sweeps.trial_objective(client, run.info.run_id, "test_accuracy") == 0.88
    with pytest.raises(ValueError, match="logged no metric 'val_auc'"):
        sweeps.trial_objective(client, run.info.run_id, "val_auc")


@pytest.mark.parametrize(
    ("line", "echoed"),
    [
        ("I0000 00:00:1795607711.000403    4941 cudart_stub.cc:31] Could not find cuda", False),
        ("W1125 12:00:01.123456    4941 some_op.cc:12] a warning", False),
        ("WARNING: All log messages before absl::InitializeLog() is called are written", False),
        ("│ block1_conv (Conv2D)         │ (None, 28, 28, 32)     │           288 │", False),
        ("E1125 12:00:01.123456    4941 some_op.cc:12] an error", True),
        ("Epoch 1/3", True),
        (" Total params: 391,082 (1.49 MB)", True),
        ("error: conv_filters must be at least 1, got 0", True),
    ],
)
def test_only_useful_trial_lines_are_echoed(line, echoed):
    assert sweeps.is_echoed(line) is echoed
