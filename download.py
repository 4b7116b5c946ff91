"""get_data: load a dataset and log it as the `dataset/` artifact.

Reads:  a dataset name (mnist, fashion_mnist, malaria, image_dir) and an optional source
        (a local folder or a mirror URL; for image_dir, the folder of class subfolders).
Logs:   dataset/ (train.npz, test.npz, meta.json with class names, image shape, source and
        the SHA-256 of every source file), the train split as an MLflow dataset input.
Next:   mlflow run . -e explore_data -P data=runs:/<this run>/dataset --env-manager local

    python download.py --dataset fashion_mnist
    python download.py --dataset image_dir --source ~/cell_images --image_size 64
"""

import argparse

from mlpipe_vision import cli, datasets
from mlpipe_vision.cli import optional_int, run_or_exit, str_to_bool


def build_parser() -> argparse.ArgumentParser:
    """The command line, with the same names and defaults as the MLproject entry point."""
    parser = cli.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset", default="fashion_mnist", help=f"one of {', '.join(datasets.DATASET_NAMES)}"
    )
    parser.add_argument(
        "--source",
        default="",
        help="folder or mirror URL holding the files (default: cache, system copies, "
        "official mirrors); for image_dir the folder of class subfolders",
    )
    parser.add_argument(
        "--verify",
        type=str_to_bool,
        default=True,
        help="refuse IDX files whose SHA-256 differs from the official one (default: true)",
    )
    parser.add_argument(
        "--image_size", type=int, default=100, help="square size for malaria/image_dir"
    )
    parser.add_argument(
        "--channels",
        type=optional_int,
        default=None,
        help="1 or 3 for malaria/image_dir; 0 decides from the images",
    )
    parser.add_argument(
        "--test_fraction", type=float, default=0.2, help="held-out test share (malaria/image_dir)"
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of the test split")
    parser.add_argument("--data_dir", default="", help="TFDS data folder for malaria")
    return parser


def main() -> None:
    """Parse the command line and run the stage."""
    args = build_parser().parse_args()
    run_or_exit(datasets.run_get_data, **vars(args))


if __name__ == "__main__":
    main()
