"""Datasets: the `Dataset` type, the `dataset/` artifact and the get_data stage.

Every dataset ends up as the same thing: a `dataset/` folder of uint8 image shards of shape
(N, H, W, C) with integer labels (see `mlpipe_vision.shards`), and a meta.json with the class
names and a record of where each source file came from and whether its SHA-256 matched the
official one. Each source has its own module: `mlpipe_vision.idx_files` (MNIST and
Fashion-MNIST, downloaded, checked and cached), `mlpipe_vision.image_folders` (one subfolder
of images per class) and `mlpipe_vision.tfds_malaria` (TFDS); `write_dataset` picks one by
name, and `run_get_data` at the bottom is the MLflow edge.
"""

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.tracking.context import registry as context_registry

from mlpipe_vision import artifacts, console, fetch, lineage, shards

DATASET_NAMES = ("mnist", "fashion_mnist", "malaria", "image_dir")

# Larger squares than this are a mistake, not a dataset: 4096x4096 RGB is 48 MB an image.
MAX_IMAGE_SIZE = 4096


@dataclass
class Dataset:
    """A labelled image dataset split into train and test, with its provenance."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    name: str
    source: str
    files: list[dict] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of every image."""
        return tuple(int(size) for size in self.train_images.shape[1:])

    @property
    def verified(self) -> bool:
        """True when every source file matched its official checksum."""
        return all(record["verified"] for record in self.files)


# ------------------------------------------------------------------- the dataset/ artifact
#
# Every source ends in a `write_*` function that puts a `dataset/` folder on disk: meta.json
# (`write_meta`) and each split as uint8 shards (see `mlpipe_vision.shards`), each split in a
# seeded random order. Folders of images and TFDS are decoded and fitted chunk by chunk
# (`mlpipe_vision.fitted_shards`), so memory stays flat however many images there are; IDX
# datasets are small and fixed and are read whole, then written by `save_dataset`.


def write_meta(
    dataset_dir: Path,
    name: str,
    class_names: list[str],
    image_shape: tuple[int, ...],
    source: str,
    files: list[dict],
    split_shards: dict[str, list[dict]],
    **details: object,
) -> dict:
    """Write a `dataset/` folder's meta.json, and the source files' records as files.json.

    The records (one per image for a folder of images) stay out of meta.json, which every
    later stage reads; meta.json keeps their digest.

    Returns:
        The meta.json record.
    """
    (dataset_dir / artifacts.FILES_FILE).write_text(json.dumps(files, indent=1))
    meta = {
        "dataset": name,
        "class_names": list(class_names),
        "image_shape": [int(size) for size in image_shape],
        "source": source,
        "verified": bool(files) and all(record["verified"] for record in files),
        "files_digest": fetch.sha256_of_bytes(
            json.dumps([record["sha256"] for record in files]).encode()
        ),
        "counts": shards.counts(split_shards),
        "format": shards.FORMAT,
        "shards": split_shards,
        **details,
    }
    (dataset_dir / artifacts.META_FILE).write_text(json.dumps(meta, indent=2))
    return meta


def save_dataset(dataset: Dataset, dataset_dir: Path, seed: int = 42) -> dict:
    """Write an in-memory dataset as a `dataset/` folder, each split in a seeded random order.

    Returns:
        The meta.json record.
    """
    rng = np.random.default_rng(seed)
    split_shards = {}
    for split, images_, labels in (
        ("train", dataset.train_images, dataset.train_labels),
        ("test", dataset.test_images, dataset.test_labels),
    ):
        order = rng.permutation(len(labels))
        split_shards[split] = shards.write_split(dataset_dir, split, images_[order], labels[order])
    return write_meta(
        dataset_dir,
        dataset.name,
        dataset.class_names,
        dataset.image_shape,
        dataset.source,
        dataset.files,
        split_shards,
        **dataset.details,
    )


def read_dataset(dataset_dir: Path) -> Dataset:
    """Read a whole `dataset/` folder into memory: for small data and tests, not the stages."""
    meta = artifacts.read_dataset_meta(dataset_dir)
    train_images, train_labels = shards.read_split(dataset_dir, meta, "train")
    test_images, test_labels = shards.read_split(dataset_dir, meta, "test")
    return Dataset(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        class_names=meta["class_names"],
        name=meta["dataset"],
        source=meta["source"],
        files=json.loads((Path(dataset_dir) / artifacts.FILES_FILE).read_text()),
    )


