"""png_to_pandas.py: the request it writes is what the packaged model reads back."""

import base64
import importlib.util
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from mlflow.pyfunc import scoring_server

from mlpipe_vision import request_bodies, serving
from tests.conftest import REPO_DIR

SCRIPT_PATH = REPO_DIR / "png_to_pandas.py"


def load_script():
    spec = importlib.util.spec_from_file_location("png_to_pandas", SCRIPT_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


png_to_pandas = load_script()


def write_drawing(path, colour: bool = False, size=(100, 80)):
    """A digit-like stroke drawn dark on white, saved by OpenCV as a paint program would."""
    image = np.full(size, 255, dtype=np.uint8)
    cv2.line(image, (15, 20), (65, 20), 0, 9)
    cv2.line(image, (65, 20), (35, 90), 0, 9)
    if colour:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        image[image[..., 0] < 128] = (30, 0, 160)
    assert cv2.imwrite(str(path), image)
    return path


@pytest.fixture
def drawings(tmp_path):
    return [
        write_drawing(tmp_path / "seven.png"),
        write_drawing(tmp_path / "red seven.png", colour=True),
        write_drawing(tmp_path / "wide.jpg", size=(60, 120)),
    ]


def run_main(arguments, capsys):
    png_to_pandas.main([str(argument) for argument in arguments])
    return capsys.readouterr().out


def read_back(output_path, image_shape=(28, 28, 1)) -> np.ndarray:
    """Parse the file as `mlflow models serve` does, then decode as the model does."""
    parsed = scoring_server.infer_and_parse_data(json.loads(output_path.read_text()))
    return serving.images_from_request(parsed, image_shape)


def test_defaults_match_the_workshop():
    args = png_to_pandas.build_parser().parse_args(["drawing.png"])
    assert args.images == ["drawing.png"]
    assert (args.format, args.size, args.channels) == ("split", (28, 28), 1)
    assert (args.output, args.port) == ("example.json", 5000)


@pytest.mark.parametrize(
    ("text", "size"), [("28x28", (28, 28)), ("64X32", (64, 32)), ("100", (100, 100))]
)
def test_image_size_reads_height_by_width(text, size):
    assert png_to_pandas.image_size(text) == size


@pytest.mark.parametrize("text", ["", "28x", "0x28", "axb", "1x2x3"])
def test_image_size_refuses_anything_else(text):
    with pytest.raises(Exception, match="expected a size HxW"):
        png_to_pandas.image_size(text)


def test_one_png_becomes_the_workshop_table(tmp_path, drawings, capsys):
    output_path = tmp_path / "example.json"
    printed = run_main([drawings[0], "--output", output_path], capsys)
    table = json.loads(output_path.read_text())["dataframe_split"]
    assert table["columns"] == list(range(28))
    assert np.array(table["data"]).shape == (28, 28)
    assert f"--data @{output_path} http://127.0.0.1:5000/invocations" in printed
    assert 'curl -s -X POST -H "Content-Type: application/json"' in printed


@pytest.mark.parametrize("request_format", request_bodies.REQUEST_FORMATS)
@pytest.mark.parametrize("count", [1, 3])
def test_the_model_reads_back_the_same_pixels(tmp_path, drawings, capsys, request_format, count):
    output_path = tmp_path / "request.json"
    paths = drawings[:count]
    run_main([*paths, "--format", request_format, "--output", output_path], capsys)
    expected = serving.prepare_images([path.read_bytes() for path in paths], (28, 28, 1))
    np.testing.assert_array_equal(read_back(output_path), expected)


def test_drawings_arrive_light_on_dark(tmp_path, drawings, capsys):
    output_path = tmp_path / "request.json"
    run_main([drawings[0], "--output", output_path], capsys)
    pixels = np.array(json.loads(output_path.read_text())["dataframe_split"]["data"])
    assert pixels[0, 0] == 0 and pixels[-1, -1] == 0
    assert pixels.max() >= 200


def test_several_images_make_rows_of_flattened_pixels(tmp_path, drawings, capsys):
    output_path = tmp_path / "request.json"
    printed = run_main([*drawings, "--size", "20x16", "--output", output_path], capsys)
    table = json.loads(output_path.read_text())["dataframe_split"]
    assert np.array(table["data"]).shape == (3, 320)
    assert "3 image(s), split format" in printed
    assert read_back(output_path, (20, 16, 1)).shape == (3, 20, 16, 1)


def test_base64_embeds_the_file_bytes_unchanged(tmp_path, drawings, capsys):
    output_path = tmp_path / "request.json"
    run_main([drawings[1], "--format", "base64", "--output", output_path], capsys)
    table = json.loads(output_path.read_text())["dataframe_split"]
    assert table["columns"] == ["image"]
    assert base64.b64decode(table["data"][0][0]) == drawings[1].read_bytes()


def test_colour_models_get_three_channels(tmp_path, drawings, capsys):
    output_path = tmp_path / "request.json"
    run_main([drawings[1], "--format", "inputs", "--channels", 3, "--output", output_path], capsys)
    tensor = np.array(json.loads(output_path.read_text())["inputs"])
    assert tensor.shape == (1, 28, 28, 3)
    assert read_back(output_path, (28, 28, 3)).shape == (1, 28, 28, 3)


def test_the_port_goes_into_the_curl_command(tmp_path, drawings, capsys):
    output_path = tmp_path / "my request.json"
    printed = run_main([drawings[0], "--port", 5001, "--output", output_path], capsys)
    assert f"--data '@{output_path}' http://127.0.0.1:5001/invocations" in printed


@pytest.mark.parametrize(
    ("make_file", "message"),
    [
        (lambda path: None, "cannot read .*bad.png: No such file or directory"),
        (lambda path: path.write_text("not an image"), "bad.png is not a readable image"),
        (lambda path: path.write_bytes(b""), "bad.png is empty"),
    ],
    ids=["missing file", "not an image", "empty file"],
)
def test_bad_files_exit_with_a_message(tmp_path, drawings, capsys, make_file, message):
    bad_path = tmp_path / "bad.png"
    make_file(bad_path)
    output_path = tmp_path / "request.json"
    with pytest.raises(SystemExit, match=f"png_to_pandas: .*{message}"):
        png_to_pandas.main([str(drawings[0]), str(bad_path), "--output", str(output_path)])
    assert not output_path.exists()


def test_the_script_fails_without_a_traceback(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(SCRIPT_PATH), str(tmp_path / "nothing.png")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr
    assert "cannot read" in completed.stderr and "nothing.png" in completed.stderr
    assert not (tmp_path / "example.json").exists()


def test_the_script_writes_example_json_in_the_working_directory(tmp_path):
    drawing_path = write_drawing(tmp_path / "drawing.png")
    completed = subprocess.run(
        [sys.executable, str(SCRIPT_PATH), drawing_path.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stderr
    assert "--data @example.json http://127.0.0.1:5000/invocations" in completed.stdout
    assert read_back(tmp_path / "example.json").shape == (1, 28, 28, 1)
