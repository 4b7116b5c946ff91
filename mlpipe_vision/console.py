"""The console's quiet mode, in one place: what the libraries print that users do not need.

Off unless MLPIPE_VERBOSE=1: TensorFlow's C++ start-up lines, MLflow's INFO lines and
artifact progress bars, Optuna's INFO lines (and its warnings that the heartbeat and plots
we use are experimental), MLflow's advice to type-hint the served model's `predict`, and the
Keras summary table (training prints one line instead). Warnings and errors still show.
"""

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

VERBOSE = os.environ.get("MLPIPE_VERBOSE") == "1"

if not VERBOSE:
    # TensorFlow reads its C++ log level once, when it loads, and every entry point imports
    # this package before TensorFlow: 3 keeps info, warnings and the CUDA probe's error on
    # machines without a GPU off the console.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def quiet_console() -> None:
    """Keep MLflow's artifact progress bars and INFO lines off the console.

    Also set in the environment, so the stages `main` runs inherit it. Warnings and errors
    still show; MLPIPE_VERBOSE=1 shows everything.
    """
    if VERBOSE:
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"].upper())
    # On Ctrl-C the stage says what stopped and how to resume (cli.report_stopped); the
    # `mlflow run` that main starts each stage with would say it was interrupted as well.
    logging.getLogger("mlflow.projects").addFilter(
        lambda record: "interrupted, cancelling run" not in record.getMessage()
    )


def quiet_optuna() -> None:
    """Keep Optuna's own lines off the console: the sweep prints one line per trial.

    Optuna logs every trial at INFO and a failed one with its traceback at WARNING. Call it
    once Optuna is imported: Optuna sets its logger's level as it loads.
    """
    if VERBOSE:
        return
    logging.getLogger("optuna").setLevel(logging.ERROR)
    # Known and expected: Optuna marks the heartbeat, `fail_stale_trials`, the retry callback
    # and `plot_slice` experimental.
    warnings.filterwarnings("ignore", message=r".*(is experimental|is an experimental feature)")


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null, for the lines TensorFlow's C++ prints on load.

    A few of them (CUDA and oneDNN notices) come before TF_CPP_MIN_LOG_LEVEL applies.
    Python exceptions still show: they are printed after the descriptor is restored. With
    MLPIPE_VERBOSE=1 nothing is silenced.
    """
    if VERBOSE:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


@contextlib.contextmanager
def without_warning(text: str) -> Iterator[None]:
    """Drop warnings whose message contains `text` while the block runs; show all others.

    Works where a warnings filter cannot: MLflow gives some advice (type-hint `predict`)
    under a filter of its own. Used for warnings that are known and expected at one call.
    """
    show = warnings.showwarning

    def show_others(message, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        if text not in str(message):
            show(message, *args, **kwargs)

    warnings.showwarning = show_others
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=f".*{text}")
            yield
    finally:
        warnings.showwarning = show


def first_line(error: BaseException) -> str:
    """Return the first line of an exception's message, for one-line error messages."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
