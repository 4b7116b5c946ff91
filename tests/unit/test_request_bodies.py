"""The client's request bodies: what they hold, and that the server reads them back."""

import base64
import json

import numpy as np
import pytest
from mlflow.pyfunc import scoring_server

from mlpipe_vision import request_bodies, serving
from tests.unit.test_serving_inputs import ENCODED, SHAPE


@pytest.mark.parametrize("request_format", request_bodies.REQUEST_FORMATS)
@pytest.mark.parametrize("count", [1, 3])
def test_request_body_round_trips_through_images_from_request(request_format, count):
    encoded = [ENCODED["grayscale png"], ENCODED["rgba png"], ENCODED["jpeg"]][:count]
    body = json.loads(json.dumps(request_bodies.request_body(encoded, request_format, SHAPE)))
    parsed = scoring_server.infer_and_parse_data(body)
    result = serving.images_from_request(parsed, SHAPE)
    np.testing.assert_array_equal(result, serving.prepare_images(encoded, SHAPE))


def test_request_body_writes_the_workshop_layout_for_one_image():
    body = request_bodies.request_body([ENCODED["grayscale png"]], "split", SHAPE)
    table = body["dataframe_split"]
    assert table["columns"] == list(range(28))
    assert len(table["data"]) == 28 and all(len(row) == 28 for row in table["data"])
    assert all(isinstance(value, int) and 0 <= value <= 255 for value in table["data"][14])


def test_request_body_refuses_an_unknown_format():
    with pytest.raises(ValueError, match=r"unknown request format 'csv'"):
        request_bodies.request_body([ENCODED["jpeg"]], "csv", SHAPE)


def test_base64_body_holds_each_file_as_it_is():
    body = request_bodies.base64_body([b"\x89PNG one", b"two"])
    assert body == {
        "dataframe_split": {
            "columns": ["image"],
            "data": [
                [base64.b64encode(b"\x89PNG one").decode()],
                [base64.b64encode(b"two").decode()],
            ],
        }
    }
