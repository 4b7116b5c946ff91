"""Search-space parsing, sampler choice, study names, resuming, and the trial objective."""

import importlib.util
import socket
import subprocess
import time

import mlflow
import optuna
import pytest

from mlpipe_vision import sweeps, train_parameters
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


def test_train_parameters_agree_across_the_schema_and_the_scripts():
    """train.py's defaults are the schema's; batch_train.py sweeps exactly those parameters."""
    types = sweeps.train_parameter_types()
    batch_parser = load_script("batch_train.py").build_parser()
    swept = [action.dest for action in batch_parser._actions if action.dest in types]
    assert swept == list(types)
    parser = load_script("train.py").build_parser()
    actions = {action.dest: action for action in parser._actions if action.dest != "help"}
    assert set(actions) == {"data", *types}
    for field in train_parameters.fields():
        assert actions[field.name].default == field.default, field.name


def open_test_study(tmp_path, name="grid"):
    return sweeps.open_study(name, f"sqlite:///{tmp_path / 'study.db'}", "maximize")


def as_dead_local_worker(trial) -> None:
    process = subprocess.Popen(["true"])
    process.wait()
    trial.set_user_attr(sweeps.WORKER_ATTRIBUTE, f"{socket.gethostname()}:{process.pid}")


def test_a_grid_is_queued_once_and_a_dead_workers_point_runs_again(tmp_path, use_tracking):
    space = sweeps.parse_search_space({"conv_filters": "8,16,32,64"})
    study, created = open_test_study(tmp_path)
    assert created
    sweeps.queue_grid(study, space, 0)
    finished = sweeps.next_trial(study, space, "grid", 0)
    study.tell(finished, 0.9)
    failed = sweeps.next_trial(study, space, "grid", 0)
    failed.set_user_attr(sweeps.FAILURE_ATTRIBUTE, "exit code 1")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    interrupted = sweeps.next_trial(study, space, "grid", 0)
    as_dead_local_worker(interrupted)
    alive = sweeps.next_trial(study, space, "grid", 0)  # this process: still running

    # A second worker joins: it queues nothing new, requeues the dead worker's point only.
    joined, created = open_test_study(tmp_path)
    assert not created
    sweeps.queue_grid(joined, space, 0)
    assert sweeps.recover_dead_trials(joined) == 1
    again = sweeps.next_trial(joined, space, "grid", 0)
    assert again.params == interrupted.params
    assert sweeps.next_trial(joined, space, "grid", 0) is None
    study.tell(alive, 0.5)
    counts = {}
    for trial in joined.get_trials():
        if sweeps.counts_as_done(trial) or trial.state.name == "RUNNING":
            key = trial.params["conv_filters"]
            counts[key] = counts.get(key, 0) + 1
    assert counts == {8: 1, 16: 1, 32: 1, 64: 1}


def test_a_grid_with_n_trials_queues_the_first_points_only(tmp_path):
    space = sweeps.parse_search_space({"conv_filters": "8,16,32"})
    study, _ = open_test_study(tmp_path)
    sweeps.queue_grid(study, space, 2)
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 2


def test_the_tpe_budget_counts_every_workers_trials(tmp_path):
    space = sweeps.parse_search_space({"learning_rate": "1e-4:1e-2:log"})
    first, _ = open_test_study(tmp_path, "tpe")
    second, _ = open_test_study(tmp_path, "tpe")
    mine = sweeps.next_trial(first, space, "tpe", 2)
    theirs = sweeps.next_trial(second, space, "tpe", 2)
    assert mine is not None and theirs is not None
    assert sweeps.next_trial(first, space, "tpe", 2) is None
    assert sweeps.next_trial(second, space, "tpe", 2) is None
    first.tell(mine, 0.8)
    assert sweeps.next_trial(second, space, "tpe", 3) is not None


def test_a_trial_without_heartbeat_is_requeued_and_its_run_killed(
    tmp_path, use_tracking, monkeypatch
):
    monkeypatch.setattr(sweeps, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(sweeps, "GRACE_SECONDS", 1)
    space = sweeps.parse_search_space({"learning_rate": "1e-4:1e-2:log"})
    study, _ = open_test_study(tmp_path, "tpe")
    elsewhere = sweeps.next_trial(study, space, "tpe", 3)
    elsewhere.set_user_attr(sweeps.WORKER_ATTRIBUTE, "another-machine:1234")
    with mlflow.start_run() as run:
        pass
    use_tracking["client"].set_terminated(run.info.run_id, "RUNNING")
    elsewhere.set_user_attr(sweeps.RUN_ID_ATTRIBUTE, run.info.run_id)
    with sweeps.Heartbeat(study) as heartbeat:
        heartbeat.start(elsewhere)
        heartbeat.stop(elsewhere)  # the machine dies: no more heartbeats
    assert sweeps.recover_dead_trials(study) == 0  # within the grace period
    time.sleep(2.5)
    assert sweeps.recover_dead_trials(study) == 1
    assert use_tracking["client"].get_run(run.info.run_id).info.status == "KILLED"
    again = sweeps.next_trial(study, space, "tpe", 3)
    assert again.params == elsewhere.params
    assert not sweeps.counts_as_done(study.get_trials()[0])


def test_a_study_in_mlflows_database_is_refused_naming_the_fix(use_tracking):
    with pytest.raises(ValueError, match="database of its own"):
        sweeps.open_storage(use_tracking["uri"])


def test_workers_nest_under_the_run_of_the_worker_that_created_the_study(
    tmp_path, monkeypatch, use_tracking
):
    creator = use_tracking["client"].create_run(use_tracking["experiment_id"]).info.run_id
    study, created = open_test_study(tmp_path)
    assert sweeps.sweep_parent(study, creator, created) == creator
    joined, created = open_test_study(tmp_path)
    assert sweeps.sweep_parent(joined, "my-run", created) == creator
    orphan, _ = open_test_study(tmp_path, "orphan")
    monkeypatch.setattr(sweeps, "PARENT_WAIT_SECONDS", 0)
    with pytest.raises(ValueError, match="has no sweep run"):
        sweeps.sweep_parent(orphan, "my-run", False)


def test_a_worker_on_another_tracking_server_is_told_to_use_the_sweeps(tmp_path, use_tracking):
    study, _ = open_test_study(tmp_path)
    study.set_user_attr(sweeps.PARENT_RUN_ATTRIBUTE, "0123456789abcdef0123456789abcdef")
    with pytest.raises(ValueError, match="not on the tracking server .*MLFLOW_TRACKING_URI"):
        sweeps.sweep_parent(study, "my-run", False)


def test_an_unreachable_study_database_is_one_line_naming_the_url_and_password():
    url = "postgresql+psycopg://mlpipe@127.0.0.1:9/optuna"  # port 9: nothing listens
    with pytest.raises(ValueError, match="cannot open study_storage .*:9/optuna: .*PGPASSWORD"):
        sweeps.open_storage(url)


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


def test_a_study_url_with_a_password_is_refused_without_showing_it():
    with pytest.raises(ValueError, match="PGPASSWORD") as error:
        sweeps.check_no_password("postgresql+psycopg://mlpipe:s3cret@db:5432/optuna")
    assert "s3cret" not in str(error.value)
    sweeps.check_no_password("postgresql+psycopg://mlpipe@db:5432/optuna")
    sweeps.check_no_password("sqlite:////tmp/optuna.db")
