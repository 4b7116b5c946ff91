"""deploy/: the team stack for a server, checked as far as a machine without Docker allows."""

import configparser
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

import team_stack
from tests.conftest import REPO_DIR

DEPLOY = REPO_DIR / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def dev_tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(f"{name} is missing: install the dev extras (pip install -e '.[dev]')")
    return path


def test_compose_file_follows_the_compose_specification():
    completed = subprocess.run(
        [dev_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "compose.yaml"],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_server_dockerfile_passes_hadolint():
    completed = subprocess.run(
        [dev_tool("hadolint"), "Dockerfile.server"], cwd=DEPLOY, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_server_image_and_pins_are_within_the_projects_requirements():
    dockerfile = (DEPLOY / "Dockerfile.server").read_text()
    project = tomllib.loads((REPO_DIR / "pyproject.toml").read_text())["project"]
    texts = project["dependencies"] + project["optional-dependencies"]["team"]
    requirements = [Requirement(text) for text in texts]
    wanted = {requirement.name.lower(): requirement.specifier for requirement in requirements}
    image = re.search(r"^ARG MLFLOW_IMAGE=ghcr.io/mlflow/mlflow:v([\d.]+)$", dockerfile, re.M)
    pins = dict(re.findall(r'"([\w-]+)(?:\[\w+\])?==([\d.]+)"', dockerfile))
    assert image and image.group(1) in wanted["mlflow"], image
    assert {name.lower() for name in pins} == {"psycopg", "flask-wtf"}
    for name, pinned in pins.items():
        assert pinned in wanted[name.lower()], (name, pinned)


def test_secrets_come_from_the_environment_only():
    secret = re.compile(r"PASSWORD|SECRET", re.IGNORECASE)
    for service in COMPOSE["services"].values():
        for name, value in service.get("environment", {}).items():
            if secret.search(name):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", value), (name, value)
    auth = configparser.ConfigParser()
    auth.read(DEPLOY / "basic_auth.ini")
    assert not [key for key in auth["mlflow"] if secret.search(key)]


def test_compose_creates_the_databases_team_stack_creates():
    script = (DEPLOY / "create-databases.sql").read_text()
    created = set(re.findall(r"CREATE DATABASE (\w+)", script))
    created.add(COMPOSE["services"]["postgres"]["environment"]["POSTGRES_DB"])
    assert created == set(team_stack.DATABASES)
    command = " ".join(COMPOSE["services"]["mlflow"]["command"])
    assert "--backend-store-uri postgresql+psycopg://mlpipe@127.0.0.1/mlflow " in command
    assert "--app-name basic-auth" in command


def test_team_stack_writes_the_deploy_login_settings_with_its_own_database(tmp_path):
    team_stack.write_auth_config(tmp_path / "basic_auth.ini", "someone", 6543)
    written = configparser.ConfigParser()
    written.read(tmp_path / "basic_auth.ini")
    template = configparser.ConfigParser()
    template.read(DEPLOY / "basic_auth.ini")
    assert written["mlflow"]["database_uri"] == (
        "postgresql+psycopg://someone@127.0.0.1:6543/mlflow_auth"
    )
    del written["mlflow"]["database_uri"], template["mlflow"]["database_uri"]
    assert dict(written["mlflow"]) == dict(template["mlflow"])


def test_compose_uses_the_hosts_network_only():
    for name, service in COMPOSE["services"].items():
        assert service["network_mode"] == "host", name
        assert "ports" not in service, name
    assert COMPOSE["services"]["mlflow"]["build"]["network"] == "host"
