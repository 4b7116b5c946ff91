"""MLproject is the parameter contract: every entry point's parameters match its script's CLI."""

import importlib.util
import os
import subprocess
import sys

import pytest
import yaml

from mlpipe_vision import train_parameters
from tests.conftest import REPO_DIR, free_port

MLPROJECT = yaml.safe_load((REPO_DIR / "MLproject").read_text())
ENTRY_POINTS = MLPROJECT["entry_points"]


def load_script(command: str):
    script = command.split()[1]
    spec = importlib.util.spec_from_file_location(script.removesuffix(".py"), REPO_DIR / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parser_defaults(parser) -> dict:
    return {action.dest: action for action in parser._actions if action.dest != "help"}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_mlproject_parameters_match_the_script(name):
    entry = ENTRY_POINTS[name]
    module = load_script(entry["command"])
    actions = parser_defaults(module.build_parser())
    parameters = entry.get("parameters", {})
    assert set(parameters) == set(actions), f"{name}: MLproject and CLI differ"
    for parameter, spec in parameters.items():
        assert "{" + parameter + "}" in entry["command"]
        action = actions[parameter]
        if isinstance(spec, dict) and "default" in spec:
            default = spec["default"]
            converted = action.type(str(default)) if action.type else str(default)
            assert converted == action.default, f"{name}.{parameter}: {default} vs {action.default}"
        else:
            assert action.required, f"{name}.{parameter} has no default in MLproject"


SCRIPTS = sorted(
    {entry["command"].split()[1] for entry in ENTRY_POINTS.values()}
    | {"png_to_pandas.py", "team_stack.py", "app.py"}
)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_help(script):
    completed = subprocess.run(
        [sys.executable, script, "--help"], cwd=REPO_DIR, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr
    assert "usage:" in completed.stdout


def test_an_unreachable_tracking_server_is_one_line_not_minutes_of_retries(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    completed = subprocess.run(
        [sys.executable, str(REPO_DIR / "download.py"), "--dataset", "fashion_mnist"],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=120,  # MLflow's own retries would take about four minutes
    )
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines() == [
        f"error: the tracking server {uri} does not answer ([Errno 111] Connection refused). "
        "Start it (python team_stack.py start) or point MLFLOW_TRACKING_URI at the running one"
    ]


MLPROJECT_TYPES = {int: "int", float: "float", str: "string", bool: "string"}


def test_mlproject_train_parameters_are_the_schema():
    """MLflow reads MLproject alone: its train parameters are TrainParameters, in order."""
    train = ENTRY_POINTS["train"]["parameters"]
    assert list(train) == ["data", *train_parameters.types()]
    for field in train_parameters.fields():
        spec = train[field.name]
        assert spec["type"] == MLPROJECT_TYPES[field.type], field.name
        default = str(spec["default"]).lower() if field.type is bool else spec["default"]
        expected = str(field.default).lower() if field.type is bool else field.default
        assert default == expected, field.name
    swept = list(ENTRY_POINTS["train_batch"]["parameters"])[1 : 1 + len(train_parameters.types())]
    assert swept == list(train_parameters.types())


@pytest.mark.parametrize(
    ("script", "arguments", "message"),
    [
        ("preprocess.py", ["--data", "x", "--validation_fraction", "1.5"], "expected a number"),
        ("train.py", ["--data", "x", "--epochs", "ten"], "invalid int value: 'ten'"),
        ("download.py", ["--verify", "maybe"], "expected true or false"),
        ("package_model.py", ["--model", "x", "--promote", "sometimes"], "invalid choice"),
        ("main.py", ["--promote", "yes"], "invalid choice: 'yes'"),
    ],
)
def test_a_bad_argument_is_one_line(script, arguments, message):
    completed = subprocess.run(
        [sys.executable, script, *arguments], cwd=REPO_DIR, capture_output=True, text=True
    )
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {script}: argument --"), lines
    assert message in lines[0]
