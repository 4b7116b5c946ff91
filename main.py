"""main: the whole pipeline in one command, reusing stages that already finished.

Runs get_data, explore_data, preprocess, train (or train_batch when `sweep` is given) and
package, each as its own MLflow run nested under this one, passing each stage's artifact
URIs to the next. A stage whose entry point, parameters, git commit and upstream inputs
match a finished run is reused, so a second `main` takes seconds; `force=true` reruns all.
Ends by printing the `mlflow models serve` and curl commands for the registered model.

    mlflow run . --env-manager local                                  # Fashion-MNIST
    mlflow run . -P dataset=mnist -P source=/data/mnist -P epochs=2 --env-manager local
    mlflow run . -P sweep="conv_filters=16,32;dropout_rate=0.2,0.4" --env-manager local
"""

import argparse

from mlpipe_vision import cli, workflow
from mlpipe_vision.cli import run_or_exit, str_to_bool
from mlpipe_vision.promotion import PROMOTE_CHOICES


def build_parser() -> argparse.ArgumentParser:
    """The command line, with the same names and defaults as the MLproject entry point."""
    parser = cli.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="fashion_mnist", help="dataset for get_data")
    parser.add_argument("--source", default="", help="folder or mirror URL for get_data")
    parser.add_argument(
        "--verify",
        type=str_to_bool,
        default=True,
        help="get_data: refuse IDX files that differ from the official ones",
    )
    parser.add_argument(
        "--percentage", type=float, default=100.0, help="share of the data preprocess keeps"
    )
    parser.add_argument("--epochs", type=int, default=10, help="training epochs")
    parser.add_argument(
        "--sweep",
        default="",
        help='"" trains once; "name=values;name=values" runs train_batch over them',
    )
    parser.add_argument(
        "--registered_model_name", default="", help="registry name (default: <dataset>_classifier)"
    )
    parser.add_argument(
        "--promote",
        default="better",
        choices=PROMOTE_CHOICES,
        help="package: move @champion only when at least as good (better), always or never",
    )
    parser.add_argument(
        "--force", type=str_to_bool, default=False, help="rerun stages that already finished"
    )
    return parser


def main() -> None:
    """Parse the command line and run the chain."""
    args = build_parser().parse_args()
    run_or_exit(workflow.run_main, **vars(args))


if __name__ == "__main__":
    main()
