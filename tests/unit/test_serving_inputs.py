"""What the served model accepts: every request layout, every refusal, and MLflow's own parsing.

The last tests save a tiny models-from-code pyfunc that decodes with `images_from_request`
and answers with `format_predictions`, and post JSON bodies to MLflow's real scoring app
(`mlflow.pyfunc.scoring_server.init`, the app `mlflow models serve` runs), in process.
"""

import asyncio
import base64
import io
import json
import textwrap

import cv2
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server

from mlpipe_vision import images, serving
from mlpipe_vision.serving import InvalidRequestError

# MLflow advises the stand-in models saved below to carry an input example; they must not.
# (Its "Add type hints" advice cannot be filtered: MLflow resets the filters around it.)
pytestmark = pytest.mark.filterwarnings("ignore:.*input example was not provided:UserWarning")

SHAPE = (28, 28, 1)
COLOUR_SHAPE = (8, 8, 3)


def drawing(height: int = 100, width: int = 80) -> np.ndarray:
    """A digit-like stroke (a 7) drawn dark on white, as a paint program saves it."""
    image = np.full((height, width), 255, dtype=np.uint8)
    cv2.line(image, (15, 20), (65, 20), 0, 9)
    cv2.line(image, (65, 20), (35, 90), 0, 9)
    return image


def encode(image: np.ndarray, extension: str) -> bytes:
    ok, buffer = cv2.imencode(extension, image)
    assert ok
    return buffer.tobytes()


def transparent_drawing() -> np.ndarray:
    """The stroke in opaque black on a fully transparent background (BGRA)."""
    stroke = drawing() < 128
    image = np.zeros((100, 80, 4), dtype=np.uint8)
    image[stroke, 3] = 255
    return image


def colour_drawing() -> np.ndarray:
    """The stroke in dark red on white (BGR)."""
    image = cv2.cvtColor(drawing(), cv2.COLOR_GRAY2BGR)
    image[drawing() < 128] = (0, 0, 140)
    return image


ENCODED = {
    "grayscale png": encode(drawing(), ".png"),
    "rgba png": encode(transparent_drawing(), ".png"),
    "colour png": encode(colour_drawing(), ".png"),
    "jpeg": encode(drawing(), ".jpg"),
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def reference_fit(data: bytes, shape=SHAPE) -> np.ndarray:
    """What training data goes through: decode_image, then fit_image(invert="auto")."""
    fitted = images.fit_image(images.decode_image(data), *shape, invert="auto")
    return fitted[np.newaxis].astype(np.float32)


def pixel_batch(count: int = 2, shape=SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, *shape)).astype(np.float32)


PIXELS = pixel_batch()
ONE = PIXELS[:1]
FLAT = PIXELS.reshape(2, -1)


def shuffled_records(batch: np.ndarray) -> pd.DataFrame:
    """dataframe_records as MLflow parses them: str column names, here in a shuffled order."""
    flat = batch.reshape(len(batch), -1)
    order = np.random.default_rng(1).permutation(flat.shape[1])
    return pd.DataFrame(flat[:, order], columns=[str(position) for position in order])


