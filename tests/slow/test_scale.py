"""Memory stays flat as the data grows: every stage on a folder and on one twice its size.

The folders hold malaria-like cells (bench/scale.py's synthetic ones), fitted to 224x224 RGB
as for VGG16: 2,000 images are 301 MB of uint8 pixels, so a stage that held the images in
memory would grow by at least that much (several times more as float32), while a streaming
stage holds a shard or two (436 images of 64 MB each) whatever the size; both sizes span
several shards, so neither is favoured by a small last shard. Nothing here is timed; peak
memory is the sum of VmHWM over the `mlflow run` process tree.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import pytest

from bench.scale import CLASS_FOLDERS, cell_image, replicate
from tests.conftest import mlflow_run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow(reason="runs every stage twice on a few thousand generated images"),
]

IMAGES = 2000
IMAGE_SIZE = 224
PIXEL_BYTES = IMAGES * IMAGE_SIZE * IMAGE_SIZE * 3
# Growth allowed from 1x to 2x, as a share of the added pixels' uint8 bytes (in-memory
# stages grow by 100 % to 800 % of them).
ALLOWED_GROWTH = 0.4


def write_cells(root: Path, count: int) -> Path:
    for folder in CLASS_FOLDERS:
        (root / folder).mkdir(parents=True)

    def write(index: int) -> None:
        path = root / CLASS_FOLDERS[index % 2] / f"cell_{index:05d}.png"
        cv2.imwrite(str(path), cell_image(index, parasitized=index % 2 == 0))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(write, range(count)))
    return root


def run_stages(tracking: dict, folder: Path) -> dict[str, dict]:
    get_data = mlflow_run(
        tracking, "get_data", dataset="image_dir", source=folder, image_size=IMAGE_SIZE
    )
    data_uri = f"runs:/{get_data['run_id']}/dataset"
    explore = mlflow_run(tracking, "explore_data", data=data_uri)
    preprocess = mlflow_run(tracking, "preprocess", data=data_uri)
    preprocessed_uri = f"runs:/{preprocess['run_id']}/preprocessed"
    train = mlflow_run(
        tracking, "train", data=preprocessed_uri, epochs=1, conv_filters=8, dense_units=16
    )
    return {"get_data": get_data, "explore_data": explore, "preprocess": preprocess, "train": train}


@pytest.fixture(scope="module")
def both_sizes(tracking, tmp_path_factory) -> dict[int, dict[str, dict]]:
    root = tmp_path_factory.mktemp("scale")
    original = write_cells(root / "1x", IMAGES)
    doubled = replicate(original, 2, root / "2x")
    return {1: run_stages(tracking, original), 2: run_stages(tracking, doubled)}


@pytest.mark.parametrize("stage", ["get_data", "explore_data", "preprocess", "train"])
def test_peak_memory_does_not_grow_with_the_number_of_images(both_sizes, stage):
    single, double = both_sizes[1][stage]["peak_rss"], both_sizes[2][stage]["peak_rss"]
    growth = double - single
    print(f"{stage}: {single / 2**20:.0f} MB at 1x, {double / 2**20:.0f} MB at 2x")
    assert growth < ALLOWED_GROWTH * PIXEL_BYTES, (stage, single, double)


def test_preprocessed_artifact_is_no_larger_than_the_pixels(use_tracking, both_sizes):
    run_id = both_sizes[2]["preprocess"]["run_id"]
    artifact_dir = Path(
        use_tracking["client"].get_run(run_id).info.artifact_uri.removeprefix("file://")
    )
    stored = sum(path.stat().st_size for path in (artifact_dir / "preprocessed").rglob("*"))
    # Every image once, as uint8, plus its label and the files' headers (float32 would be 4x).
    assert 2 * PIXEL_BYTES <= stored <= 1.01 * 2 * PIXEL_BYTES
