"""The shared study (grid queue, budget, dead workers' trials, sweep run), and one trial."""

import threading
import time

import mlflow
import optuna
import pytest

from mlpipe_vision import search_space, sweep_study, sweeps
from mlpipe_vision import trial as trial_process

optuna.logging.set_verbosity(optuna.logging.WARNING)
WAITING = (optuna.trial.TrialState.WAITING,)


def study_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


def open_test_study(tmp_path, name="grid"):
    return sweep_study.open_study(name, study_url(tmp_path), "maximize")


def trial_of_a_dead_worker(url: str, name: str, distributions: dict, **user_attrs):
    """A trial as a worker leaves it when it dies: RUNNING, with its last heartbeat."""
    storage = optuna.storages.RDBStorage(url)
    study = optuna.load_study(study_name=name, storage=storage)
    trial = study.ask(distributions)
    for key, value in user_attrs.items():
        trial.set_user_attr(key, value)
    study_id = storage.get_study_id_from_name(name)
    storage.record_heartbeat(
        storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    )
    return trial


@pytest.fixture
def short_grace(monkeypatch):
    """A dead worker's trial is requeued after 1 s without heartbeat."""
    monkeypatch.setattr(sweep_study, "GRACE_SECONDS", 1)
    monkeypatch.setattr(sweep_study, "HEARTBEAT_SECONDS", 1)


def test_a_grid_is_queued_once_and_a_dead_workers_point_runs_again(
    tmp_path, use_tracking, short_grace
):
    space = search_space.parse_search_space({"conv_filters": "8,16,32,64"})
    study, created = open_test_study(tmp_path)
    assert created
    sweep_study.queue_grid(study, space, 0)
    dead = trial_of_a_dead_worker(study_url(tmp_path), "grid", space.distributions())

    # A second worker joins: it queues nothing new, requeues the dead worker's point only
    # once its grace period is over, and runs every point once, whether it completes or
    # fails by itself.
    joined, created = open_test_study(tmp_path)
    assert not created
    sweep_study.queue_grid(joined, space, 0)
    assert len(joined.get_trials(states=WAITING)) == 3
    assert sweep_study.requeue_dead_trials(joined) == 0
    time.sleep(2.5)
    assert sweep_study.requeue_dead_trials(joined) == 1

    def objective(trial):
        filters = space.suggest(trial)["conv_filters"]
        if filters == 16:
            trial.set_user_attr(sweep_study.FAILURE_ATTRIBUTE, "exit code 1")
            raise sweeps.TrialFailedError("exit code 1")
        return filters / 100

    sweeps.run_trials(joined, objective, "grid", 0, workers=1)
    sweeps.run_trials(joined, objective, "grid", 0, workers=1)  # nothing is left to run
    trials = joined.get_trials()
    assert trials[dead.number].state.name == "FAIL"
    assert not sweep_study.counts_as_done(trials[dead.number])
    done = [trial.params["conv_filters"] for trial in trials if sweep_study.counts_as_done(trial)]
    assert sorted(done) == [8, 16, 32, 64]
    assert len(trials) == 5
    assert [trial.params for trial in trials[4:]] == [dead.params]


def test_a_grid_worker_runs_no_trial_that_is_not_a_queued_point(tmp_path):
    """When another worker took the last point meanwhile, Optuna makes a new trial."""
    study, _ = open_test_study(tmp_path)
    space = search_space.parse_search_space({"conv_filters": "8,16"})
    settings = {"sampler": "grid", "metric": "val_accuracy"}
    runner = sweeps.TrialRunner(
        study, space, settings, "data", tmp_path, 1, None, tmp_path, own_run_id="", client=None
    )
    study.optimize(runner, n_trials=3)
    assert [trial.state.name for trial in study.trials] == ["PRUNED"]
    assert study.trials[0].params == {}


def test_a_grid_with_n_trials_queues_the_first_points_only(tmp_path):
    space = search_space.parse_search_space({"conv_filters": "8,16,32"})
    study, _ = open_test_study(tmp_path)
    sweep_study.queue_grid(study, space, 2)
    assert len(study.get_trials(states=WAITING)) == 2


