"""Network builders: shapes, parameter counts, VGG16 preprocessing, and refusals."""

import keras
import numpy as np
import pytest
from keras.applications import vgg16

from mlpipe_vision import models
from mlpipe_vision.train_parameters import TrainParameters

GRAY_NORMALIZATION = {"mean": [72.9], "std": [90.0]}
RGB_NORMALIZATION = {"mean": [120.0, 110.0, 100.0], "std": [60.0, 50.0, 40.0]}


def cnn_parameter_count(image_shape, classes, convolutions, filters, dense_units) -> int:
    """Parameters of build_convolutional_network, counted by hand."""
    height, width, channels = image_shape
    total, inputs = 0, channels
    for index in range(convolutions):
        outputs = filters * 2**index
        total += 3 * 3 * inputs * outputs  # convolution without bias
        total += 4 * outputs  # batch norm: gamma, beta, moving mean and variance
        inputs = outputs
        height, width = height // 2, width // 2
    flat = height * width * inputs
    return total + flat * dense_units + dense_units + dense_units * classes + classes


@pytest.mark.parametrize(
    ("image_shape", "classes", "convolutions", "filters", "dense_units"),
    [
        ((28, 28, 1), 10, 3, 32, 128),
        ((28, 28, 1), 10, 1, 8, 16),
        ((32, 32, 3), 2, 5, 4, 8),
        ((20, 36, 1), 5, 2, 16, 32),
    ],
)
def test_cnn_shapes_and_parameter_count(image_shape, classes, convolutions, filters, dense_units):
    model = models.build_convolutional_network(
        image_shape, classes, convolutions, filters, dense_units, 0.3
    )
    assert model.input_shape == (None, *image_shape)
    assert model.output_shape == (None, classes)
    assert model.count_params() == cnn_parameter_count(
        image_shape, classes, convolutions, filters, dense_units
    )
    probabilities = model.predict_on_batch(np.zeros((3, *image_shape), dtype=np.float32))
    assert probabilities.shape == (3, classes)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_default_network_is_the_measured_one():
    model = models.build_convolutional_network((28, 28, 1), 10)
    assert model.name == "cnn_3x48"
    assert model.count_params() == cnn_parameter_count((28, 28, 1), 10, 3, 48, 256) == 654_330


@pytest.mark.parametrize(
    ("image_shape", "convolutions", "most"),
    [((28, 28, 1), 5, 4), ((8, 8, 1), 4, 3), ((64, 16, 3), 5, 4), ((1, 1, 1), 1, 0)],
)
def test_more_blocks_than_the_image_allows_are_refused(image_shape, convolutions, most):
    with pytest.raises(ValueError, match=rf"convolutions={convolutions} needs .* at most {most}"):
        models.build_convolutional_network(image_shape, 10, convolutions)


@pytest.mark.parametrize(("image_shape", "convolutions"), [((28, 28, 1), 4), ((16, 16, 1), 4)])
def test_as_many_blocks_as_the_image_allows_are_built(image_shape, convolutions):
    model = models.build_convolutional_network(image_shape, 10, convolutions, conv_filters=4)
    assert model.output_shape == (None, 10)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"conv_filters": 0}, "conv_filters must be a positive count, got 0"),
        ({"dense_units": -1}, "dense_units must be a positive count, got -1"),
        ({"dropout_rate": 1.0}, r"dropout_rate must be in \[0, 1\), got 1.0"),
        ({"convolutions": 0}, "needs convolutions >= 1, got 0"),
    ],
)
def test_bad_cnn_hyperparameters_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        models.build_convolutional_network((28, 28, 1), 10, **arguments)


def test_one_class_is_refused():
    with pytest.raises(ValueError, match="at least 2 classes, got 1"):
        models.build_convolutional_network((28, 28, 1), 1)


def test_vgg16_on_small_grayscale_images():
    model = models.build_vgg16_transfer(
        (28, 28, 1), 10, GRAY_NORMALIZATION, weights="none", dense_units=128
    )
    base = model.get_layer("vgg16")
    assert model.input_shape == (None, 28, 28, 1)
    assert model.output_shape == (None, 10)
    assert base.input_shape == (None, 32, 32, 3)
    assert not base.trainable
    head = 512 * 128 + 128 + 128 * 10 + 10
    assert sum(int(np.prod(weight.shape)) for weight in model.trainable_weights) == head
    probabilities = model.predict_on_batch(np.zeros((2, 28, 28, 1), dtype=np.float32))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_vgg16_keeps_images_that_are_large_enough():
    model = models.build_vgg16_transfer((40, 48, 3), 2, RGB_NORMALIZATION, weights="none")
    assert model.get_layer("vgg16").input_shape == (None, 40, 48, 3)
    assert "upsize" not in [layer.name for layer in model.layers]


@pytest.mark.parametrize(
    ("image_shape", "normalization"),
    [((20, 20, 1), GRAY_NORMALIZATION), ((36, 36, 3), RGB_NORMALIZATION)],
)
def test_vgg16_input_follows_preprocess_input(image_shape, normalization):
    rng = np.random.default_rng(0)
    normalized = rng.normal(size=(2, *image_shape)).astype(np.float32)
    inputs = keras.Input(shape=image_shape)
    pixels_model = keras.Model(
        inputs, models.vgg16_input_pixels(inputs, image_shape, normalization)
    )
    pixels = normalized * np.float32(normalization["std"]) + np.float32(normalization["mean"])
    if image_shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    size = (max(image_shape[0], 32), max(image_shape[1], 32))
    pixels = keras.ops.convert_to_numpy(keras.ops.image.resize(pixels, size))
    expected = vgg16.preprocess_input(pixels.copy())
    np.testing.assert_allclose(pixels_model.predict_on_batch(normalized), expected, atol=1e-3)