LAYOUTS = {
    "table HxW, int columns (workshop)": (pd.DataFrame(ONE[0, :, :, 0]), ONE),
    "table HxW, str columns": (
        pd.DataFrame(ONE[0, :, :, 0], columns=[str(i) for i in range(28)]),
        ONE,
    ),
    "table HxW, int pixels": (pd.DataFrame(ONE[0, :, :, 0].astype(np.int64)), ONE),
    "table N x H*W": (pd.DataFrame(FLAT), PIXELS),
    "table 1 x H*W": (pd.DataFrame(FLAT[:1]), ONE),
    "records, shuffled str columns": (shuffled_records(PIXELS), PIXELS),
    "table pixel0..pixel783 columns": (
        pd.DataFrame(FLAT, columns=[f"pixel{i}" for i in range(784)]),
        PIXELS,
    ),
    "array (H, W)": (ONE[0, :, :, 0], ONE),
    "array (N, H, W)": (PIXELS[..., 0], PIXELS),
    "array (N, H, W, C)": (PIXELS, PIXELS),
    "array (H, W, C)": (ONE[0], ONE),
    "array (H*W,)": (FLAT[0], ONE),
    "array (N, H*W)": (FLAT, PIXELS),
    "array uint8": (PIXELS.astype(np.uint8), PIXELS),
    "nested list": (PIXELS[..., 0].astype(int).tolist(), PIXELS),
    "dict image tensor": ({"image": PIXELS[..., 0]}, PIXELS),
    "fractional pixel values": (np.full((1, 784), 127.5), np.full((1, 28, 28, 1), 127.5)),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_pixel_layout_gives_the_same_batch(name):
    model_input, expected = LAYOUTS[name]
    result = serving.images_from_request(model_input, SHAPE)
    assert result.dtype == np.float32
    assert result.shape == expected.shape
    np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("kind", sorted(ENCODED))
@pytest.mark.parametrize(
    "wrap",
    ["table str", "table bytes", "raw bytes", "data url", "wrapped lines", "array", "dict"],
)
def test_encoded_images_go_through_the_training_fit(kind, wrap):
    data = ENCODED[kind]
    text = b64(data)
    model_input = {
        "table str": pd.DataFrame({"image": [text]}),
        "table bytes": pd.DataFrame({"image": [text.encode("ascii")]}),
        "raw bytes": pd.DataFrame({"image": [data]}),
        "data url": pd.DataFrame({"image": ["data:image/png;base64," + text]}),
        "wrapped lines": pd.DataFrame({"image": ["\n".join(textwrap.wrap(text, 76))]}),
        "array": np.array([text]),
        "dict": {"image": np.array([text])},
    }[wrap]
    result = serving.images_from_request(model_input, SHAPE)
    np.testing.assert_array_equal(result, reference_fit(data))


@pytest.mark.parametrize("kind", sorted(ENCODED))
def test_drawings_are_inverted_to_light_on_dark(kind):
    fitted = serving.images_from_request(pd.DataFrame({"image": [b64(ENCODED[kind])]}), SHAPE)[0]
    border = np.concatenate([fitted[0], fitted[-1], fitted[:, 0], fitted[:, -1]])
    assert border.max() <= 10, "the white background became black"
    assert fitted.max() >= 150, "the dark stroke became bright"


def test_several_encoded_images_keep_their_order():
    rows = [b64(ENCODED["grayscale png"]), b64(ENCODED["colour png"])]
    result = serving.images_from_request(pd.DataFrame({"image": rows}), SHAPE)
    expected = np.concatenate(
        [reference_fit(ENCODED["grayscale png"]), reference_fit(ENCODED["colour png"])]
    )
    np.testing.assert_array_equal(result, expected)


COLOUR_PIXELS = pixel_batch(3, COLOUR_SHAPE)


@pytest.mark.parametrize(
    "model_input",
    [
        COLOUR_PIXELS,
        COLOUR_PIXELS.reshape(3, -1),
        pd.DataFrame(COLOUR_PIXELS.reshape(3, -1)),
    ],
    ids=["array (N, H, W, C)", "array (N, H*W*C)", "table N x H*W*C"],
)
def test_colour_models_take_three_channels(model_input):
    result = serving.images_from_request(model_input, COLOUR_SHAPE)
    np.testing.assert_array_equal(result, COLOUR_PIXELS)


def test_colour_models_convert_encoded_images_to_rgb():
    result = serving.images_from_request({"image": [b64(ENCODED["colour png"])]}, COLOUR_SHAPE)
    assert result.shape == (1, 8, 8, 3)
    np.testing.assert_array_equal(result, reference_fit(ENCODED["colour png"], COLOUR_SHAPE))


def test_colour_models_refuse_a_single_grayscale_table():
    with pytest.raises(InvalidRequestError, match=r"8 rows x 8 columns; expected N rows x 192"):
        serving.images_from_request(pd.DataFrame(np.zeros((8, 8))), COLOUR_SHAPE)


def table_with(value, row: int = 3, column: int = 5) -> pd.DataFrame:
    cells = ONE[0, :, :, 0].astype(object)
    cells[row, column] = value
    return pd.DataFrame(cells.tolist())


REFUSALS = {
    "table of the wrong size": (
        pd.DataFrame(np.zeros((27, 28))),
        r"got a table of 27 rows x 28 columns; expected 28 rows x 28 columns \(one 28x28 image\)"
        r", N rows x 784 columns",
    ),
    "wrong number of columns": (
        pd.DataFrame(np.zeros((2, 783))),
        r"2 rows x 783 columns; expected .*N rows x 784 columns",
    ),
    "tensor of the wrong shape": (
        np.zeros((2, 27, 28)),
        r"tensor of shape \(2, 27, 28\); expected \(28, 28\), \(N, 28, 28\)",
    ),
    "tensor with too many pixels": (np.zeros((2, 785)), r"shape \(2, 785\).*\(N, 784\)"),
    "text in a table": (table_with("white"), r"column 5 row 3 holds 'white', not a number"),
    "null in a table": (table_with(None), r"image 0 holds null or NaN at .* \(3, 5, 0\)"),
    "booleans in a table": (pd.DataFrame([[True] * 784]), r"holds True, not a number"),
    "text in a tensor": (np.array([["1", "2"], ["3", "x"]]), r"holds '1', not a number"),
    "null in a tensor": (np.array([[1, None]], dtype=object), r"holds null, not a number"),
    "NaN in a table": (table_with(float("nan")), r"image 0 holds null or NaN at .* \(3, 5, 0\)"),
    "text and null in a table": (
        pd.DataFrame({0: ["a", None]}),
        r"column 0 row 0 holds 'a', not a number",
    ),
    "infinity in a tensor": (np.full((1, 784), np.inf), r"holds inf .*finite pixel values"),
    "negative pixels": (np.full((1, 784), -1.0), r"range from -1 to -1; expected raw pixel"),
    "pixels above 255": (np.full((1, 784), 256), r"range from 256 to 256; expected raw pixel"),
    "already normalized pixels": (
        np.linspace(-0.42, 2.8, 784)[np.newaxis],
        r"range from -0.42 to 2.8; .*normalizes them itself",
    ),
    "corrupt image": (
        pd.DataFrame({"image": [b64(b"\x89PNG\r\n\x1a\n broken")]}),
        r"'image' row 0 is not a readable image; expected PNG or JPEG",
    ),
    "corrupt second image": (
        pd.DataFrame({"image": [b64(ENCODED["jpeg"]), b64(b"plain text")]}),
        r"'image' row 1 is not a readable image",
    ),
    "empty image": (pd.DataFrame({"image": [""]}), r"'image' row 0 is empty"),
    "not base64": (pd.DataFrame({"image": ["@@@@"]}), r"'image' row 0 is not valid base64"),
    "number in the image column": (
        pd.DataFrame({"image": [3.0]}),
        r"'image' row 0 holds 3.0; expected a base64-encoded PNG or JPEG string",
    ),
    "unknown column": (
        pd.DataFrame({"label": [1], "0": [3]}),
        r"unknown column\(s\) \['label'\]; expected pixel columns named by position",
    ),
    "unknown column next to image": (
        pd.DataFrame({"image": [b64(ENCODED["jpeg"])], "id": [7]}),
        r"unknown column\(s\) \['id'\] next to 'image'",
    ),
    "unknown input name": ({"pixels": np.zeros((1, 784))}, r"unknown input name\(s\) \['pixels'\]"),
    "pixel columns with a gap": (
        pd.DataFrame(np.zeros((1, 784)), columns=[*range(783), 900]),
        r"pixel columns must be named 0 to 783, each once",
    ),
    "empty table": (pd.DataFrame(), r"empty table \(0 rows x 0 columns\)"),
    "table without rows": (pd.DataFrame(columns=range(784)), r"empty table \(0 rows x 784"),
    "empty tensor": ([], r"empty tensor of shape \(0,\)"),
    "empty dict": ({}, r"no inputs"),
    "empty image column": (pd.DataFrame({"image": []}), r"empty table"),
    "ragged tensor": ([[1, 2], [3]], r"not rectangular"),
    "a bare string": ("hello", r"got input of type str; expected a table"),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_malformed_requests_are_refused_with_what_was_expected(name):
    model_input, message = REFUSALS[name]
    with pytest.raises(InvalidRequestError, match=message) as caught:
        serving.images_from_request(model_input, SHAPE)
    assert isinstance(caught.value, ValueError)
    assert caught.value.get_http_status_code() == 400


def test_invalid_request_is_a_value_error_and_a_400_mlflow_exception():
    error = InvalidRequestError("got 3 rows")
    assert isinstance(error, ValueError)
    assert isinstance(error, MlflowException)
    assert error.error_code == "BAD_REQUEST"
    assert error.get_http_status_code() == 400
    assert json.loads(error.serialize_as_json())["message"] == "got 3 rows"
    assert str(error) == "got 3 rows"


def test_format_predictions_names_the_class_and_every_probability():
    probabilities = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]], dtype=np.float32)
    table = serving.format_predictions(probabilities, ["T-shirt/top", "Ankle boot", "0"])
    assert list(table.columns) == [
        "class_id",
        "class_name",
        "probability",
        "p_T_shirt_top",
        "p_Ankle_boot",
        "p_0",
    ]
    assert table["class_id"].tolist() == [1, 0]
    assert table["class_name"].tolist() == ["Ankle boot", "T-shirt/top"]
    np.testing.assert_allclose(table["probability"], [0.7, 0.6], rtol=1e-6)
    np.testing.assert_allclose(table["p_0"], [0.2, 0.1], rtol=1e-6)
    records = json.loads(table.to_json(orient="records"))
    assert records[0]["class_name"] == "Ankle boot"


