r"""train_batch: a hyperparameter sweep, one nested train run per trial under a parent run.

Reads:  data, the `preprocessed/` URI of a preprocess run; a search space over the train
        parameters; an Optuna study (a sqlite file by default) to resume.
Logs:   a parent run with one nested child run per trial, each a full train run (its own
        parameters, metrics, plots and model, plus train.log); on the parent: the search
        settings, trial_objective per trial, best_<name> parameters, best_<metric>, the tags
        mlpipe.best_run_id and mlpipe.best_model_uri, trials.csv and
        plots/objective_by_parameter.png.
Next:   mlflow run . -e package -P model=runs:/<best run>/model --env-manager local
        (or -P model=runs:/<this run>, which package resolves through mlpipe.best_run_id)

Every train parameter takes one of:
    8,16,32              a list: a grid dimension (or a categorical one for TPE)
    1e-4:1e-2:log, 8:64  a range, sampled by Optuna's TPE (integer for integer parameters)
    16                   a fixed value
    (empty)              train's default
With lists only the sweep runs the whole grid; with any range it runs n_trials TPE trials.
The Optuna study is named after the sweep's definition and stored next to where it runs, so
the same command after a kill (or with a larger n_trials) skips finished trials.

    python batch_train.py --data runs:/<id>/preprocessed --conv_filters 8,16,24,32 --epochs 3
    python batch_train.py --data runs:/<id>/preprocessed --learning_rate 1e-4:1e-2:log \
        --conv_filters 16:64 --dropout_rate 0.3,0.4,0.5 --n_trials 20 --workers 2
"""

import argparse

from mlpipe_vision import cli, train_parameters
from mlpipe_vision.cli import run_or_exit
from mlpipe_vision.console import native_stderr_silenced


def build_parser() -> argparse.ArgumentParser:
    """The command line, with the same names and defaults as the MLproject entry point."""
    parser = cli.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", required=True, help="runs:/<preprocess_run_id>/preprocessed or a local folder"
    )
    # Every train parameter, as text: swept, fixed or (empty) left to train's default.
    for field in train_parameters.fields():
        parser.add_argument(
            f"--{field.name}",
            default="",
            help=f"{field.metadata['help']}; a value, an a,b,c list or low:high[:log]",
        )
    parser.add_argument(
        "--n_trials",
        type=int,
        default=0,
        help="TPE: trials in total, finished ones of a resumed study included; "
        "grid: 0 = every point, n = the first n",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="trials run at once, each in its own process"
    )
    parser.add_argument(
        "--metric",
        default="val_accuracy",
        help="metric of the trial runs to optimize, read at their best epoch",
    )
    parser.add_argument(
        "--direction", default="auto", help="maximize, minimize, or auto (minimize *loss)"
    )
    parser.add_argument(
        "--sampler", default="auto", help="grid, tpe, or auto (grid when there are no ranges)"
    )
    parser.add_argument(
        "--study_name", default="", help="Optuna study name; default: from the sweep's definition"
    )
    parser.add_argument(
        "--study_storage",
        default="",
        help="Optuna storage URL; default: sqlite:///optuna-<study_name>.db here",
    )
    return parser


def main() -> None:
    """Parse the command line and run the stage."""
    args = vars(build_parser().parse_args())
    search_space = {name: args.pop(name) for name in train_parameters.types()}
    with native_stderr_silenced():
        from mlpipe_vision import sweeps
    run_or_exit(sweeps.run_sweep, search_space=search_space, **args)


if __name__ == "__main__":
    main()
