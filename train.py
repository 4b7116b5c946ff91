"""train: train a Keras classifier on a preprocessed dataset and log it to MLflow.

Reads:  data, the `preprocessed/` URI of a preprocess run (or a local folder).
Logs:   per-epoch loss and accuracy for train and validation (val_*), for two classes also
        auc, precision and recall, each with step=epoch; test_* metrics and best_epoch;
        model_summary.txt, confusion_matrix.json, plots/learning_curves.png,
        plots/confusion_matrix.png, plots/misclassified.png; the Keras model at `model/`
        with a signature and an input example. Tags the run with the input URI.
Next:   mlflow run . -e package -P model=runs:/<this run>/model --env-manager local

    python train.py --data runs:/<preprocess_run_id>/preprocessed --epochs 1
    python train.py --data runs:/<preprocess_run_id>/preprocessed --convolutions 0 --weights none

convolutions > 0 builds that many convolution blocks (two 3x3 convolutions with batch
normalization and 2x2 max pooling; conv_filters in the first, doubling); convolutions=0
builds VGG16 transfer learning (frozen base, optional fine-tuning of its top block).
"""

import argparse

from mlpipe_vision import cli, train_parameters
from mlpipe_vision.cli import run_or_exit, str_to_bool
from mlpipe_vision.console import native_stderr_silenced


def build_parser() -> argparse.ArgumentParser:
    """The command line: `data` and every field of TrainParameters, as in MLproject."""
    parser = cli.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        required=True,
        help="runs:/<preprocess_run_id>/preprocessed or a local preprocessed/ folder",
    )
    for field in train_parameters.fields():
        parser.add_argument(
            f"--{field.name}",
            type=str_to_bool if field.type is bool else field.type,
            default=field.default,
            help=field.metadata["help"],
        )
    return parser


def main() -> None:
    """Parse the command line and run the stage."""
    args = vars(build_parser().parse_args())
    data = args.pop("data")
    with native_stderr_silenced():
        from mlpipe_vision import training
    parameters = train_parameters.TrainParameters(**args)
    run_or_exit(training.run_train, data=data, parameters=parameters)


if __name__ == "__main__":
    main()
