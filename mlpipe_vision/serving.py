"""The server's side of the served model: request decoding and prediction tables.

The packaged pyfunc calls `images_from_request` on whatever MLflow hands its `predict`,
normalizes the batch and calls the network, then answers with `format_predictions`. The
client's side (request bodies, curl lines) is `mlpipe_vision.request_bodies`, which fits
pixels with this module's `prepare_images`, so the model accepts exactly what it writes.
PNG/JPEG bytes go through `mlpipe_vision.images` (`decode_image`, then `fit_image` with
`invert="auto"`), the same functions that built the training data.

What `predict` receives from `mlflow models serve` (MLflow 3.17.2, model saved without
an input schema) for each JSON body:

- `dataframe_split` / `dataframe_records`: a pandas DataFrame (split columns keep their
  JSON type, usually int; records columns are str).
- `inputs` / `instances` holding nested lists: a numpy array; holding an object
  (`{"image": [...]}`) or a list of objects: a dict of numpy arrays.

Two limits protect the server, read from the environment when the model loads
(`RequestLimits.from_environment`): at most MLPIPE_MAX_REQUEST_IMAGES images per request
(default 1000), and no encoded image that would decode to more than MLPIPE_MAX_IMAGE_PIXELS
pixels (default 25,000,000, a 6000x4000 photo's worth); the size is read from the image's
header before anything is decoded. Pillow itself opens no image over about 179 million
pixels, so a larger MLPIPE_MAX_IMAGE_PIXELS has no effect.

Every refusal raises `InvalidRequestError`, a `ValueError` that is also an `MlflowException`
with error code BAD_REQUEST, so the scoring server answers HTTP 400 with its message.
"""

import base64
import binascii
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST
from PIL import Image

from mlpipe_vision.images import decode_image, fit_image, image_size

IMAGE_COLUMN = "image"
PROBABILITY_PREFIX = "p_"
MAX_IMAGES_VARIABLE = "MLPIPE_MAX_REQUEST_IMAGES"
MAX_PIXELS_VARIABLE = "MLPIPE_MAX_IMAGE_PIXELS"


class InvalidRequestError(MlflowException, ValueError):
    """A request the model cannot read; `mlflow models serve` answers it with HTTP 400.

    The scoring server turns an `MlflowException` raised in `predict` into a response
    with the exception's message and the HTTP status of its error code (BAD_REQUEST is
    400). Being a `ValueError` too, it can be caught like any other bad-value error.
    """

    def __init__(self, message: str):
        super().__init__(message, error_code=BAD_REQUEST)


@dataclass(frozen=True)
class RequestLimits:
    """How much one request may ask of the server.

    Attributes:
        max_images: Images in one request, in any layout.
        max_image_pixels: Width x height of one encoded image, read from its header
            before it is decoded (a 0.4 MB PNG can decode to 400 MB of pixels).
    """

    max_images: int = 1000
    max_image_pixels: int = 25_000_000

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> "RequestLimits":
        """Read the limits from MLPIPE_MAX_REQUEST_IMAGES and MLPIPE_MAX_IMAGE_PIXELS.

        Raises:
            ValueError: If a variable is set to anything but a positive whole number.
        """
        defaults = cls()
        values = {}
        for field, variable in (
            ("max_images", MAX_IMAGES_VARIABLE),
            ("max_image_pixels", MAX_PIXELS_VARIABLE),
        ):
            text = environ.get(variable, "").strip().replace("_", "")
            if not text:
                values[field] = getattr(defaults, field)
            elif text.isascii() and text.isdigit() and int(text) > 0:
                values[field] = int(text)
            else:
                raise ValueError(
                    f"{variable}={environ[variable]!r} is not a positive whole number; "
                    f"unset it for the default {getattr(defaults, field)}"
                )
        return cls(**values)

    def check_count(self, count: int) -> None:
        """Refuse a request of more than `max_images` images, before any is converted."""
        if count > self.max_images:
            raise InvalidRequestError(
                f"the request holds {count} images; at most {self.max_images} are accepted "
                f"in one request (the server's {MAX_IMAGES_VARIABLE}); send smaller batches"
            )

    def check_pixels(self, data: bytes, name: str) -> None:
        """Refuse an encoded image larger than `max_image_pixels`, from its header alone."""
        try:
            size = image_size(data, name)
        except ValueError as error:
            raise InvalidRequestError(str(error)) from None
        if size is None:
            shown = f"has more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels"
        elif size[0] * size[1] > self.max_image_pixels:
            shown = f"is {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels"
        else:
            return
        raise InvalidRequestError(
            f"{name} {shown}; at most {self.max_image_pixels:,} are decoded (the server's "
            f"{MAX_PIXELS_VARIABLE}); scale the image down before sending it"
        )