def check_parameters(image_size: int, channels: int | None, test_fraction: float) -> None:
    """Refuse impossible get_data parameters before any file is read.

    Raises:
        ValueError: Naming the bad value and what would be right.
    """
    if not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be a whole number from 1 to {MAX_IMAGE_SIZE} (pixels of the "
            f"square images are fitted into), got {image_size}"
        )
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or 0 (decide from the images), got {channels}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")


def write_dataset(
    dataset: str,
    dataset_dir: Path,
    source: str = "",
    verify: bool = True,
    image_size: int = 100,
    channels: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 42,
    data_dir: str = "",
) -> dict:
    """Get any supported dataset by name and write it as a `dataset/` folder.

    Args:
        dataset: One of DATASET_NAMES.
        dataset_dir: The folder to write.
        source: Folder or mirror URL (IDX datasets), or the image folder (image_dir).
        verify: For IDX datasets, refuse files that do not match the official SHA-256.
        image_size: Square size for malaria and image_dir (IDX datasets stay 28x28).
        channels: 1 or 3 for malaria and image_dir; None decides from the images.
        test_fraction: Held-out test share for malaria and image_dir.
        seed: Seed of that split and of the stored order.
        data_dir: TFDS data folder for malaria.

    Returns:
        The meta.json record.

    Raises:
        ValueError: For an unknown name (listing the valid ones) or bad data.
    """
    # Imported here, not at the top: each source module builds on this module's `Dataset`
    # and `write_meta`, so importing them above would be circular.
    from mlpipe_vision import idx_files, image_folders, tfds_malaria

    check_parameters(image_size, channels, test_fraction)

    if dataset in idx_files.IDX_DATASETS:
        return save_dataset(
            idx_files.load_idx_dataset(dataset, source=source, verify=verify), dataset_dir, seed
        )
    if dataset == "image_dir" or (dataset == "malaria" and source):
        return image_folders.write_image_folder(
            source, dataset_dir, image_size, channels, test_fraction, seed, name=dataset
        )
    if dataset == "malaria":
        return tfds_malaria.write_tfds_malaria(
            dataset_dir, data_dir, image_size, channels, test_fraction, seed
        )
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASET_NAMES)}")


def dataset_input(meta: dict) -> MetaDataset:
    """The dataset as an MLflow input record: its name, source and a digest of its files.

    MLflow's numpy dataset would hash the pixels in memory; the files' checksums identify
    the data as well without reading it.
    """
    digest = meta["files_digest"][:8]
    # MLflow resolves paths and URLs as sources; a TFDS name it cannot, so that dataset is
    # recorded with this run's code as its source instead.
    if meta["source"].startswith("tfds:"):
        source = CodeDatasetSource(tags=context_registry.resolve_tags())
    else:
        # MLflow registers its local-file source twice (for "file" and for no scheme) and
        # warns that a path "can be interpreted in multiple ways": both are the same.
        with console.without_warning("The specified dataset source can be"):
            source = resolve_dataset_source(meta["source"])
    return MetaDataset(source=source, name=meta["dataset"], digest=digest)


def run_get_data(
    dataset: str,
    source: str = "",
    verify: bool = True,
    image_size: int = 100,
    channels: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 42,
    data_dir: str = "",
) -> str:
    """The get_data stage: get a dataset, log it as `dataset/`, print the next command.

    Args: as `write_dataset`.

    Returns:
        The `runs:/<run_id>/dataset` URI.
    """
    with tempfile.TemporaryDirectory(prefix="mlpipe_get_data_") as tmp:
        dataset_dir = Path(tmp) / "dataset"
        meta = write_dataset(
            dataset,
            dataset_dir,
            source,
            verify,
            image_size,
            channels,
            test_fraction,
            seed,
            data_dir,
        )
        with lineage.start_stage_run("get_data", name=f"get_data {meta['dataset']}") as run:
            mlflow.log_artifacts(str(dataset_dir), "dataset")
            mlflow.log_input(dataset_input(meta), context="train")
            mlflow.set_tags(
                {
                    artifacts.DATASET_TAG: meta["dataset"],
                    artifacts.VERIFIED_TAG: str(meta["verified"]).lower(),
                }
            )
            mlflow.log_metrics(
                {"train_examples": meta["counts"]["train"], "test_examples": meta["counts"]["test"]}
            )
            data_uri = artifacts.artifact_uri(run.info.run_id, "dataset")
    status = "verified" if meta["verified"] else "NOT verified against official checksums"
    print(
        f"\n{meta['dataset']}: {meta['counts']['train']} train / {meta['counts']['test']} test "
        f"images of shape {tuple(meta['image_shape'])}, {len(meta['class_names'])} classes "
        f"({status})"
    )
    print(f"dataset URI: {data_uri}")
    lineage.print_next("explore_data", data=data_uri)
    return data_uri
