"""Test-set metrics computed from one prediction pass agree with Keras' evaluate."""

import keras
import numpy as np
import pytest

from mlpipe_vision import training


@pytest.mark.parametrize("num_classes", [2, 10])
def test_metrics_of_probabilities_match_evaluate(num_classes):
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).normal(size=(300, 6, 6, 1)).astype(np.float32)
    labels = np.random.default_rng(1).integers(0, num_classes, size=300)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(num_classes, activation="softmax"),
        ]
    )
    training.compile_model(model, "adam", 0.001, 10, num_classes)
    data = training.make_dataset(images, labels, num_classes, 64)

    expected = model.evaluate(data, verbose=0, return_dict=True)
    got = training.metrics_of_probabilities(labels, model.predict(data, verbose=0))

    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(float(value), rel=1e-5, abs=1e-6), name


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ((300, 300), None),
        ((1000, 299), "only 299 training images of class 'b' (fewer than 300 per class)"),
        ((0, 500), "only 0 training images of class 'a'"),
    ],
)
def test_small_data_warning_names_the_class_with_the_fewest_images(counts, expected):
    labels = np.repeat(np.arange(len(counts)), counts)
    warning = training.small_data_warning(labels, ["a", "b"])
    if expected is None:
        assert warning is None
    else:
        assert expected in warning
        assert "augment=true" in warning