def test_fine_tuning_unfreezes_only_the_top_block():
    model = models.build_vgg16_transfer((32, 32, 3), 2, RGB_NORMALIZATION, weights="none")
    assert models.unfreeze_top_block(model) == 4
    base = model.get_layer("vgg16")
    trainable = {layer.name for layer in base.layers if layer.trainable}
    assert trainable == {"block5_conv1", "block5_conv2", "block5_conv3", "block5_pool"}
    assert len(model.trainable_weights) == 6 + 4  # three convolutions + the head's two Dense


def test_a_weights_file_is_loaded(tmp_path):
    source = models.build_vgg16_transfer((32, 32, 3), 2, RGB_NORMALIZATION, weights="none")
    weights_path = tmp_path / "vgg16_notop.weights.h5"
    source.get_layer("vgg16").save_weights(weights_path)
    loaded = models.build_vgg16_transfer((32, 32, 3), 2, RGB_NORMALIZATION, str(weights_path))
    for expected, actual in zip(
        source.get_layer("vgg16").get_weights(),
        loaded.get_layer("vgg16").get_weights(),
        strict=True,
    ):
        np.testing.assert_array_equal(expected, actual)


@pytest.mark.parametrize(
    ("image_shape", "normalization", "weights", "message"),
    [
        ((32, 32, 2), {"mean": [1, 1], "std": [1, 1]}, "none", "grayscale or RGB images, got 2"),
        ((32, 32, 3), GRAY_NORMALIZATION, "none", "does not have one mean and std"),
        ((32, 32, 3), RGB_NORMALIZATION, "/no/such/file.h5", "not an existing file"),
    ],
)
def test_vgg16_refusals(image_shape, normalization, weights, message):
    with pytest.raises(ValueError, match=message):
        models.build_vgg16_transfer(image_shape, 2, normalization, weights)


def test_unfreezing_a_cnn_is_refused():
    model = models.build_convolutional_network((28, 28, 1), 10)
    with pytest.raises(ValueError, match="has no VGG16 base"):
        models.unfreeze_top_block(model)


def test_build_network_refuses_negative_convolutions():
    with pytest.raises(ValueError, match="convolutions must be 0 .VGG16. or a positive count"):
        models.build_network((28, 28, 1), 3, GRAY_NORMALIZATION, -1, 32, 16, 0.2, "none")


def test_build_network_picks_vgg16_for_zero_convolutions():
    vgg = models.build_network((28, 28, 1), 3, GRAY_NORMALIZATION, 0, 32, 16, 0.2, "none")
    cnn = models.build_network((28, 28, 1), 3, GRAY_NORMALIZATION, 2, 8, 16, 0.2, "none")
    assert (vgg.name, cnn.name) == ("vgg16_transfer", "cnn_2x8")


VALID = {
    "convolutions": 3,
    "conv_filters": 32,
    "dense_units": 128,
    "dropout_rate": 0.3,
    "epochs": 1,
    "batch_size": 64,
    "learning_rate": 0.001,
    "optimizer": "adam",
    "early_stopping_patience": 3,
    "weights": "imagenet",
    "fine_tune_epochs": 0,
}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": 0}, "epochs must be at least 1, got 0"),
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"learning_rate": 0.0}, "learning_rate must be a positive number, got 0.0"),
        ({"optimizer": "adagrad"}, "unknown optimizer 'adagrad'; expected one of adam"),
        ({"fine_tune_epochs": 2}, "fine_tune_epochs=2 fine-tunes VGG16's top block"),
        ({"convolutions": -1}, "convolutions must be at least 0, got -1"),
        ({"convolutions": 0, "weights": "missing.h5"}, "not an existing file"),
        ({"mixed_precision": "yes"}, "mixed_precision must be one of auto, true, false, got 'yes'"),
    ],
)
def test_impossible_train_parameters_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainParameters(**{**VALID, **changes}).check()


def test_valid_train_parameters_pass():
    TrainParameters(**VALID).check()
    TrainParameters(**{**VALID, "convolutions": 0, "fine_tune_epochs": 2}).check()


@pytest.fixture
def mixed_precision_policy():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize(
    ("image_shape", "convolutions", "normalization"),
    [((28, 28, 1), 2, GRAY_NORMALIZATION), ((32, 32, 3), 0, RGB_NORMALIZATION)],
)
def test_as_float32_turns_a_mixed_precision_network_into_float32_with_the_same_weights(
    mixed_precision_policy, image_shape, convolutions, normalization
):
    mixed = models.build_network(image_shape, 5, normalization, convolutions, 8, 16, 0.1, "none")
    assert mixed.get_layer("dense").compute_dtype == "float16"
    keras.mixed_precision.set_global_policy("float32")
    converted = models.as_float32(mixed)
    assert {layer.dtype_policy.name for layer in converted._flatten_layers()} == {"float32"}
    for before, after in zip(mixed.get_weights(), converted.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    images = np.random.default_rng(0).normal(size=(4, *image_shape)).astype(np.float32)
    float32_answer = converted(images, training=False)
    assert float32_answer.dtype == "float32"
    # float16 compute keeps about three significant digits.
    np.testing.assert_allclose(float32_answer, mixed(images, training=False), atol=2e-3)


def test_as_float32_leaves_a_float32_network_alone():
    network = models.build_network((28, 28, 1), 3, GRAY_NORMALIZATION, 1, 4, 8, 0.0, "none")
    assert models.as_float32(network) is network
