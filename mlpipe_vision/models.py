"""Network builders: shapes and hyperparameters in, an uncompiled Keras model out.

Every network takes normalized float32 images (N, H, W, C) (training normalizes the uint8
shards the preprocess stage writes as it reads them) and returns softmax probabilities
(N, classes). Nothing here trains, logs or touches
files; `mlpipe_vision.training` compiles and fits what these functions build.
"""

import keras
from keras.applications import vgg16

from mlpipe_vision.train_parameters import vgg16_weights

# VGG16's five pooling stages need at least 32x32 pixels.
VGG16_MIN_SIZE = 32
VGG16_TOP_BLOCK = "block5"
BATCH_NORM_MOMENTUM = 0.9


def check_convolutions_fit(image_shape: tuple[int, int, int], convolutions: int) -> None:
    """Refuse more convolution blocks than the image size allows.

    Each block halves height and width with a 2x2 max pooling, so `n` blocks need images of
    at least 2**n pixels on each side.

    Args:
        image_shape: (height, width, channels).
        convolutions: Number of convolution blocks.

    Raises:
        ValueError: If the last block would get an empty feature map.
    """
    height, width = image_shape[0], image_shape[1]
    if 2**convolutions > min(height, width):
        most = max(min(height, width).bit_length() - 1, 0)
        raise ValueError(
            f"convolutions={convolutions} needs images of at least {2**convolutions}x"
            f"{2**convolutions} pixels (each block halves the size), but the images are "
            f"{height}x{width}; use at most {most} block(s)"
        )


def check_head(num_classes: int, dense_units: int, dropout_rate: float) -> None:
    """Refuse impossible values for the classifier head.

    Raises:
        ValueError: Naming the bad value and the valid range.
    """
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    if dense_units < 1:
        raise ValueError(f"dense_units must be a positive count, got {dense_units}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")


def classifier_head(
    features: keras.KerasTensor, num_classes: int, dense_units: int, dropout_rate: float
) -> keras.KerasTensor:
    """Dense layer, dropout and a float32 softmax (float32 also under mixed precision)."""
    hidden = keras.layers.Dense(dense_units, activation="relu", name="dense")(features)
    hidden = keras.layers.Dropout(dropout_rate, name="dropout")(hidden)
    return keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="probabilities"
    )(hidden)


def convolution_block(inputs: keras.KerasTensor, filters: int, index: int) -> keras.KerasTensor:
    """A 3x3 convolution with batch normalization and ReLU, then 2x2 max pooling."""
    name = f"block{index}"
    hidden = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(
        inputs
    )
    # Keras' default momentum (0.99) leaves the moving statistics, which inference uses,
    # far from the batch statistics for the first few hundred steps: on a few thousand
    # images validation accuracy lagged training accuracy by 20 points or more. 0.9
    # follows the batches within a few dozen steps, and full-size data is unaffected.
    hidden = keras.layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=f"{name}_bn")(
        hidden
    )
    hidden = keras.layers.Activation("relu", name=f"{name}_relu")(hidden)
    return keras.layers.MaxPooling2D(2, name=f"{name}_pool")(hidden)


def build_convolutional_network(
    image_shape: tuple[int, int, int],
    num_classes: int,
    convolutions: int = 3,
    conv_filters: int = 48,
    dense_units: int = 256,
    dropout_rate: float = 0.4,
) -> keras.Model:
    """A small CNN: `convolutions` blocks, the first with `conv_filters` filters, doubling.

    Args:
        image_shape: (height, width, channels) of the normalized input images.
        num_classes: Number of classes (width of the softmax).
        convolutions: Number of convolution blocks (each halves height and width).
        conv_filters: Filters of the first block; every further block doubles them.
        dense_units: Units of the hidden dense layer.
        dropout_rate: Dropout before and after the hidden dense layer.

    Returns:
        The uncompiled model.

    Raises:
        ValueError: For impossible combinations, e.g. too many blocks for the image size.
    """
    if convolutions < 1:
        raise ValueError(f"a convolutional network needs convolutions >= 1, got {convolutions}")
    if conv_filters < 1:
        raise ValueError(f"conv_filters must be a positive count, got {conv_filters}")
    check_convolutions_fit(image_shape, convolutions)
    check_head(num_classes, dense_units, dropout_rate)
    inputs = keras.Input(shape=tuple(image_shape), name="image")
    hidden = inputs
    for index in range(1, convolutions + 1):
        hidden = convolution_block(hidden, conv_filters * 2 ** (index - 1), index)
    hidden = keras.layers.Flatten(name="flatten")(hidden)
    hidden = keras.layers.Dropout(dropout_rate, name="features_dropout")(hidden)
    outputs = classifier_head(hidden, num_classes, dense_units, dropout_rate)
    return keras.Model(inputs, outputs, name=f"cnn_{convolutions}x{conv_filters}")


def vgg16_input_pixels(
    inputs: keras.KerasTensor, image_shape: tuple[int, int, int], normalization: dict
) -> keras.KerasTensor:
    """Undo the normalization, make 3 channels and at least 32x32, apply vgg16 preprocessing.

    `vgg16.preprocess_input` expects RGB pixels on the 0-255 scale (it flips to BGR and
    subtracts the ImageNet means), so the preprocess stage's (x - mean) / std is inverted
    first. All steps are Keras layers or ops, so the saved model needs no custom code.
    """
    height, width, channels = image_shape
    std = [float(value) for value in normalization["std"]]
    pixels = keras.layers.Normalization(
        mean=normalization["mean"],
        variance=[value**2 for value in std],
        invert=True,
        name="to_pixels",
    )(inputs)
    if channels == 1:
        pixels = keras.layers.Concatenate(name="gray_to_rgb")([pixels, pixels, pixels])
    if height < VGG16_MIN_SIZE or width < VGG16_MIN_SIZE:
        pixels = keras.layers.Resizing(
            max(height, VGG16_MIN_SIZE), max(width, VGG16_MIN_SIZE), name="upsize"
        )(pixels)
    return vgg16.preprocess_input(pixels)


