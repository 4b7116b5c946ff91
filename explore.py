"""explore_data: statistics and plots of a dataset.

Reads:  data, the `dataset/` URI of a get_data run.
Logs:   stats.json (per split: count and class counts; train split: pixel mean, std, min,
        max, per channel where there are channels), metrics mean and std, and the plots
        plots/samples.png, plots/class_balance.png, plots/pixel_histogram.png.
Next:   mlflow run . -e preprocess -P data=<same URI> -P stats=runs:/<this run>/stats.json

    python explore.py --data runs:/<get_data_run_id>/dataset
"""

import argparse

from mlpipe_vision import cli, stats
from mlpipe_vision.cli import run_or_exit


def build_parser() -> argparse.ArgumentParser:
    """The command line, with the same names as the MLproject entry point."""
    parser = cli.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", required=True, help="runs:/<get_data_run_id>/dataset or a local folder"
    )
    return parser


def main() -> None:
    """Parse the command line and run the stage."""
    args = build_parser().parse_args()
    run_or_exit(stats.run_explore, **vars(args))


if __name__ == "__main__":
    main()
