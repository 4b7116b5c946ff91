"""preprocess: normalize a dataset and split off a validation set.

Reads:  data, the `dataset/` URI of a get_data run; the normalization from explicit
        mean/std, or a stats.json URI of an explore_data run, or computed from train.
Logs:   preprocessed/ (train, validation, test as uint8 shards, and meta.json with the
        normalization that train and the packaged model apply), normalization.json; tags the
        run with the input URI.
Next:   mlflow run . -e train -P data=runs:/<this run>/preprocessed --env-manager local

    python preprocess.py --data runs:/<get_data_run_id>/dataset --percentage 10
"""

import argparse

from mlpipe_vision import cli, preprocessing
from mlpipe_vision.cli import fraction, optional_float, run_or_exit


def build_parser() -> argparse.ArgumentParser:
    """The command line, with the same names and defaults as the MLproject entry point."""
    parser = cli.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", required=True, help="runs:/<get_data_run_id>/dataset or a local folder"
    )
    parser.add_argument(
        "--mean", type=optional_float, default=None, help="pixel mean on the 0-255 scale"
    )
    parser.add_argument(
        "--std", type=optional_float, default=None, help="pixel std on the 0-255 scale"
    )
    parser.add_argument(
        "--stats", default="", help="runs:/<explore_data_run_id>/stats.json for mean and std"
    )
    parser.add_argument(
        "--validation_fraction",
        type=fraction,
        default=0.1,
        help="share of each class of train kept for validation",
    )
    parser.add_argument(
        "--percentage",
        type=float,
        default=100.0,
        help="stratified percentage of the data to keep, for fast experiments",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of subset and split")
    return parser


def main() -> None:
    """Parse the command line and run the stage."""
    args = build_parser().parse_args()
    run_or_exit(preprocessing.run_preprocess, **vars(args))


if __name__ == "__main__":
    main()