def build_vgg16_transfer(
    image_shape: tuple[int, int, int],
    num_classes: int,
    normalization: dict,
    weights: str = "imagenet",
    dense_units: int = 256,
    dropout_rate: float = 0.4,
) -> keras.Model:
    """VGG16 transfer learning: a frozen VGG16 base and a new classifier head.

    Args:
        image_shape: (height, width, channels) of the normalized images; 1 or 3 channels.
        num_classes: Number of classes.
        normalization: {"mean": [...], "std": [...]} per channel on the 0-255 scale, as in
            the preprocessed meta.json; the model undoes it before VGG16's own preprocessing.
        weights: "imagenet", "none" (random initialization) or a weights file path.
        dense_units: Units of the hidden dense layer of the head.
        dropout_rate: Dropout after that layer.

    Returns:
        The uncompiled model; its base layer is named "vgg16" and is frozen.

    Raises:
        ValueError: For a channel count VGG16 cannot take, bad weights or a failed download.
    """
    height, width, channels = image_shape
    if channels not in (1, 3):
        raise ValueError(f"VGG16 takes grayscale or RGB images, got {channels} channels")
    if len(normalization["mean"]) != channels or len(normalization["std"]) != channels:
        raise ValueError(
            f"the normalization {normalization} does not have one mean and std for each of the "
            f"{channels} channel(s)"
        )
    check_head(num_classes, dense_units, dropout_rate)
    keras_weights = vgg16_weights(weights)
    inputs = keras.Input(shape=tuple(image_shape), name="image")
    pixels = vgg16_input_pixels(inputs, image_shape, normalization)
    try:
        base = vgg16.VGG16(
            include_top=False, weights=keras_weights, input_shape=tuple(pixels.shape[1:])
        )
    except Exception as error:  # Keras raises a bare Exception when the download fails.
        raise ValueError(
            f"could not load VGG16 weights {weights!r} ({str(error).strip().splitlines()[0]}); "
            "without internet pass weights=none or the path of "
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
        ) from error
    base.trainable = False
    # training=False keeps the base in inference mode even while its top block is fine-tuned.
    features = base(pixels, training=False)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    outputs = classifier_head(features, num_classes, dense_units, dropout_rate)
    return keras.Model(inputs, outputs, name="vgg16_transfer")


def unfreeze_top_block(model: keras.Model) -> int:
    """Make VGG16's last convolution block trainable for fine-tuning, keep the rest frozen.

    Args:
        model: A model built by `build_vgg16_transfer`.

    Returns:
        The number of VGG16 layers now trainable.

    Raises:
        ValueError: If the model has no VGG16 base.
    """
    try:
        base = model.get_layer("vgg16")
    except ValueError:
        raise ValueError(f"model {model.name!r} has no VGG16 base to fine-tune") from None
    base.trainable = True
    for layer in base.layers:
        layer.trainable = layer.name.startswith(VGG16_TOP_BLOCK)
    return sum(1 for layer in base.layers if layer.trainable)


def build_network(
    image_shape: tuple[int, int, int],
    num_classes: int,
    normalization: dict,
    convolutions: int,
    conv_filters: int,
    dense_units: int,
    dropout_rate: float,
    weights: str,
) -> keras.Model:
    """Build the network the train parameters ask for.

    `convolutions` > 0 builds `build_convolutional_network`; 0 builds `build_vgg16_transfer`.
    The other arguments are those functions' arguments.

    Returns:
        The uncompiled model.

    Raises:
        ValueError: For impossible combinations, naming the bad value.
    """
    if convolutions < 0:
        raise ValueError(f"convolutions must be 0 (VGG16) or a positive count, got {convolutions}")
    if convolutions == 0:
        return build_vgg16_transfer(
            image_shape, num_classes, normalization, weights, dense_units, dropout_rate
        )
    return build_convolutional_network(
        image_shape, num_classes, convolutions, conv_filters, dense_units, dropout_rate
    )


def as_float32(model: keras.Model) -> keras.Model:
    """The same network computing in float32, for serving where there is no GPU.

    A network trained under mixed precision keeps float32 weights but records a
    `mixed_float16` policy in every layer, so once loaded on a CPU it would compute in
    float16 there: slower, and its answers would differ from a float32 network's. The
    policies are rewritten in the model's config and the weights copied over unchanged.

    Args:
        model: A Keras model, mixed precision or not.

    Returns:
        `model` itself when every layer already computes in float32, else a float32 copy.
    """
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in model._flatten_layers()):
        return model
    rebuilt = model.__class__.from_config(_float32_config(model.get_config()))
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _float32_config(config: object) -> object:
    """Rewrite a model config's dtype policies and float16 tensor dtypes to float32."""
    if isinstance(config, list):
        return [_float32_config(item) for item in config]
    if not isinstance(config, dict):
        return config
    if config.get("class_name") == "DTypePolicy":
        return {**config, "config": {**config["config"], "name": "float32"}}
    return {
        key: "float32"
        if key == "dtype" and value in ("float16", "bfloat16")
        else _float32_config(value)
        for key, value in config.items()
    }