def test_probability_columns_stay_unique():
    assert serving.probability_columns(["a b", "a-b", "", "!"]) == [
        "p_a_b",
        "p_a_b_1",
        "p_2",
        "p_3",
    ]


def test_format_predictions_refuses_a_class_count_mismatch():
    with pytest.raises(ValueError, match=r"shape \(1, 2\); expected \(N, 3\)"):
        serving.format_predictions(np.array([[0.5, 0.5]]), ["a", "b", "c"])


# MLflow's own parsing: the JSON bodies a client sends, through what `mlflow models serve`
# runs before `predict` (MLflow 3.17.2, a model without an input schema).

WORKSHOP_TABLE = pd.DataFrame(ONE[0, :, :, 0].astype(np.int64)).to_json(orient="split")
BASE64 = b64(ENCODED["rgba png"])
ENCODED_EXPECTED = reference_fit(ENCODED["rgba png"])
INTEGER_PIXELS = PIXELS.astype(np.int64)

JSON_BODIES = {
    "dataframe_split HxW (pandas to_json, the workshop)": (
        '{"dataframe_split": ' + WORKSHOP_TABLE + "}",
        ONE,
    ),
    "dataframe_split HxW without columns": (
        json.dumps({"dataframe_split": {"data": INTEGER_PIXELS[0, :, :, 0].tolist()}}),
        ONE,
    ),
    "dataframe_split N x H*W": (
        json.dumps({"dataframe_split": {"data": INTEGER_PIXELS.reshape(2, -1).tolist()}}),
        PIXELS,
    ),
    "dataframe_records N x H*W": (
        json.dumps(
            {
                "dataframe_records": [
                    {str(i): int(v) for i, v in enumerate(row)}
                    for row in INTEGER_PIXELS.reshape(2, -1)
                ]
            }
        ),
        PIXELS,
    ),
    "dataframe_split image": (
        json.dumps({"dataframe_split": {"columns": ["image"], "data": [[BASE64]]}}),
        ENCODED_EXPECTED,
    ),
    "dataframe_records image": (
        json.dumps({"dataframe_records": [{"image": BASE64}]}),
        ENCODED_EXPECTED,
    ),
    "inputs (N, H, W)": (json.dumps({"inputs": INTEGER_PIXELS[..., 0].tolist()}), PIXELS),
    "inputs (N, H, W, C)": (json.dumps({"inputs": INTEGER_PIXELS.tolist()}), PIXELS),
    "inputs (N, H*W)": (json.dumps({"inputs": INTEGER_PIXELS.reshape(2, -1).tolist()}), PIXELS),
    "inputs (H, W)": (json.dumps({"inputs": INTEGER_PIXELS[0, :, :, 0].tolist()}), ONE),
    "inputs image": (json.dumps({"inputs": {"image": [BASE64]}}), ENCODED_EXPECTED),
    "inputs list of base64": (json.dumps({"inputs": [BASE64]}), ENCODED_EXPECTED),
    "instances (N, H, W)": (json.dumps({"instances": INTEGER_PIXELS[..., 0].tolist()}), PIXELS),
    "instances image": (json.dumps({"instances": [{"image": BASE64}]}), ENCODED_EXPECTED),
}


