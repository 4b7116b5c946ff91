"""The drawing page: a canvas and an upload that ask a served model and chart its answer.

The page is a client of `mlflow models serve` like any other: it sends the image as the base64
PNG request the packaged model accepts and shows the answer's probability columns, so what it
shows is what curl would get. Class names come from the answer (its `class_name` and its
`p_<class>` columns), so the page works for any packaged model. The request path here needs no
Gradio; `build` imports it (the `app` extra).
"""

import re

import cv2
import numpy as np
import requests

from mlpipe_vision.request_bodies import base64_body
from mlpipe_vision.serving import PROBABILITY_PREFIX

DRAW_PROMPT = "Draw on the canvas or upload an image."
# Gradio's sketchpad starts with no tool chosen ("select the draw tool to start"); the page
# chooses the brush as soon as the canvas appears, so the first stroke draws.
SELECT_BRUSH_JS = """
() => {
    const choose = () => {
        const brush = document.querySelector('#canvas button[aria-label="Brush"]');
        if (brush) { brush.click(); } else { setTimeout(choose, 100); }
    };
    choose();
}
"""


def flatten(image: np.ndarray) -> np.ndarray:
    """An RGB, RGBA or gray drawing as 8-bit pixels, transparency laid on white.

    The canvas is transparent where nothing was drawn; a model trained on dark-on-light or
    light-on-dark images needs the background as a colour, and the served model inverts light
    backgrounds itself.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 4:
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        white = np.full_like(image[:, :, :3], 255, dtype=np.float32)
        image = (image[:, :, :3] * alpha + white * (1.0 - alpha)).astype(np.uint8)
    return image


def is_blank(image: np.ndarray) -> bool:
    """True when every pixel has the same value: an empty canvas."""
    return bool(image.size == 0 or image.min() == image.max())


def request_body(image: np.ndarray) -> dict:
    """The base64 PNG request of one image, as `png_to_pandas.py --format base64` writes it."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # OpenCV writes BGR
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"could not encode an image of shape {image.shape} as PNG")
    return base64_body([png.tobytes()])


def chart_values(row: dict) -> dict[str, float]:
    """Class name to probability, from one row of the answer.

    The top class is named exactly as the answer's `class_name`; the others by their
    `p_<class>` column (the class name made identifier-safe, as the model names them).
    """
    values = {
        key.removeprefix(PROBABILITY_PREFIX): float(value)
        for key, value in row.items()
        if key.startswith(PROBABILITY_PREFIX)
    }
    top_column = max(values, key=values.get)
    values[str(row["class_name"])] = values.pop(top_column)
    return values


def server_message(response: requests.Response) -> str:
    """The reason a server gave for refusing a request: MLflow's JSON `message`, or the text."""
    try:
        message = response.json().get("message", "")
    except ValueError:
        message = ""
    return re.sub(r"\s+", " ", message or response.text).strip()[:500]


def ask(server_url: str, image: np.ndarray | None, timeout: float = 30.0) -> tuple[dict, str]:
    """Send one image to the served model.

    Returns:
        (class name -> probability, or {} when there is no answer; one line for the page:
        the answer, the server's refusal, or why no server answered).
    """
    if image is None:
        return {}, DRAW_PROMPT
    image = flatten(image)
    if is_blank(image):
        return {}, DRAW_PROMPT
    url = f"{server_url.rstrip('/')}/invocations"
    try:
        response = requests.post(url, json=request_body(image), timeout=timeout)
    except requests.ConnectionError:
        return {}, (
            f"No model server answers at {server_url}. Start one (make serve, or mlflow models "
            "serve -m <model URI> -p <port>) and draw again, or restart this page with "
            "SERVER_URL set to it."
        )
    except requests.Timeout:
        return {}, f"The model server at {server_url} did not answer in {timeout:.0f} s."
    if response.status_code != 200:
        return {}, (
            f"The model server refused the image (HTTP {response.status_code}): "
            f"{server_message(response)}"
        )
    try:
        row = response.json()["predictions"][0]
        values = chart_values(row)
    except (ValueError, KeyError, IndexError, TypeError):
        return {}, (
            f"{server_url} answered, but not like a packaged mlpipe model: {response.text[:200]}"
        )
    return values, f"{row['class_name']}: {float(row['probability']):.1%}"


def build(server_url: str):
    """The page: a sketchpad and an upload on the left, the answer's bar chart on the right.

    The chart updates when a stroke ends and when an image is uploaded.
    """
    import gradio as gr  # the `app` extra: pip install -e ".[app]"

    def answer(editor_value: dict | None) -> tuple[dict, str]:
        composite = editor_value.get("composite") if editor_value else None
        return ask(server_url, composite)

    def answer_upload(image: np.ndarray | None) -> tuple[dict, str]:
        return ask(server_url, image)

    # No analytics: the page phones no one but the model server.
    with gr.Blocks(title="mlpipe: ask the served model", analytics_enabled=False) as page:
        gr.Markdown(f"## Draw, and the model served at {server_url} answers")
        with gr.Row():
            with gr.Column():
                canvas = gr.Sketchpad(
                    label="Draw here",
                    type="numpy",
                    canvas_size=(280, 280),
                    brush=gr.Brush(default_size=18, colors=["#000000"], color_mode="fixed"),
                    elem_id="canvas",
                )
                upload = gr.Image(
                    label="or upload an image",
                    type="numpy",
                    sources=["upload", "clipboard"],
                    elem_id="upload",
                )
            with gr.Column():
                chart = gr.Label(label="The model's answer", num_top_classes=10, elem_id="answer")
                status = gr.Markdown(DRAW_PROMPT, elem_id="status")
        canvas.change(
            answer, canvas, [chart, status], trigger_mode="always_last", show_progress="hidden"
        )
        upload.change(answer_upload, upload, [chart, status], show_progress="hidden")
    return page


def serve(server_url: str, host: str, port: int) -> None:
    """Build the page and serve it on host:port until interrupted."""
    build(server_url).launch(server_name=host, server_port=port, quiet=True, js=SELECT_BRUSH_JS)
