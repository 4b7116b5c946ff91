"""Start or stop a team's tracking stack on one machine: PostgreSQL and `mlflow server` with login.

    export PGPASSWORD=...                    # the database user's password (psycopg reads it)
    export MLFLOW_AUTH_ADMIN_PASSWORD=...    # the MLflow admin's password, 12 characters or more
    python team_stack.py start --dir ~/mlpipe-team
    python team_stack.py stop --dir ~/mlpipe-team
    MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=$MLFLOW_AUTH_ADMIN_PASSWORD \
        python team_stack.py add-user alice --tracking-uri http://127.0.0.1:5000

What `start` does, in --dir:
- a PostgreSQL cluster from the system's packages (`postgresql`), listening on 127.0.0.1
  only, with one user (--db-user, password from PGPASSWORD, scram-sha-256) owning three
  databases: `mlflow` (runs and models), `mlflow_auth` (MLflow's users and permissions) and
  `optuna` (sweep studies: Optuna and MLflow both keep an `alembic_version` table, so a study
  cannot live in MLflow's database);
- `mlflow server` on that database with proxied artifacts (stored under --dir/artifacts;
  clients see `mlflow-artifacts:/` URIs and need no shared folder) and basic-auth login,
  whose admin password comes from MLFLOW_AUTH_ADMIN_PASSWORD.

`add-user` creates a login on a running server (this one or deploy/compose.yaml's), typed at
a prompt or read from standard input with --password-stdin.

No password is written to --dir, printed or passed on a command line. It then prints what a
client exports. This is for trying the team setup on one machine and for the tests; README
"Team server" says how the same runs on a server.
"""

import argparse
import configparser
import contextlib
import getpass
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

POSTGRES_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
DATABASES = ("mlflow", "mlflow_auth", "optuna")
STATE_FILE = "stack.json"
AUTH_CONFIG_TEMPLATE = Path(__file__).parent / "deploy" / "basic_auth.ini"
MIN_ADMIN_PASSWORD = 12  # MLflow refuses shorter admin passwords


def postgres_tool(name: str) -> str:
    """Path of a PostgreSQL server program (initdb, pg_ctl), which Debian keeps off PATH."""
    for bin_dir in POSTGRES_BIN_DIRS:
        if (bin_dir / name).is_file():
            return str(bin_dir / name)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"error: {name} not found; install PostgreSQL: apt-get install postgresql")
    return found