@pytest.mark.parametrize("name", sorted(JSON_BODIES))
def test_mlflow_parsed_json_bodies_give_the_expected_images(name):
    text, expected = JSON_BODIES[name]
    parsed = scoring_server.infer_and_parse_data(json.loads(text), schema=None)
    np.testing.assert_array_equal(serving.images_from_request(parsed, SHAPE), expected)


# The real scoring app with a stand-in model: what a client of `mlflow models serve` sees.

STAND_IN_MODEL = '''
import mlflow
import numpy as np
from mlflow.models import set_model

from mlpipe_vision import serving


class BrightnessModel(mlflow.pyfunc.PythonModel):
    """Stands in for the network: an image is "light" as far as its mean pixel is bright."""

    def predict(self, context, model_input, params=None):
        batch = serving.images_from_request(model_input, (28, 28, 1))
        light = batch.reshape(len(batch), -1).mean(axis=1) / 255.0
        return serving.format_predictions(np.stack([1 - light, light], axis=1), ["dark", "light"])


set_model(BrightnessModel())
'''


def save_stand_in_model(model_dir, code_path, signature, input_example=None):
    import mlflow

    code_path.write_text(STAND_IN_MODEL)
    mlflow.pyfunc.save_model(
        str(model_dir),
        python_model=str(code_path),
        signature=signature,
        input_example=input_example,
        pip_requirements=[],
    )
    return mlflow.pyfunc.load_model(str(model_dir))