DEFAULT_LIMITS = RequestLimits()


def images_from_request(
    model_input: Any, image_shape: Sequence[int], limits: RequestLimits = DEFAULT_LIMITS
) -> np.ndarray:
    """Turn what a served model's `predict` receives into a batch of raw images.

    Accepted layouts, for an image shape (H, W, C):

    - DataFrame of H rows x W columns: one grayscale image (the workshop's request; C=1).
    - DataFrame of N rows x H*W*C columns: N flattened images.
    - DataFrame with the single column "image": N base64-encoded PNG/JPEG images.
    - Array (H, W) or (N, H, W) when C=1, (H, W, C), (N, H, W, C), (H*W*C,) or
      (N, H*W*C); a 1-D array of base64 strings; a dict with the single key "image"
      holding any of these.

    Pixel columns must be named by their position (0, 1, ... as int or str, or
    pixel0, pixel1, ...) and are put in that order. Pixel values are raw 0-255; the model
    normalizes them. Encoded images may have any size and colour mode: they are decoded,
    converted to C channels, fitted into H x W with aspect-preserving padding and
    inverted when their background is light.

    Args:
        model_input: A pandas DataFrame, numpy array, list or dict of arrays.
        image_shape: The model's input (H, W, C).
        limits: The most images per request and pixels per encoded image.

    Returns:
        float32 array (N, H, W, C) of raw pixel values from 0 to 255.

    Raises:
        InvalidRequestError: If the input is empty, has an unknown column, the wrong shape or
            number of columns, non-numeric, NaN, infinite or out-of-range values, an
            image that is not valid base64 or not a readable image, or more than `limits`
            allow; the message says what was received and what was expected.
    """
    height, width, channels = (int(size) for size in image_shape)
    shape = (height, width, channels)
    if isinstance(model_input, pd.DataFrame):
        return _images_from_table(model_input, shape, limits)
    if isinstance(model_input, dict):
        return _images_from_dict(model_input, shape, limits)
    if isinstance(model_input, (np.ndarray, list, tuple)):
        return _images_from_array(model_input, shape, limits)
    raise InvalidRequestError(
        f"got input of type {type(model_input).__name__}; expected a table "
        f"(dataframe_split or dataframe_records) of {_expected_layouts(shape)}, or a tensor "
        f"(inputs or instances) of shape {_expected_array_shapes(shape)}"
    )


def prepare_images(
    encoded_images: Sequence[bytes],
    image_shape: Sequence[int],
    names: Sequence[str] = (),
    limits: RequestLimits | None = None,
) -> np.ndarray:
    """Decode PNG/JPEG bytes and fit them to the model's input, as for training data.

    Args:
        encoded_images: One bytes object per image, in any format OpenCV reads.
        image_shape: The model's input (H, W, C).
        names: What to call each image in an error message (file names); defaults to
            "image 0", "image 1", ...
        limits: The served model's limits, whose pixel limit is checked before anything
            is decoded; None (on the client side) decodes any size.

    Returns:
        uint8 array (N, H, W, C), inverted where the background was light.

    Raises:
        InvalidRequestError: If there is no image, one is empty or not a readable image, or
            one is larger than `limits` allow.
    """
    height, width, channels = (int(size) for size in image_shape)
    if len(encoded_images) == 0:
        raise InvalidRequestError("the request holds no images; expected at least one")
    names = list(names) or [f"image {index}" for index in range(len(encoded_images))]
    if limits is not None:
        for data, name in zip(encoded_images, names, strict=True):
            limits.check_pixels(data, name)
    fitted = []
    for data, name in zip(encoded_images, names, strict=True):
        try:
            image = decode_image(data, name)
        except ValueError as error:
            raise InvalidRequestError(str(error)) from None
        fitted.append(fit_image(image, height, width, channels, invert="auto"))
    return np.stack(fitted)


