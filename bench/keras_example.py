"""A benchmark baseline, not part of the pipeline: the Keras examples' "Simple MNIST convnet".

`fit_keras_example` trains it with a plain `Model.fit` on a `preprocessed/` folder, for
`bench/learning_curve.py` and the slow tests in tests/slow/.
"""

from pathlib import Path

import keras

from mlpipe_vision import artifacts, images


def build_keras_example_network(image_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """The Keras examples' "Simple MNIST convnet": the baseline the default is measured against.

    Conv32 - pool - Conv64 - pool - flatten - dropout 0.5 - softmax, about 35,000 parameters
    for 28x28 images. The learning-curve benchmark and the small-data tests train it on the
    same arrays as the train stage, so the stage is compared with a plain Keras example
    measured in the same run, not with a number.
    """
    inputs = keras.Input(shape=tuple(image_shape), name="image")
    hidden = keras.layers.Conv2D(32, 3, activation="relu")(inputs)
    hidden = keras.layers.MaxPooling2D(2)(hidden)
    hidden = keras.layers.Conv2D(64, 3, activation="relu")(hidden)
    hidden = keras.layers.MaxPooling2D(2)(hidden)
    hidden = keras.layers.Flatten()(hidden)
    hidden = keras.layers.Dropout(0.5)(hidden)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32")(hidden)
    return keras.Model(inputs, outputs, name="keras_example_cnn")


def fit_keras_example(preprocessed_dir: Path, epochs: int, seed: int = 42) -> dict[str, float]:
    """Train the Keras example network as its example does, on a `preprocessed/` folder.

    The splits are read into memory and normalized with the folder's normalization; Adam at
    0.001, batch 64, `Model.fit` on the arrays, no early stopping.

    Returns:
        {"test_accuracy", "train_accuracy", "val_accuracy"} (the last two of the last epoch).
    """
    split_arrays, meta = artifacts.load_preprocessed(preprocessed_dir)
    normalized = {
        split: (images.normalize(pixels, meta["normalization"]), labels)
        for split, (pixels, labels) in split_arrays.items()
    }
    keras.utils.set_random_seed(seed)
    network = build_keras_example_network(tuple(meta["image_shape"]), len(meta["class_names"]))
    network.compile(
        optimizer=keras.optimizers.Adam(0.001),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = network.fit(
        *normalized["train"],
        batch_size=64,
        epochs=epochs,
        validation_data=normalized["validation"],
        verbose=0,
    )
    _, test_accuracy = network.evaluate(*normalized["test"], batch_size=256, verbose=0)
    return {
        "test_accuracy": float(test_accuracy),
        "train_accuracy": float(history.history["accuracy"][-1]),
        "val_accuracy": float(history.history["val_accuracy"][-1]),
    }
