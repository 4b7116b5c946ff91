"""png_to_pandas: turn PNG/JPEG drawings into a JSON request for `mlflow models serve`.

Reads:  one or more image files (any size and colour mode).
Writes: example.json, one request holding every image, in a layout the packaged model
        accepts:
          split   the original workshop's `dataframe_split`: one grayscale image as H rows
                  x W columns of raw 0-255 pixels; several images as N rows x H*W*C columns
          inputs  a tensor (N, H, W), or (N, H, W, C) for colour models
          base64  a column "image" of each file's bytes, base64-encoded; the model decodes
For split and inputs each image is decoded, converted to the model's channels, fitted into
H x W with aspect-preserving padding and inverted when its background is light, by the
same function the model uses (`mlpipe_vision.serving.prepare_images`; the bodies are built
by `mlpipe_vision.request_bodies`). Pixels stay raw 0-255: the model normalizes them itself.
Next:   the printed curl command sends the file to a model served with
        `mlflow models serve -m models:/<name>@<alias> --env-manager local`.

    python png_to_pandas.py drawing.png
    python png_to_pandas.py one.png two.jpg --format base64 --output digits.json
"""

import argparse
import sys

from mlpipe_vision import cli, request_bodies


def image_size(value: str) -> tuple[int, int]:
    """Parse an image size written HxW (28x28) or as one number for a square (28).

    Raises:
        argparse.ArgumentTypeError: If the value is not one or two positive whole numbers.
    """
    parts = str(value).lower().split("x")
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        sizes = []
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected a size HxW such as 28x28, got {value!r}")
    return sizes[0], sizes[1]


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = cli.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="+", help="PNG/JPEG files; all go into one request")
    parser.add_argument(
        "--format",
        choices=request_bodies.REQUEST_FORMATS,
        default="split",
        help="request layout (default: split)",
    )
    parser.add_argument(
        "--size",
        type=image_size,
        default=(28, 28),
        help="the model's input HxW (default: 28x28)",
    )
    parser.add_argument(
        "--channels", type=int, choices=(1, 3), default=1, help="the model's input channels"
    )
    parser.add_argument("--output", default="example.json", help="the JSON file to write")
    parser.add_argument(
        "--port", type=int, default=5000, help="port of `mlflow models serve` in the curl command"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, write the request and print the curl command that sends it."""
    args = build_parser().parse_args(argv)
    height, width = args.size
    try:
        output_path = request_bodies.write_request_file(
            args.images, args.format, (height, width, args.channels), args.output
        )
    except ValueError as error:
        sys.exit(f"png_to_pandas: {error}")
    print(f"wrote {output_path}: {len(args.images)} image(s), {args.format} format")
    print(request_bodies.curl_command(output_path, args.port))


if __name__ == "__main__":
    main()
