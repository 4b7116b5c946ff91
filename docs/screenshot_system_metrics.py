"""Screenshot MLflow's system-metrics charts of a real train run, for the README.

What it does, all in a temporary folder that is removed at the end (also on failure):
1. starts `mlflow server` (sqlite store, proxied artifacts) on a free port of 127.0.0.1 and
   waits for its /health;
2. runs the project's own stages against it, as a user would: `download.py` (Fashion-MNIST
   from --source, default /usr/share/datasets/fashion-mnist), `preprocess.py` on a few
   percent of it and `train.py` for a few epochs, with MLflow sampling system metrics every
   second and logging each sample, so the charts have a point per second;
3. opens the train run's "System metrics" tab in headless Chromium (Selenium, with the
   system's chromium and chromedriver: `apt-get install chromium chromium-driver`), waits
   until the charts have drawn, closes MLflow's assistant panel and sidebar, hides Plotly's
   toolbar and saves the 1400x1340 viewport (all eight `system/*` charts) as a PNG.

Run it from the repository's root:

    python docs/screenshot_system_metrics.py                # writes docs/system_metrics.png
    python docs/screenshot_system_metrics.py --epochs 4 --output /tmp/shot.png
"""

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))

from team_stack import wait_until_up  # noqa: E402
from tests.conftest import FASHION_MNIST_DIR, free_port  # noqa: E402

CHART_TITLES = ("cpu_utilization_percentage", "system_memory_usage_megabytes")


@contextlib.contextmanager
def tracking_server(folder: Path) -> Iterator[str]:
    """`mlflow server` on a sqlite store in folder, on a free port, until the block ends."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "server"]
    command += ["--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    command += ["--artifacts-destination", str(folder / "artifacts")]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log_path = folder / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until_up(url, process, log_path)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        process.wait(timeout=30)


def run_stage(script: str, url: str, folder: Path, *arguments: str) -> str:
    """Run one stage against the server; return the ID of the run it logged."""
    import mlflow

    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": url,
        "MLPIPE_CACHE_DIR": str(folder / "cache"),
        "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1",
        "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING": "1",
        "PYTHONPATH": str(REPO_DIR),
    }
    print(f"running {script} {' '.join(arguments)}", flush=True)
    completed = subprocess.run([sys.executable, script, *arguments], cwd=REPO_DIR, env=env)
    if completed.returncode != 0:
        raise SystemExit(f"error: {script} failed (exit status {completed.returncode}), see above")
    runs = mlflow.MlflowClient(tracking_uri=url).search_runs(
        ["0"], order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0].info.run_id


def train_run(url: str, folder: Path, source: Path, percentage: float, epochs: int) -> str:
    """get_data, preprocess and train against the server; return the train run's ID."""
    data = run_stage(
        "download.py", url, folder, "--dataset", "fashion_mnist", "--source", str(source)
    )
    preprocessed = run_stage(
        "preprocess.py", url, folder, "--data", f"runs:/{data}/dataset",
        "--percentage", str(percentage),
    )  # fmt: skip
    return run_stage(
        "train.py", url, folder, "--data", f"runs:/{preprocessed}/preprocessed",
        "--epochs", str(epochs), "--device", "cpu",
    )  # fmt: skip


def screenshot(page_url: str, output: Path, width: int, height: int, seconds: float) -> None:
    """Open page_url in headless Chromium, wait for the system-metrics charts, save a PNG.

    The viewport is set to exactly width x height. MLflow's assistant panel and the sidebar
    are closed and Plotly's toolbar hidden, so the charts get the width.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not (chromium and chromedriver):
        raise SystemExit("error: chromium is missing: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        driver.get(page_url)
        deadline = time.monotonic() + seconds
        while not charts_drawn(driver):
            if time.monotonic() > deadline:
                driver.save_screenshot(str(output))
                raise SystemExit(f"error: no charts in {seconds:.0f} s; the page is in {output}")
            time.sleep(1)
        for label in ("Close", "Toggle sidebar"):  # the assistant panel, the sidebar
            for button in driver.find_elements(By.CSS_SELECTOR, f"button[aria-label='{label}']"):
                button.click()
        driver.execute_script(
            "const style = document.createElement('style');"
            "style.textContent = '.modebar-container { display: none !important; }';"
            "document.head.appendChild(style);"
        )
        time.sleep(3)  # the charts redraw at their new width
        if not charts_drawn(driver):
            raise SystemExit("error: the charts vanished after closing the side panels")
        driver.save_screenshot(str(output))
    finally:
        driver.quit()


def charts_drawn(driver) -> bool:
    """The charts named in CHART_TITLES are on the page and each chart has drawn its line."""
    from selenium.webdriver.common.by import By

    page = driver.execute_script("return document.body.textContent")
    if not all(title in page for title in CHART_TITLES):
        return False
    cards = driver.find_elements(
        By.CSS_SELECTOR, "[data-testid='experiment-view-compare-runs-card']"
    )
    lines = driver.find_elements(By.CSS_SELECTOR, ".js-line")
    return bool(cards) and len(lines) >= len(cards)


def stop_on_sigterm() -> None:
    """Let SIGTERM unwind like Ctrl-C, so the server stops and the folder goes."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def main() -> None:
    """Parse the options, train against a temporary server, take the screenshot."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output", type=Path, default=Path("docs/system_metrics.png"), help="the PNG to write"
    )
    parser.add_argument("--source", type=Path, default=FASHION_MNIST_DIR,
                        help="folder of the four Fashion-MNIST IDX files")  # fmt: skip
    parser.add_argument("--percentage", type=float, default=5, help="share of the data to keep")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the train run")
    parser.add_argument("--width", type=int, default=1400, help="viewport width in pixels")
    parser.add_argument("--height", type=int, default=1340, help="viewport height in pixels")
    parser.add_argument("--wait", type=float, default=90, help="seconds to wait for the charts")
    arguments = parser.parse_args()
    stop_on_sigterm()
    output = arguments.output.resolve()
    with tempfile.TemporaryDirectory(prefix="mlpipe-shot-") as name:
        folder = Path(name)
        with tracking_server(folder) as url:
            run_id = train_run(
                url, folder, arguments.source, arguments.percentage, arguments.epochs
            )
            page_url = f"{url}/#/experiments/0/runs/{run_id}/system-metrics"
            print(f"opening {page_url}", flush=True)
            screenshot(page_url, output, arguments.width, arguments.height, arguments.wait)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
