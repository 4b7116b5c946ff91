"""The drawing page in a real headless browser, asking a really served packaged model.

Chromium and its driver come from the system's packages (`apt-get install chromium
chromium-driver`, as .ci/run does); Selenium drives them. A stroke is drawn on the page's
canvas with the mouse, and the answer must appear as a class name and a probability.
UPDATE_SCREENSHOT=1 also writes the page to docs/drawing_page.png (the README's picture).
"""

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
import requests

from tests.conftest import PACKAGED_MODEL_NAME, REPO_DIR, free_port, served_model

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow(reason="serves a model, starts the page and a headless browser"),
]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOT = REPO_DIR / "docs" / "drawing_page.png"


@contextlib.contextmanager
def drawing_page(server_url: str, log_path: Path) -> Iterator[str]:
    """`python app.py` against server_url on a free port, until the block ends."""
    port = free_port()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "app.py", "--server-url", server_url, "--port", str(port)],
            cwd=REPO_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(url, timeout=5).status_code == 200:
                    break
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("chromium is missing: apt-get install chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1200,900")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def draw_a_stroke(browser, page_url: str) -> None:
    """Open the page and draw a vertical stroke across the middle of the canvas."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page_url)
    canvas = WebDriverWait(browser, 60).until(
        expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, "#canvas canvas"))
    )
    actions = ActionChains(browser)
    actions.move_to_element_with_offset(canvas, 0, -60).click_and_hold()
    for _ in range(12):
        actions.move_by_offset(0, 10)
    actions.release().perform()


def page_status(browser, pattern: str, seconds: float = 60) -> str:
    """Wait for the answer and status text to match `pattern`; return that text."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + seconds
    text = ""
    while time.monotonic() < deadline:
        text = " ".join(
            element.text for element in browser.find_elements(By.CSS_SELECTOR, "#answer, #status")
        )
        if re.search(pattern, text):
            return text
        time.sleep(0.5)
    raise AssertionError(f"the page never showed {pattern!r}; it shows: {text!r}")


def test_a_stroke_on_the_canvas_shows_the_served_models_answer(
    tracking, packaged, browser, tmp_path
):
    with (
        served_model(
            f"models:/{PACKAGED_MODEL_NAME}@champion", tracking["uri"], tmp_path / "serve.log"
        ) as server,
        drawing_page(server["url"], tmp_path / "page.log") as page_url,
    ):
        draw_a_stroke(browser, page_url)
        # The tiny model's classes are the digits: "<digit>: <probability>%".
        text = page_status(browser, r"\b\d: \d{1,3}\.\d%")
        browser.save_screenshot(str(tmp_path / "page.png"))
    assert re.search(r"\b\d\b", text), text
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        shrink_screenshot(tmp_path / "page.png", SCREENSHOT)


def test_without_a_model_server_the_page_says_so(browser, tmp_path):
    missing = f"http://127.0.0.1:{free_port()}"
    with drawing_page(missing, tmp_path / "page.log") as page_url:
        draw_a_stroke(browser, page_url)
        page_status(browser, re.escape(f"No model server answers at {missing}"))


def shrink_screenshot(source: Path, target: Path) -> None:
    """The page at half size, small enough to commit."""
    image = cv2.imread(str(source))
    image = cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    target.parent.mkdir(exist_ok=True)
    cv2.imwrite(str(target), image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
