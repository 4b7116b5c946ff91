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

from mlpipe_vision.cli import native_stderr_silenced, run_or_exit, str_to_bool


def build_parser() -> argparse.ArgumentParser:
    """The command line, with the same names and defaults as the MLproject entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        required=True,
        help="runs:/<preprocess_run_id>/preprocessed or a local preprocessed/ folder",
    )
    parser.add_argument(
        "--convolutions",
        type=int,
        default=3,
        help="convolution blocks, each halving the image size; 0 = VGG16 transfer learning",
    )
    parser.add_argument(
        "--conv_filters", type=int, default=48, help="filters of the first block (doubling)"
    )
    parser.add_argument("--dense_units", type=int, default=256, help="units of the dense layer")
    parser.add_argument("--dropout_rate", type=float, default=0.4, help="dropout in [0, 1)")
    parser.add_argument(
        "--epochs", type=int, default=10, help="epochs (VGG16: with the base frozen)"
    )
    parser.add_argument("--batch_size", type=int, default=64, help="training batch size")
    parser.add_argument(
        "--learning_rate", type=float, default=0.001, help="learning rate of the optimizer"
    )
    parser.add_argument(
        "--optimizer", default="adam", help="adam, adamw, sgd (Nesterov momentum) or rmsprop"
    )
    parser.add_argument(
        "--augment",
        type=str_to_bool,
        default=False,
        help="random flips and shifts that suit the dataset (true/false)",
    )
    parser.add_argument(
        "--early_stopping_patience",
        type=int,
        default=3,
        help="stop after this many epochs without a better val_loss, keep the best; 0 = off",
    )
    parser.add_argument(
        "--seed", type=int, default=42, help="seed of weights, shuffling and augmentation"
    )
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="VGG16 only: imagenet, none, or the path of a weights file",
    )
    parser.add_argument(
        "--fine_tune_epochs",
        type=int,
        default=0,
        help="VGG16 only: epochs that also train its top block, at a tenth of the rate",
    )
    parser.add_argument(
        "--mixed_precision",
        default="auto",
        help="float16 compute with float32 weights: auto (where there is a GPU), true or false",
    )
    return parser


def main() -> None:
    """Parse the command line and run the stage."""
    args = build_parser().parse_args()
    with native_stderr_silenced():
        from mlpipe_vision import training
    run_or_exit(training.run_train, **vars(args))


if __name__ == "__main__":
    main()
