"""The client's side of the served model: JSON request bodies from images, and curl lines.

`png_to_pandas.py` writes its request files with `write_request_file`, the drawing page sends
`base64_body`, and the stages print `curl_command` for the next step. Pixel bodies are fitted
by `mlpipe_vision.serving.prepare_images`, the function the served model decodes PNG/JPEG
with, so the model accepts exactly what is written here; `mlpipe_vision.serving` is the
server's side and never imports this module.
"""

import base64
import json
import shlex
from collections.abc import Sequence
from pathlib import Path

from mlpipe_vision.serving import IMAGE_COLUMN, prepare_images

REQUEST_FORMATS = ("split", "inputs", "base64")


def base64_body(encoded_images: Sequence[bytes]) -> dict:
    """The request that sends PNG/JPEG files as they are, for the model to decode.

    Args:
        encoded_images: One bytes object per image.

    Returns:
        A `dataframe_split` body with one column "image" of base64 text, one row per image.
    """
    encoded = [base64.b64encode(data).decode("ascii") for data in encoded_images]
    return {"dataframe_split": {"columns": [IMAGE_COLUMN], "data": [[text] for text in encoded]}}


def request_body(
    encoded_images: Sequence[bytes],
    request_format: str,
    image_shape: Sequence[int],
    names: Sequence[str] = (),
) -> dict:
    """Build a JSON request for `mlflow models serve` from PNG/JPEG bytes.

    Args:
        encoded_images: One bytes object per image.
        request_format: "split" (one grayscale image: H rows x W columns, the workshop's
            layout; otherwise N rows x H*W*C columns), "inputs" (a tensor (N, H, W) for
            grayscale, (N, H, W, C) for colour) or "base64" (a column "image" holding
            each file's bytes, base64-encoded, for the model to decode).
        image_shape: The model's input (H, W, C).
        names: What to call each image in an error message (file names).

    Returns:
        The body as a dict, ready for `json.dump`. Pixel values are raw 0-255, fitted by
        `prepare_images`; the model normalizes them.

    Raises:
        ValueError: If the format is unknown, or an image is empty or unreadable.
    """
    if request_format not in REQUEST_FORMATS:
        raise ValueError(
            f"unknown request format {request_format!r}; expected one of {REQUEST_FORMATS}"
        )
    images = prepare_images(encoded_images, image_shape, names)
    count, height, width, channels = images.shape
    if request_format == "base64":
        return base64_body(encoded_images)
    if request_format == "inputs":
        tensor = images[..., 0] if channels == 1 else images
        return {"inputs": tensor.tolist()}
    if count == 1 and channels == 1:
        return {
            "dataframe_split": {"columns": list(range(width)), "data": images[0, :, :, 0].tolist()}
        }
    flattened = images.reshape(count, height * width * channels)
    return {
        "dataframe_split": {"columns": list(range(flattened.shape[1])), "data": flattened.tolist()}
    }


def write_request_file(
    image_paths: Sequence[str | Path],
    request_format: str,
    image_shape: Sequence[int],
    output_path: str | Path,
) -> Path:
    """Read PNG/JPEG files and write one JSON request for `mlflow models serve`.

    Args:
        image_paths: The image files; all go into one request, in this order.
        request_format: "split", "inputs" or "base64" (see `request_body`).
        image_shape: The model's input (H, W, C).
        output_path: Where to write the JSON body.

    Returns:
        The path written.

    Raises:
        ValueError: If a file cannot be read or is not an image, or the format is unknown.
    """
    encoded_images = []
    for image_path in image_paths:
        try:
            encoded_images.append(Path(image_path).read_bytes())
        except OSError as error:
            raise ValueError(
                f"cannot read {image_path}: {error.strerror or error}; expected a PNG or JPEG file"
            ) from None
    body = request_body(
        encoded_images, request_format, image_shape, [str(image_path) for image_path in image_paths]
    )
    output_path = Path(output_path)
    try:
        output_path.write_text(json.dumps(body))
    except OSError as error:
        raise ValueError(f"cannot write {output_path}: {error.strerror or error}") from None
    return output_path


def curl_command(request_path: str | Path, port: int = 5000, host: str = "127.0.0.1") -> str:
    """The shell command that sends a request file to `mlflow models serve`."""
    data = shlex.quote(f"@{request_path}")
    return (
        f'curl -s -X POST -H "Content-Type: application/json" --data {data} '
        f"http://{host}:{port}/invocations"
    )
