"""Decoding, fitting and normalizing images: what training data and served requests share.

`fit_image` is used when a folder of images becomes a dataset and again when the served
model receives a PNG, and `normalize` when preprocess writes the training data and again
inside the served model, so the two sides can never drift apart. This module imports only
NumPy, OpenCV and Pillow, so the served model starts without the pipeline's heavier imports.
"""

import io
import warnings

import cv2
import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Decode PNG/JPEG/... bytes into an 8-bit array of shape (H, W) or (H, W, C), RGB order.

    Args:
        data: The encoded bytes.
        name: What to call the image in an error message (a file name, "request row 3").

    Returns:
        uint8 array; grayscale images are 2-D, colour images (H, W, 3) RGB, alpha is
        composited onto white (how paint programs show a transparent background).

    Raises:
        ValueError: If the bytes are empty or not a decodable image.
    """
    if not data:
        raise ValueError(f"{name} is empty; expected PNG or JPEG bytes")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ValueError(f"{name} is not a readable image; expected PNG or JPEG bytes")
    if image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(float(image.max()), 1.0))
    if image.ndim == 3 and image.shape[2] == 4:
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        colour = image[:, :, :3].astype(np.float32)
        image = (colour * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return image


def image_size(data: bytes, name: str = "image") -> tuple[int, int] | None:
    """Read an encoded image's (width, height) from its header, without decoding the pixels.

    Pillow reads only as far as the header, so a small file that would decode to billions
    of pixels costs nothing here.

    Returns:
        (width, height), or None when the image has more pixels than Pillow opens at all
        (twice `PIL.Image.MAX_IMAGE_PIXELS`, about 179 million).

    Raises:
        ValueError: If the bytes are empty or not an image format Pillow knows (PNG, JPEG,
            BMP, TIFF, WebP, ...).
    """
    if not data:
        raise ValueError(f"{name} is empty; expected PNG or JPEG bytes")
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own decompression-bomb limit; the caller decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Image.DecompressionBombError:
        return None
    except (OSError, SyntaxError, ValueError):
        raise ValueError(f"{name} is not a readable image; expected PNG or JPEG bytes") from None


def is_grayscale(image: np.ndarray) -> bool:
    """Tell whether an image carries no colour: one channel, or three equal channels."""
    if image.ndim == 2 or image.shape[2] == 1:
        return True
    return bool(np.array_equal(image[:, :, 0], image[:, :, 1])) and bool(
        np.array_equal(image[:, :, 1], image[:, :, 2])
    )


def fit_image(
    image: np.ndarray, height: int, width: int, channels: int, invert: bool | str = False
) -> np.ndarray:
    """Convert an image to the model's channels and size, keeping its aspect ratio.

    The image is scaled to fit inside height x width and centred on a black canvas, so
    nothing is cropped and nothing is stretched.

    Args:
        image: uint8 array (H, W) or (H, W, C) with C in {1, 3}, RGB.
        height: Target height.
        width: Target width.
        channels: 1 for grayscale, 3 for RGB.
        invert: True to invert, False to leave, "auto" to invert when the background
            (the border pixels) is light, as in a drawing made dark on white.

    Returns:
        uint8 array of shape (height, width, channels).

    Raises:
        ValueError: If `channels` is not 1 or 3.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if channels == 1 and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    elif channels == 3 and image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if invert == "auto":
        invert = has_light_background(image)
    if invert:
        image = 255 - image
    source_height, source_width = image.shape[:2]
    scale = min(height / source_height, width / source_width)
    new_height = max(1, round(source_height * scale))
    new_width = max(1, round(source_width * scale))
    if (new_height, new_width) != (source_height, source_width):
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (new_width, new_height), interpolation=interpolation)
    canvas = np.zeros((height, width) + image.shape[2:], dtype=np.uint8)
    top = (height - new_height) // 2
    left = (width - new_width) // 2
    canvas[top : top + new_height, left : left + new_width] = image
    return canvas.reshape(height, width, channels)


def has_light_background(image: np.ndarray) -> bool:
    """Tell whether the border of an image is mostly light (mean above mid-grey)."""
    border = np.concatenate(
        [image[0].ravel(), image[-1].ravel(), image[:, 0].ravel(), image[:, -1].ravel()]
    )
    return float(border.mean()) > 127.5


def normalize(images: np.ndarray, normalization: dict) -> np.ndarray:
    """Turn raw 0-255 pixels (..., C) into float32 (x - mean) / std per channel."""
    mean = np.asarray(normalization["mean"], dtype=np.float32)
    std = np.asarray(normalization["std"], dtype=np.float32)
    return (images.astype(np.float32) - mean) / std