def output_only_signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    columns = [ColSpec("long", "class_id"), ColSpec("string", "class_name")]
    columns += [ColSpec("double", name) for name in ("probability", "p_dark", "p_light")]
    return ModelSignature(outputs=Schema(columns))


@pytest.fixture(scope="module", params=["no signature", "output-only signature and example"])
def scoring_app(request, tmp_path_factory):
    """MLflow's scoring app serving the stand-in model, saved as models-from-code."""
    root = tmp_path_factory.mktemp("stand_in")
    if request.param == "no signature":
        model = save_stand_in_model(root / "model", root / "model_code.py", None)
    else:
        example = pd.DataFrame(INTEGER_PIXELS[0, :, :, 0])
        signature = output_only_signature()
        model = save_stand_in_model(root / "model", root / "model_code.py", signature, example)
    assert model.metadata.get_input_schema() is None
    return scoring_server.init(model)


def post_invocations(app, body: str) -> tuple[int, dict]:
    """POST a JSON body to /invocations of an ASGI app, as uvicorn would; (status, JSON)."""
    messages = []
    request_sent = False

    async def receive():
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": body.encode(), "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects

    async def send(message):
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/invocations",
        "raw_path": b"/invocations",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 5000),
    }
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return status, json.loads(content)


@pytest.mark.parametrize("name", sorted(JSON_BODIES))
def test_the_scoring_server_answers_every_layout(scoring_app, name):
    text, expected = JSON_BODIES[name]
    status, answer = post_invocations(scoring_app, text)
    assert status == 200, answer
    predictions = answer["predictions"]
    assert len(predictions) == len(expected)
    light = expected.reshape(len(expected), -1).mean(axis=1) / 255.0
    for prediction, expected_light in zip(predictions, light, strict=True):
        assert prediction["p_light"] == pytest.approx(expected_light, rel=1e-5)
        assert prediction["class_name"] == ("light" if expected_light > 0.5 else "dark")
        assert set(prediction) == {"class_id", "class_name", "probability", "p_dark", "p_light"}


