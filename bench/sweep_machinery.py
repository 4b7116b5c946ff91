"""What Optuna's machinery changed in sweeps, measured: TPE overshoot and dead-trial notice.

1. TPE budget: two worker processes share one sqlite study with n_trials = N; each trial
   sleeps about a second. Prints how many trials the study ran beyond N, per N and round.
2. A dead worker: a worker process is killed (SIGKILL) during its trial; another process
   asks for dead trials every 0.2 s (as `fail_stale_trials` does before each trial). Prints
   the seconds from the kill until the trial is queued again, for a grace period.

No MLflow, no training: the trials are stand-ins, the study machinery is the sweep's own.

    python bench/sweep_machinery.py --rounds 5 --grace 6
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from mlpipe_vision import search_space, sweep_study, sweeps

SPACE = {"learning_rate": "1e-4:1e-2:log"}


def objective(trial: optuna.Trial) -> float:
    """A stand-in trial of about a second."""
    time.sleep(random.uniform(0.8, 1.2))
    return search_space.parse_search_space(SPACE).suggest(trial)["learning_rate"]


def worker(url: str, n_trials: int, sleep_forever: bool) -> None:
    """One worker process: run the sweep's trials (or start one and hang until killed)."""
    sweeps.quiet_optuna()
    study, _ = sweep_study.open_study("bench", url, "maximize")
    if sleep_forever:
        study.optimize(lambda trial: time.sleep(3600) or 0.0, n_trials=1)
    sweeps.run_trials(study, objective, "tpe", n_trials, 1)


def start_worker(url: str, n_trials: int, sleep_forever: bool = False) -> subprocess.Popen:
    """A worker in a process of its own."""
    arguments = [url, str(n_trials), "1" if sleep_forever else "0"]
    return subprocess.Popen([sys.executable, __file__, "--worker", *arguments])


def overshoot(n_trials: int, folder: Path) -> int:
    """Trials beyond n_trials when two worker processes share the budget."""
    url = f"sqlite:///{folder / f'tpe-{n_trials}-{time.monotonic_ns()}.db'}"
    sweeps.quiet_optuna()
    sweep_study.open_study("bench", url, "maximize")  # created before the workers join
    workers = [start_worker(url, n_trials) for _ in range(2)]
    for process in workers:
        process.wait()
    study = optuna.load_study(study_name="bench", storage=url)
    return sum(map(sweep_study.counts_as_done, study.get_trials())) - n_trials


def notice_seconds(folder: Path) -> float:
    """Seconds from killing a worker during its trial until another requeues the trial."""
    url = f"sqlite:///{folder / f'dead-{time.monotonic_ns()}.db'}"
    study, _ = sweep_study.open_study("bench", url, "maximize")
    process = start_worker(url, 1, sleep_forever=True)
    while not study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
        time.sleep(0.1)
    time.sleep(1)  # it is training and beating
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = time.monotonic()
    while sweep_study.requeue_dead_trials(study) == 0:
        time.sleep(0.2)
    return time.monotonic() - killed


def main() -> None:
    """Measure both and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--grace", type=int, default=6, help="MLPIPE_SWEEP_GRACE_SECONDS")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        url, n_trials, sleep_forever = args.worker
        worker(url, int(n_trials), sleep_forever == "1")
        return
    os.environ["MLPIPE_SWEEP_GRACE_SECONDS"] = str(args.grace)
    sweep_study.GRACE_SECONDS = args.grace
    sweep_study.HEARTBEAT_SECONDS = max(1, args.grace // 6)
    with tempfile.TemporaryDirectory() as tmp:
        for n_trials in (3, 4, 5):
            extra = [overshoot(n_trials, Path(tmp)) for _ in range(args.rounds)]
            print(f"TPE n_trials={n_trials}, 2 workers: trials beyond n_trials {extra}")
        seconds = [notice_seconds(Path(tmp)) for _ in range(args.rounds)]
        shown = ", ".join(f"{value:.1f}" for value in seconds)
        print(f"dead trial noticed after (grace {args.grace} s): {shown} s")


if __name__ == "__main__":
    main()
