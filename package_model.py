"""package: wrap a trained model into the served pyfunc, register it, set an alias.

Reads:  model, one of runs:/<train_run_id>/model, runs:/<train_batch_parent_run_id> (the
        sweep's best trial is taken) or models:/<name>@<alias>; the normalization and class
        names through lineage (train run -> preprocess run), or explicit mean/std.
Logs:   model/ (a pyfunc logged from code: the Keras network, meta.json with class names,
        input shape and normalization, an output signature and an input example),
        registered as a version of <registered_model_name>; <alias> moves to it only when it
        scores at least as well as the alias's holder on the same test set (--promote), and
        the decision and both scores are tagged on the version and the run.
Next:   mlflow models serve -m models:/<name>@<alias> -p 5000 --env-manager local

    python package_model.py --model runs:/<train_run_id>/model --output_dir ./model
"""

import argparse

from mlpipe_vision import cli
from mlpipe_vision.cli import optional_float, run_or_exit
from mlpipe_vision.console import native_stderr_silenced
from mlpipe_vision.promotion import PROMOTE_CHOICES


def build_parser() -> argparse.ArgumentParser:
    """The command line, with the same names and defaults as the MLproject entry point."""
    parser = cli.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        required=True,
        help="runs:/<train_run_id>/model, runs:/<sweep_parent_run_id> or models:/<name>@<alias>",
    )
    parser.add_argument(
        "--registered_model_name",
        default="",
        help="registry name (default: <dataset>_classifier)",
    )
    parser.add_argument(
        "--alias", default="champion", help="alias a version takes when it earns it (--promote)"
    )
    parser.add_argument(
        "--mean", type=optional_float, default=None, help="override: pixel mean, 0-255 scale"
    )
    parser.add_argument(
        "--std", type=optional_float, default=None, help="override: pixel std, 0-255 scale"
    )
    parser.add_argument(
        "--output_dir", default="", help="also save the pyfunc to this folder, e.g. ./model"
    )
    parser.add_argument(
        "--promote",
        default="better",
        choices=PROMOTE_CHOICES,
        help="better: move the alias only when at least as good as its holder on the same test "
        "set; always; never",
    )
    parser.add_argument(
        "--metric",
        default="test_accuracy",
        help="the train run's metric that decides (names ending in loss: lower is better)",
    )
    return parser


def main() -> None:
    """Parse the command line and run the stage."""
    args = build_parser().parse_args()
    with native_stderr_silenced():  # TensorFlow's C++ start-up lines
        from mlpipe_vision import packaging
    run_or_exit(packaging.run_package, **vars(args))


if __name__ == "__main__":
    main()