BAD_BODIES = {
    "table of the wrong size": (
        {"dataframe_split": {"data": np.zeros((27, 28), dtype=int).tolist()}},
        "got a table of 27 rows x 28 columns; expected 28 rows x 28 columns",
    ),
    "wrong number of columns": (
        {"dataframe_split": {"data": [[0] * 783]}},
        "1 rows x 783 columns",
    ),
    "text": ({"inputs": [["a"] * 784]}, "not a number"),
    "NaN": ({"dataframe_split": {"data": [[float("nan")] + [0] * 783]}}, "holds null or NaN"),
    "null": ({"dataframe_records": [{"0": None}]}, "column '0' row 0 holds null, not a number"),
    "out of range": ({"inputs": [[300] * 784]}, "expected raw pixel values from 0 to 255"),
    "corrupt image": ({"dataframe_records": [{"image": b64(b"GIF89a")}]}, "not a readable image"),
    "empty image": ({"inputs": {"image": [""]}}, "'image' row 0 is empty"),
    "unknown column": ({"dataframe_records": [{"label": 3}]}, "unknown column(s) ['label']"),
    "empty input": ({"inputs": []}, "empty tensor"),
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_the_scoring_server_answers_400_with_the_reason_and_stays_up(scoring_app, name):
    body, message = BAD_BODIES[name]
    status, answer = post_invocations(scoring_app, json.dumps(body))
    assert status == 400, answer
    assert answer["error_code"] == "BAD_REQUEST"
    assert message in answer["message"]
    status, _ = post_invocations(scoring_app, JSON_BODIES["inputs (N, H, W)"][0])
    assert status == 200


def tensor_signature():
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 28, 28))]))


def test_a_tensor_signature_would_refuse_layouts_before_predict(tmp_path):
    """Why the packaged model must carry no input schema: MLflow enforces it first."""
    model = save_stand_in_model(tmp_path / "model", tmp_path / "code.py", tensor_signature())
    app = scoring_server.init(model)
    assert post_invocations(app, JSON_BODIES["inputs (N, H, W)"][0])[0] == 200
    for name in ("dataframe_split HxW without columns", "inputs (N, H*W)", "dataframe_split image"):
        status, answer = post_invocations(app, JSON_BODIES[name][0])
        assert status == 400, name
        assert "schema" in answer["message"] or "signature" in answer["message"], name


def test_an_input_example_without_a_signature_would_truncate_flattened_rows(tmp_path):
    """MLflow infers 28 long columns from a 28x28 example, then drops columns 28 to 783."""
    example = pd.DataFrame(INTEGER_PIXELS[0, :, :, 0])
    model = save_stand_in_model(tmp_path / "model", tmp_path / "code.py", None, example)
    assert model.metadata.get_input_schema() is not None
    app = scoring_server.init(model)
    assert post_invocations(app, JSON_BODIES["dataframe_split HxW without columns"][0])[0] == 200
    status, answer = post_invocations(app, JSON_BODIES["dataframe_split N x H*W"][0])
    assert status == 400
    assert "got a table of 2 rows x 28 columns" in answer["message"]
    assert post_invocations(app, JSON_BODIES["dataframe_split image"][0])[0] == 400


def test_csv_bodies_work_too():
    header = ",".join(f"pixel{i}" for i in range(784))
    rows = [",".join(str(int(v)) for v in row) for row in FLAT]
    parsed = scoring_server.parse_csv_input(io.StringIO("\n".join([header, *rows])))
    np.testing.assert_array_equal(serving.images_from_request(parsed, SHAPE), PIXELS)