def as_postgres_owner(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its server programs as the `postgres` user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def required_env(name: str, why: str) -> str:
    """The value of an environment variable, or exit naming it."""
    value = os.environ.get(name, "")
    if not value:
        raise SystemExit(f"error: set {name} ({why}); it is read from the environment only")
    return value


def database_uri(user: str, port: int, database: str) -> str:
    """A SQLAlchemy URL without a password (psycopg takes it from PGPASSWORD or ~/.pgpass)."""
    return f"postgresql+psycopg://{user}@127.0.0.1:{port}/{database}"


def start_postgres(data_dir: Path, port: int, user: str, password: str) -> None:
    """Create (first time) and start a cluster in data_dir, with `user` owning DATABASES."""
    fresh = not (data_dir / "PG_VERSION").is_file()
    if fresh:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=data_dir.parent, delete=False) as pwfile:
            pwfile.write(password)
        try:
            if os.geteuid() == 0:
                shutil.chown(data_dir, "postgres", "postgres")
                shutil.chown(pwfile.name, "postgres", "postgres")
            subprocess.run(
                as_postgres_owner(
                    [
                        postgres_tool("initdb"),
                        "-D",
                        str(data_dir),
                        "-U",
                        user,
                        f"--pwfile={pwfile.name}",
                        "--auth=scram-sha-256",
                        "--encoding=UTF8",
                        "--no-locale",
                        "--no-sync",
                    ]
                ),
                check=True,
                capture_output=True,
                text=True,
            )
        finally:
            os.unlink(pwfile.name)
    subprocess.run(
        as_postgres_owner(
            [
                postgres_tool("pg_ctl"),
                "-D",
                str(data_dir),
                "-l",
                str(data_dir / "server.log"),
                "-w",
                "-o",
                f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
        text=True,
    )
    if fresh:
        import psycopg  # the team extra: pip install -e ".[team]"

        with psycopg.connect(
            host="127.0.0.1", port=port, user=user, dbname="postgres", autocommit=True
        ) as connection:
            for database in DATABASES:
                connection.execute(f'CREATE DATABASE "{database}"')


def write_auth_config(path: Path, user: str, port: int) -> None:
    """MLflow's basic-auth settings: deploy/basic_auth.ini, with this stack's user database."""
    config = configparser.ConfigParser()
    config.read(AUTH_CONFIG_TEMPLATE)
    config["mlflow"]["database_uri"] = database_uri(user, port, "mlflow_auth")
    with path.open("w") as file:
        config.write(file)


def admin_username() -> str:
    """The admin's name, as deploy/basic_auth.ini (shared with the compose file) sets it."""
    config = configparser.ConfigParser()
    config.read(AUTH_CONFIG_TEMPLATE)
    return config["mlflow"]["admin_username"]


def add_user(tracking_uri: str, username: str, password: str) -> None:
    """Create a login on the server, as the admin named in MLFLOW_TRACKING_USERNAME/PASSWORD.

    The user may log runs to every experiment (default_permission = EDIT).
    """
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    required_env("MLFLOW_TRACKING_USERNAME", "the admin's login, to create users")
    required_env("MLFLOW_TRACKING_PASSWORD", "the admin's password, to create users")
    try:
        get_app_client("basic-auth", tracking_uri=tracking_uri).create_user(username, password)
    except MlflowException as error:
        raise SystemExit(f"error: could not create user {username!r}: {error.message}") from None


def wait_until_up(url: str, process: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    """Wait for the server's /health, or exit with the end of its log."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"error: mlflow server exited:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"error: mlflow server did not answer in {seconds:.0f} s; see {log}")


def start(stack_dir: Path, port: int, pg_port: int, user: str, workers: int) -> dict:
    """Start PostgreSQL and the tracking server; return the stack's state (no secrets)."""
    password = required_env("PGPASSWORD", "the database user's password")
    required_env("MLFLOW_AUTH_ADMIN_PASSWORD", "the MLflow admin's password")
    if len(os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"]) < MIN_ADMIN_PASSWORD:
        raise SystemExit(
            f"error: MLFLOW_AUTH_ADMIN_PASSWORD must have at least {MIN_ADMIN_PASSWORD} "
            "characters (MLflow's rule)"
        )
    stack_dir = stack_dir.resolve()
    stack_dir.mkdir(parents=True, exist_ok=True)
    state_path = stack_dir / STATE_FILE
    if state_path.is_file():
        raise SystemExit(f"error: a stack is already recorded in {state_path}; stop it first")
    # Root runs PostgreSQL as `postgres`, which may not enter stack_dir (a private temporary
    # folder, say), so the cluster lives in a folder of its own, found again on the next start.
    location = stack_dir / "postgres_location"
    if location.is_file() and Path(location.read_text()).is_dir():
        data_dir = Path(location.read_text())
    else:
        data_dir = Path(tempfile.mkdtemp(prefix="mlpipe-postgres-")) / "data"
        if os.geteuid() == 0:
            shutil.chown(data_dir.parent, "postgres", "postgres")
        location.write_text(str(data_dir))
    start_postgres(data_dir, pg_port, user, password)

    secret_file = stack_dir / "flask_secret_key"
    if not secret_file.is_file():
        secret_file.write_text(secrets.token_hex(32))
        secret_file.chmod(0o600)
    auth_config = stack_dir / "basic_auth.ini"
    write_auth_config(auth_config, user, pg_port)
    log = stack_dir / "mlflow_server.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("ab") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                database_uri(user, pg_port, "mlflow"),
                "--artifacts-destination",
                str(stack_dir / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--app-name",
                "basic-auth",
            ],
            env={
                **os.environ,
                "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_file.read_text(),
            },
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    state = {
        "tracking_uri": url,
        "study_storage": database_uri(user, pg_port, "optuna"),
        "admin_username": admin_username(),
        "postgres_data": str(data_dir),
        "server_pid": process.pid,
    }
    state_path.write_text(json.dumps(state, indent=2))
    wait_until_up(url, process, log)
    return state


def stop(stack_dir: Path) -> None:
    """Stop the server and PostgreSQL recorded in stack_dir; the data stays for the next start."""
    state_path = stack_dir.resolve() / STATE_FILE
    if not state_path.is_file():
        raise SystemExit(f"error: no stack recorded in {state_path}")
    state = json.loads(state_path.read_text())
    with contextlib.suppress(ProcessLookupError):  # the server already ended
        os.killpg(state["server_pid"], signal.SIGTERM)
    subprocess.run(
        as_postgres_owner(
            [postgres_tool("pg_ctl"), "-D", state["postgres_data"], "-m", "fast", "-w", "stop"]
        ),
        capture_output=True,
    )
    state_path.unlink()


def read_new_password(from_stdin: bool) -> str:
    """A new user's password: one line of standard input, or typed twice at a prompt."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    password = getpass.getpass("new user's password: ")
    if getpass.getpass("again: ") != password:
        raise SystemExit("error: the two passwords differ")
    return password


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and start or stop the stack, or add a user to it."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["start", "stop", "add-user"])
    parser.add_argument("username", nargs="?", help="add-user: the new user's login name")
    parser.add_argument("--dir", type=Path, default=Path(".team"), help="state and artifacts")
    parser.add_argument("--port", type=int, default=5000, help="mlflow server port")
    parser.add_argument("--pg-port", type=int, default=5433, help="PostgreSQL port")
    parser.add_argument("--db-user", default="mlpipe", help="PostgreSQL user owning the data")
    parser.add_argument("--workers", type=int, default=2, help="mlflow server workers")
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"),
        help="add-user: the server (default: MLFLOW_TRACKING_URI)",
    )
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="add-user: read the new password from standard input instead of a prompt",
    )
    arguments = parser.parse_args(argv)
    if arguments.action == "add-user":
        if not arguments.username:
            parser.error("add-user needs the new user's name: add-user alice")
        password = read_new_password(arguments.password_stdin)
        add_user(arguments.tracking_uri, arguments.username, password)
        print(f"user {arguments.username} can now log in to {arguments.tracking_uri}")
        return
    if arguments.username:
        parser.error(f"{arguments.action} takes no user name, got {arguments.username!r}")
    if arguments.action == "stop":
        stop(arguments.dir)
        print(f"stopped the stack in {arguments.dir}")
        return
    state = start(
        arguments.dir, arguments.port, arguments.pg_port, arguments.db_user, arguments.workers
    )
    print(
        f"tracking server {state['tracking_uri']} (PostgreSQL on 127.0.0.1:{arguments.pg_port})\n"
        "on every machine that runs stages or sweep workers:\n"
        f"  export MLFLOW_TRACKING_URI={state['tracking_uri']}\n"
        "  export MLFLOW_TRACKING_USERNAME=...   # a user: python team_stack.py add-user NAME\n"
        "  export MLFLOW_TRACKING_PASSWORD=...\n"
        "  export PGPASSWORD=...                 # for the sweep study\n"
        f"  -P study_storage={state['study_storage']}\n"
        f"(the admin, who adds users, is {state['admin_username']} with MLFLOW_AUTH_ADMIN_PASSWORD)"
    )


if __name__ == "__main__":
    main()
