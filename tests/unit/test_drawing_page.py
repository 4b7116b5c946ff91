"""The drawing page's request path, against a small local HTTP server standing for the model."""

import base64
import http.server
import json
import threading

import cv2
import numpy as np
import pytest

from mlpipe_vision import drawing_page, serving
from tests.conftest import free_port

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover"]


class FakeModelServer(http.server.BaseHTTPRequestHandler):
    """Answers like `mlflow models serve` of a packaged model, or refuses like it."""

    refuse_with: str | None = None
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeModelServer.received.append(body)
        if self.refuse_with:
            status, answer = 400, {"error_code": "BAD_REQUEST", "message": self.refuse_with}
        else:
            answer = serving.format_predictions(np.array([[0.1, 0.7, 0.2]]), CLASS_NAMES)
            status, answer = 200, {"predictions": answer.to_dict(orient="records")}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def model_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), FakeModelServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeModelServer.refuse_with = None
    FakeModelServer.received = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def stroke_on_transparent_canvas() -> np.ndarray:
    canvas = np.zeros((280, 280, 4), np.uint8)  # what the sketchpad sends: RGBA, clear
    cv2.line(canvas, (140, 40), (140, 240), (0, 0, 0, 255), 18)
    return canvas


def test_a_drawing_is_sent_as_a_base64_png_on_white_and_the_answer_charted(model_server):
    values, line = drawing_page.ask(model_server, stroke_on_transparent_canvas())
    assert line == "Trouser: 70.0%"
    assert values == pytest.approx({"T_shirt_top": 0.1, "Trouser": 0.7, "Pullover": 0.2})
    (body,) = FakeModelServer.received
    assert body["dataframe_split"]["columns"] == ["image"]
    png = base64.b64decode(body["dataframe_split"]["data"][0][0])
    sent = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert sent.shape == (280, 280, 3)
    assert sent[0, 0].tolist() == [255, 255, 255]  # the clear background became white
    assert sent[140, 140].tolist() == [0, 0, 0]  # the stroke stayed black


def test_a_refusal_shows_the_servers_message(model_server):
    FakeModelServer.refuse_with = "image 0 is not a PNG or JPEG image"
    values, line = drawing_page.ask(model_server, stroke_on_transparent_canvas())
    assert values == {}
    assert line == (
        "The model server refused the image (HTTP 400): image 0 is not a PNG or JPEG image"
    )


def test_no_server_is_a_clear_message_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    values, line = drawing_page.ask(url, stroke_on_transparent_canvas())
    assert values == {}
    assert line.startswith(f"No model server answers at {url}. Start one (make serve")


@pytest.mark.parametrize("image", [None, np.zeros((280, 280, 4), np.uint8)])
def test_an_empty_canvas_asks_nothing(model_server, image):
    assert drawing_page.ask(model_server, image) == ({}, drawing_page.DRAW_PROMPT)
    assert FakeModelServer.received == []


def test_an_uploaded_color_photo_is_sent_in_its_colors(model_server):
    photo = np.zeros((32, 48, 3), np.uint8)
    photo[:, :, 0] = 200  # red in RGB, as Gradio gives it
    drawing_page.ask(model_server, photo)
    png = base64.b64decode(FakeModelServer.received[0]["dataframe_split"]["data"][0][0])
    sent = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)  # BGR
    assert sent[0, 0].tolist() == [0, 0, 200]