# ------------------------------------------------------------------------- request limits

SMALL_LIMITS = serving.RequestLimits(max_images=2, max_image_pixels=30 * 30)


@pytest.mark.parametrize(
    "model_input",
    [
        pd.DataFrame(np.zeros((3, 784))),
        np.zeros((3, 28, 28)),
        np.zeros((3, 784)),
        {"image": np.zeros((3, 28, 28, 1))},
        pd.DataFrame({"image": ["not even decoded"] * 3}),
        np.array(["not even decoded"] * 3),
    ],
    ids=["flattened rows", "tensor", "flat tensor", "named tensor", "image column", "text array"],
)
def test_more_images_than_the_limit_are_refused_in_every_layout(model_input):
    with pytest.raises(
        InvalidRequestError, match="3 images; at most 2 .*MLPIPE_MAX_REQUEST_IMAGES"
    ):
        serving.images_from_request(model_input, SHAPE, SMALL_LIMITS)


def test_the_image_count_limit_itself_is_accepted():
    assert serving.images_from_request(np.zeros((2, 28, 28)), SHAPE, SMALL_LIMITS).shape[0] == 2
    workshop = pd.DataFrame(np.zeros((28, 28), dtype=np.int64))  # 28 rows, one image
    assert serving.images_from_request(workshop, SHAPE, SMALL_LIMITS).shape[0] == 1


def test_an_encoded_image_over_the_pixel_limit_is_refused_from_its_header():
    large = encode(np.zeros((31, 30), dtype=np.uint8), ".png")
    table = pd.DataFrame({"image": [b64(large)]})
    with pytest.raises(InvalidRequestError, match=r"30x31 = 930 pixels; at most 900 .*PIXELS"):
        serving.images_from_request(table, SHAPE, SMALL_LIMITS)
    fitting = pd.DataFrame({"image": [b64(encode(np.zeros((30, 30), dtype=np.uint8), ".jpg"))]})
    assert serving.images_from_request(fitting, SHAPE, SMALL_LIMITS).shape == (1, 28, 28, 1)


def test_the_client_side_decodes_any_size():
    large = encode(np.zeros((300, 300), dtype=np.uint8), ".png")
    assert serving.prepare_images([large], SHAPE).shape == (1, 28, 28, 1)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, serving.RequestLimits(1000, 25_000_000)),
        ({"MLPIPE_MAX_REQUEST_IMAGES": "64"}, serving.RequestLimits(64, 25_000_000)),
        ({"MLPIPE_MAX_IMAGE_PIXELS": "4_000_000 "}, serving.RequestLimits(1000, 4_000_000)),
        ({"MLPIPE_MAX_IMAGE_PIXELS": ""}, serving.RequestLimits(1000, 25_000_000)),
    ],
)
def test_limits_are_read_from_the_environment(environ, expected):
    assert serving.RequestLimits.from_environment(environ) == expected


@pytest.mark.parametrize("value", ["0", "-5", "lots", "1e6", "2.5"])
def test_a_bad_limit_in_the_environment_names_the_variable(value):
    with pytest.raises(ValueError, match=f"MLPIPE_MAX_REQUEST_IMAGES='{value}' is not a positive"):
        serving.RequestLimits.from_environment({"MLPIPE_MAX_REQUEST_IMAGES": value})


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (encode(np.zeros((7, 9), dtype=np.uint8), ".png"), (9, 7)),
        (encode(np.zeros((5, 4, 3), dtype=np.uint8), ".jpg"), (4, 5)),
        (encode(np.zeros((6, 2), dtype=np.uint8), ".bmp"), (2, 6)),
    ],
)
def test_image_size_reads_the_header(data, expected):
    assert images.image_size(data) == expected


@pytest.mark.parametrize(("data", "message"), [(b"", "is empty"), (b"GIF? no", "not a readable")])
def test_image_size_refuses_what_is_not_an_image(data, message):
    with pytest.raises(ValueError, match=message):
        images.image_size(data, "upload")
