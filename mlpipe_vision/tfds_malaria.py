"""The TFDS `malaria` dataset (NIH cell images, one `train` split) as a `dataset/`.

TFDS downloads and prepares it (or finds it in `data_dir`), checking the download against
its own checksums; `write_tfds_malaria` holds out a seeded, stratified test split and streams
TFDS's decoded images into `mlpipe_vision.fitted_shards.write_fitted_shards`. Where TFDS
cannot reach the download, the same images unzipped as a folder go through
`mlpipe_vision.image_folders` instead (`-P dataset=image_dir`).
"""

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mlpipe_vision import console, datasets, splits
from mlpipe_vision.fitted_shards import write_fitted_shards


def _split_examples(
    examples: Iterable[tuple[np.ndarray, int]], is_test: np.ndarray
) -> Iterator[tuple[str, np.ndarray, int]]:
    """Tag each (image, label) of TFDS's order with its split; grayscale images become 2-D."""
    for position, (image, label) in enumerate(examples):
        split = "test" if is_test[position] else "train"
        yield split, image[:, :, 0] if image.shape[-1] == 1 else image, int(label)


def write_tfds_malaria(
    dataset_dir: Path,
    data_dir: str = "",
    image_size: int = 100,
    channels: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 42,
) -> dict:
    """Read the TFDS `malaria` dataset (one `train` split) and hold out a test split.

    The test split is chosen from the labels alone (a first pass that skips decoding the
    images); the images are then decoded, fitted and written chunk by chunk in TFDS's own
    order, which TFDS shuffled when it prepared the dataset.

    Returns:
        The meta.json record.

    Raises:
        ValueError: If TFDS can neither find nor download the dataset.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder("malaria", data_dir=data_dir or None)
    try:
        builder.download_and_prepare()
        label_pass = builder.as_dataset(
            split="train", decoders={"image": tfds.decode.SkipDecoding()}
        )
        labels = np.array([int(example["label"]) for example in tfds.as_numpy(label_pass)])
        examples = builder.as_dataset(split="train", as_supervised=True)
    except Exception as error:  # TFDS raises many kinds when offline or on bad data
        raise ValueError(
            f"TFDS could not prepare 'malaria' in {data_dir or tfds.core.constants.DATA_DIR} "
            f"({console.first_line(error)}). Pass -P data_dir=<TFDS folder that holds it>, or "
            "unzip cell_images.zip and pass -P dataset=image_dir -P source=<.../cell_images>."
        ) from error
    _, test_index = splits.stratified_split(labels, test_fraction, seed)
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test_index] = True
    with tqdm(
        tfds.as_numpy(examples), total=len(labels), desc="reading malaria", unit="image"
    ) as progress:
        split_shards, channels = write_fitted_shards(
            dataset_dir, _split_examples(progress, is_test), image_size, channels
        )
    # TFDS refuses downloads that do not match these checksums, so they count as verified.
    records = [
        {"name": info.filename or url, "sha256": info.checksum, "verified": True}
        for url, info in (builder.url_infos or {}).items()
    ]
    return datasets.write_meta(
        dataset_dir,
        "malaria",
        list(builder.info.features["label"].names),
        (image_size, image_size, channels),
        f"tfds:malaria:{builder.info.version}",
        records,
        split_shards,
        test_fraction=test_fraction,
        seed=seed,
        data_dir=data_dir,
    )