def test_the_tpe_budget_counts_every_workers_trials(tmp_path):
    space = search_space.parse_search_space({"learning_rate": "1e-4:1e-2:log"})
    first, _ = open_test_study(tmp_path, "tpe")
    second, _ = open_test_study(tmp_path, "tpe")

    def objective(trial):
        time.sleep(0.05)
        return space.suggest(trial)["learning_rate"]

    def failing(trial):
        space.suggest(trial)
        trial.set_user_attr(sweep_study.FAILURE_ATTRIBUTE, "exit code 1")
        raise sweeps.TrialFailedError("exit code 1")

    sweeps.run_trials(first, failing, "tpe", 1, workers=1)  # failed by itself: it counts
    sweeps.run_trials(first, objective, "tpe", 2, workers=1)
    sweeps.run_trials(second, objective, "tpe", 2, workers=1)  # used up by the first worker
    assert len(second.trials) == 2
    sweeps.run_trials(second, objective, "tpe", 3, workers=1)
    sweeps.run_trials(second, objective, "tpe", 5, workers=2)  # n_jobs: no overshoot
    assert len(first.trials) == 5
    # Two workers at once: each stops when the study has n_trials, so the one still
    # training then may add one more (up to workers - 1 in all).
    workers = [
        threading.Thread(target=sweeps.run_trials, args=(study, objective, "tpe", 9, 1))
        for study in (first, second)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(first.trials) in (9, 10)


def test_a_trial_without_heartbeat_is_requeued_and_its_runs_killed(
    tmp_path, use_tracking, monkeypatch
):
    # Grace long enough that making both dead trials cannot outlast it on a slow machine (at
    # 1 s the first one was already stale when the check "within the grace period" ran).
    grace = 4
    monkeypatch.setattr(sweep_study, "GRACE_SECONDS", grace)
    monkeypatch.setattr(sweep_study, "HEARTBEAT_SECONDS", 1)
    space = search_space.parse_search_space({"learning_rate": "1e-4:1e-2:log"})
    study, _ = open_test_study(tmp_path, "tpe")
    client = use_tracking["client"]
    parent, trial_run, worker_run, other_trial_run = (
        client.create_run(use_tracking["experiment_id"]).info.run_id for _ in range(4)
    )
    study.set_user_attr(sweep_study.PARENT_RUN_ATTRIBUTE, parent)
    dead = [
        trial_of_a_dead_worker(
            study_url(tmp_path),
            "tpe",
            space.distributions(),
            **{
                sweep_study.WORKER_ATTRIBUTE: "another-machine:1234",
                sweep_study.RUN_ID_ATTRIBUTE: run_id,
                sweep_study.WORKER_RUN_ATTRIBUTE: worker_run_id,
            },
        )
        for run_id, worker_run_id in ((trial_run, worker_run), (other_trial_run, parent))
    ]
    assert sweep_study.requeue_dead_trials(study) == 0  # within the grace period
    time.sleep(grace + 1.5)
    assert sweep_study.requeue_dead_trials(study) == 2
    statuses = [client.get_run(run).info.status for run in (trial_run, worker_run, other_trial_run)]
    assert statuses == ["KILLED"] * 3
    assert client.get_run(parent).info.status == "RUNNING"  # the last worker closes it
    assert not sweep_study.counts_as_done(study.get_trials()[0])
    again = []
    sweeps.run_trials(study, lambda trial: again.append(space.suggest(trial)) or 0.5, "tpe", 2, 1)
    assert again == [trial.params for trial in dead]


def test_a_study_in_mlflows_database_is_refused_naming_the_fix(use_tracking):
    with pytest.raises(ValueError, match="database of its own"):
        sweep_study.open_storage(use_tracking["uri"])


def test_workers_nest_under_the_run_of_the_worker_that_created_the_study(
    tmp_path, monkeypatch, use_tracking
):
    creator = use_tracking["client"].create_run(use_tracking["experiment_id"]).info.run_id
    study, created = open_test_study(tmp_path)
    assert sweep_study.sweep_parent(study, creator, created) == creator
    joined, created = open_test_study(tmp_path)
    assert sweep_study.sweep_parent(joined, "my-run", created) == creator
    orphan, _ = open_test_study(tmp_path, "orphan")
    monkeypatch.setattr(sweep_study, "PARENT_WAIT_SECONDS", 0)
    with pytest.raises(ValueError, match="has no sweep run"):
        sweep_study.sweep_parent(orphan, "my-run", False)


def test_a_worker_on_another_tracking_server_is_told_to_use_the_sweeps(tmp_path, use_tracking):
    study, _ = open_test_study(tmp_path)
    study.set_user_attr(sweep_study.PARENT_RUN_ATTRIBUTE, "0123456789abcdef0123456789abcdef")
    with pytest.raises(ValueError, match="not on the tracking server .*MLFLOW_TRACKING_URI"):
        sweep_study.sweep_parent(study, "my-run", False)


def test_an_unreachable_study_database_is_one_line_naming_the_url_and_password():
    url = "postgresql+psycopg://mlpipe@127.0.0.1:9/optuna"  # port 9: nothing listens
    with pytest.raises(ValueError, match="cannot open study_storage .*:9/optuna: .*PGPASSWORD"):
        sweep_study.open_storage(url)


def test_the_objective_is_read_at_the_best_epoch(use_tracking):
    with mlflow.start_run() as run:
        for epoch, value in enumerate([0.80, 0.90, 0.85]):
            mlflow.log_metric("val_accuracy", value, step=epoch)
        mlflow.log_metric("best_epoch", 1)
        mlflow.log_metric("test_accuracy", 0.88)
    client = use_tracking["client"]
    assert trial_process.trial_objective(client, run.info.run_id, "val_accuracy") == 0.90
    assert trial_process.trial_objective(client, run.info.run_id, "test_accuracy") == 0.88
    with pytest.raises(ValueError, match="logged no metric 'val_auc'"):
        trial_process.trial_objective(client, run.info.run_id, "val_auc")


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
    assert trial_process.is_echoed(line) is echoed


def test_a_study_url_with_a_password_is_refused_without_showing_it():
    with pytest.raises(ValueError, match="PGPASSWORD") as error:
        sweep_study.check_no_password("postgresql+psycopg://mlpipe:s3cret@db:5432/optuna")
    assert "s3cret" not in str(error.value)
    sweep_study.check_no_password("postgresql+psycopg://mlpipe@db:5432/optuna")
    sweep_study.check_no_password("sqlite:////tmp/optuna.db")