def format_predictions(probabilities: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """Build the answer: one row per image with the class and every class probability.

    Args:
        probabilities: Array (N, K) of class probabilities (softmax outputs).
        class_names: The K class names, in class id order.

    Returns:
        DataFrame with columns class_id (int), class_name (str), probability (of that
        class) and one column per class named by `probability_columns`.

    Raises:
        ValueError: If the probabilities are not (N, K) with K class names.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(class_names):
        raise ValueError(
            f"probabilities have shape {probabilities.shape}; expected (N, {len(class_names)}) "
            f"for {len(class_names)} class names"
        )
    class_ids = probabilities.argmax(axis=1)
    columns = {
        "class_id": class_ids.astype(np.int64),
        "class_name": [str(class_names[class_id]) for class_id in class_ids],
        "probability": probabilities[np.arange(len(probabilities)), class_ids],
    }
    columns.update(zip(probability_columns(class_names), probabilities.T, strict=True))
    return pd.DataFrame(columns)


def probability_columns(class_names: Sequence[str]) -> list[str]:
    """Name one column per class: "p_" and the class name made identifier-safe.

    Runs of characters other than letters, digits and "_" become "_" ("T-shirt/top" ->
    "p_T_shirt_top", "0" -> "p_0"), so the names work as JSON keys, jq paths, pandas
    attributes and Spark columns alike. A name that collides with an earlier one gets
    its class id appended.

    Args:
        class_names: The class names, in class id order.

    Returns:
        One unique column name per class.
    """
    columns: list[str] = []
    for class_id, class_name in enumerate(class_names):
        safe_name = re.sub(r"\W+", "_", str(class_name), flags=re.ASCII).strip("_")
        column = f"{PROBABILITY_PREFIX}{safe_name or class_id}"
        if column in columns:
            column = f"{column}_{class_id}"
        columns.append(column)
    return columns


def _expected_layouts(image_shape: tuple[int, int, int]) -> str:
    """Describe the accepted table layouts for an image shape, for error messages."""
    height, width, channels = image_shape
    pixels = height * width * channels
    single = f"{height} rows x {width} columns (one {height}x{width} image), "
    return (
        f"{single if channels == 1 else ''}N rows x {pixels} columns "
        f"(N flattened {height}x{width}x{channels} images), "
        f"or a single column {IMAGE_COLUMN!r} of base64-encoded PNG/JPEG"
    )


def _expected_array_shapes(image_shape: tuple[int, int, int]) -> str:
    """List the accepted tensor shapes for an image shape, for error messages."""
    height, width, channels = image_shape
    pixels = height * width * channels
    shapes = [(height, width, channels), ("N", height, width, channels), (pixels,), ("N", pixels)]
    if channels == 1:
        shapes = [(height, width), ("N", height, width), *shapes]
    shown = [_shape_text(shape) for shape in shapes]
    return ", ".join(shown[:-1]) + " or " + shown[-1]


def _shape_text(shape: tuple) -> str:
    """Write a shape the way Python prints tuples: (28, 28), (784,)."""
    inner = ", ".join(str(size) for size in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def _images_from_table(
    table: pd.DataFrame, image_shape: tuple[int, int, int], limits: RequestLimits
) -> np.ndarray:
    """Read a DataFrame: a column of encoded images, or rows of pixels."""
    if table.empty:
        raise InvalidRequestError(
            f"got an empty table ({table.shape[0]} rows x {table.shape[1]} columns); "
            f"expected {_expected_layouts(image_shape)}"
        )
    if IMAGE_COLUMN in table.columns:
        others = [str(column) for column in table.columns if column != IMAGE_COLUMN]
        if others:
            raise InvalidRequestError(
                f"unknown column(s) {others} next to {IMAGE_COLUMN!r}; expected only the "
                f"column {IMAGE_COLUMN!r} of base64-encoded PNG/JPEG"
            )
        return _images_from_encoded(list(table[IMAGE_COLUMN]), image_shape, limits)
    height, width, channels = image_shape
    single_image = channels == 1 and table.shape == (height, width)
    limits.check_count(1 if single_image else len(table))
    pixels = _pixel_table(table, image_shape)
    rows, columns = pixels.shape
    if columns == height * width * channels:
        return _checked_pixels(pixels, image_shape)
    if channels == 1 and (rows, columns) == (height, width):
        return _checked_pixels(pixels[np.newaxis], image_shape)
    raise InvalidRequestError(
        f"got a table of {rows} rows x {columns} columns; expected {_expected_layouts(image_shape)}"
    )


def _pixel_table(table: pd.DataFrame, image_shape: tuple[int, int, int]) -> np.ndarray:
    """Check a table's column names and values and return its pixels in column order."""
    positions = [_column_position(column) for column in table.columns]
    unknown = [
        str(column)
        for column, position in zip(table.columns, positions, strict=True)
        if position is None
    ]
    if unknown:
        raise InvalidRequestError(
            f"unknown column(s) {unknown[:5]}; expected pixel columns named by position "
            f"(0, 1, ... or pixel0, pixel1, ...) or a single column {IMAGE_COLUMN!r} of "
            f"base64-encoded PNG/JPEG; accepted layouts: {_expected_layouts(image_shape)}"
        )
    if sorted(positions) != list(range(len(positions))):
        raise InvalidRequestError(
            f"pixel columns must be named 0 to {len(positions) - 1}, each once; got "
            f"{[str(column) for column in table.columns[:5]]}..."
        )
    for column, dtype in zip(table.columns, table.dtypes, strict=True):
        if dtype.kind in "iuf":
            continue
        for row, value in enumerate(table[column]):
            if not _is_number(value):
                raise InvalidRequestError(
                    f"column {column!r} row {row} holds {_shorten(value)}, not a number; "
                    "expected pixel values from 0 to 255"
                )
    if positions == list(range(len(positions))):
        return table.to_numpy(dtype=np.float64)
    order = np.argsort(positions)
    return table.iloc[:, order].to_numpy(dtype=np.float64)


def _column_position(column: Any) -> int | None:
    """Read a pixel column's position from its name (3, "3" or "pixel3"), else None."""
    if isinstance(column, (int, np.integer)) and not isinstance(column, bool):
        return int(column)
    if isinstance(column, str):
        digits = column.removeprefix("pixel")
        if digits.isascii() and digits.isdigit():
            return int(digits)
    return None


def _is_number(value: Any) -> bool:
    """Tell whether a cell holds a number (not a bool, not text, not None)."""
    return isinstance(value, (Real, np.number)) and not isinstance(value, (bool, np.bool_))


def _images_from_dict(
    inputs: dict, image_shape: tuple[int, int, int], limits: RequestLimits
) -> np.ndarray:
    """Read named tensors: only the name "image" is known."""
    if not inputs:
        raise InvalidRequestError(
            f"the request holds no inputs; expected a tensor of shape "
            f"{_expected_array_shapes(image_shape)}, or an input {IMAGE_COLUMN!r}"
        )
    if list(inputs) != [IMAGE_COLUMN]:
        raise InvalidRequestError(
            f"unknown input name(s) {[str(name) for name in inputs if name != IMAGE_COLUMN]}; "
            f"expected a single input {IMAGE_COLUMN!r} (base64-encoded PNG/JPEG or a pixel tensor "
            f"{_expected_array_shapes(image_shape)}), or an unnamed tensor"
        )
    return _images_from_array(inputs[IMAGE_COLUMN], image_shape, limits)


def _images_from_array(
    values: Any, image_shape: tuple[int, int, int], limits: RequestLimits
) -> np.ndarray:
    """Read a tensor of pixels, or a 1-D array of encoded images."""
    if _is_text_list(values):
        # numpy would cut trailing b"\0"
        return _images_from_encoded(list(values), image_shape, limits)
    try:
        array = np.asarray(values)
    except ValueError as error:
        raise InvalidRequestError(
            f"the tensor is not rectangular ({error}); "
            f"expected a tensor of shape {_expected_array_shapes(image_shape)}"
        ) from None
    if array.size == 0:
        raise InvalidRequestError(
            f"got an empty tensor of shape {array.shape}; "
            f"expected a tensor of shape {_expected_array_shapes(image_shape)}"
        )
    if array.dtype.kind in "iuf":
        return _checked_tensor(array, image_shape, limits)
    values = array.ravel().tolist()
    if array.ndim == 1 and _is_text_list(values):
        return _images_from_encoded(values, image_shape, limits)
    for value in values:
        if not _is_number(value):
            raise InvalidRequestError(
                f"the tensor of shape {array.shape} holds {_shorten(value)}, not a number; "
                "expected pixel values from 0 to 255"
            )
    return _checked_tensor(array.astype(np.float64), image_shape, limits)


def _checked_tensor(
    array: np.ndarray, image_shape: tuple[int, int, int], limits: RequestLimits
) -> np.ndarray:
    """Reshape a numeric tensor to (N, H, W, C), count its images, then check its values."""
    images = _reshape_tensor(array, image_shape)
    limits.check_count(len(images))
    return _checked_pixels(images, image_shape)


def _is_text_list(values: Any) -> bool:
    """Tell whether a value is a non-empty list of str/bytes (encoded images)."""
    return (
        isinstance(values, (list, tuple))
        and len(values) > 0
        and all(isinstance(value, (str, bytes)) for value in values)
    )


def _reshape_tensor(array: np.ndarray, image_shape: tuple[int, int, int]) -> np.ndarray:
    """Bring a pixel tensor of any accepted shape to (N, H, W, C)."""
    height, width, channels = image_shape
    pixels = height * width * channels
    shape = array.shape
    if shape == (pixels,):
        return array.reshape(1, height, width, channels)
    if array.ndim == 2 and shape[1] == pixels:
        return array.reshape(shape[0], height, width, channels)
    if channels == 1 and shape == (height, width):
        return array.reshape(1, height, width, 1)
    if channels == 1 and array.ndim == 3 and shape[1:] == (height, width):
        return array.reshape(shape[0], height, width, 1)
    if shape == image_shape:
        return array.reshape(1, height, width, channels)
    if array.ndim == 4 and shape[1:] == image_shape:
        return array
    raise InvalidRequestError(
        f"got a tensor of shape {shape}; expected {_expected_array_shapes(image_shape)}"
    )


def _checked_pixels(pixels: np.ndarray, image_shape: tuple[int, int, int]) -> np.ndarray:
    """Refuse NaN, infinite and out-of-range values; return float32 (N, H, W, C)."""
    pixels = pixels.reshape((-1, *image_shape))
    finite = np.isfinite(pixels)
    if not finite.all():
        image, *position = np.argwhere(~finite)[0].tolist()
        value = pixels[(image, *position)]
        shown = "null or NaN" if np.isnan(value) else str(value)
        raise InvalidRequestError(
            f"image {image} holds {shown} at (row, column, channel) {tuple(position)}; "
            "expected finite pixel values from 0 to 255"
        )
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0 or high > 255:
        raise InvalidRequestError(
            f"pixel values range from {low:g} to {high:g}; expected raw pixel values from "
            "0 to 255 (the model normalizes them itself)"
        )
    return pixels.astype(np.float32)


def _images_from_encoded(
    values: list, image_shape: tuple[int, int, int], limits: RequestLimits
) -> np.ndarray:
    """Decode base64 (str or bytes) or raw PNG/JPEG bytes, then fit them to the model."""
    limits.check_count(len(values))
    names = [f"{IMAGE_COLUMN!r} row {row}" for row in range(len(values))]
    encoded = [_image_bytes(value, name) for value, name in zip(values, names, strict=True)]
    return prepare_images(encoded, image_shape, names, limits).astype(np.float32)


def _image_bytes(value: Any, name: str) -> bytes:
    """Read one image cell: base64 text or bytes (a data: URL too), or raw image bytes."""
    if isinstance(value, bytes):
        try:
            return base64.b64decode(b"".join(value.split()), validate=True)
        except binascii.Error:
            return value  # raw PNG/JPEG bytes, e.g. from a binary column: never valid base64
    if not isinstance(value, str):
        raise InvalidRequestError(
            f"{name} holds {_shorten(value)}; expected a base64-encoded PNG or JPEG string"
        )
    text = "".join(value.split())
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as error:
        raise InvalidRequestError(
            f"{name} is not valid base64 ({error}); expected a base64-encoded PNG or JPEG"
        ) from None


def _shorten(value: Any, limit: int = 40) -> str:
    """Show a value in an error message as JSON would (null), cut to `limit` characters."""
    text = "null" if value is None else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
