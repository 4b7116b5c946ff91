"""Folders of images, one subfolder per class (e.g. cell_images/Parasitized), as a `dataset/`.

`list_image_folder` finds the classes and files, `write_image_folder` holds out a seeded,
stratified test split and decodes the files CHUNK_IMAGES at a time, in parallel, into
`mlpipe_vision.fitted_shards.write_fitted_shards`. Each file's SHA-256 is recorded (none is
verified: there is no official copy to compare with) and unreadable files are skipped and
listed in meta.json.
"""

import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mlpipe_vision import datasets, fetch, images, splits
from mlpipe_vision.fitted_shards import CHUNK_IMAGES, write_fitted_shards


def _read_image_file(path: Path) -> tuple[np.ndarray | None, str]:
    data = path.read_bytes()
    try:
        return images.decode_image(data, str(path)), fetch.sha256_of_bytes(data)
    except ValueError:
        return None, fetch.sha256_of_bytes(data)


def list_image_folder(folder: str) -> tuple[list[str], list[Path], np.ndarray]:
    """The class names, image files and labels of a folder with one subfolder per class.

    Raises:
        ValueError: If the folder is missing or has fewer than two classes with images.
    """
    root = Path(folder)
    if not folder or not root.is_dir():
        raise ValueError(
            f"image folder {folder!r} does not exist; pass -P source=<folder with one "
            "subfolder of images per class>"
        )
    class_files = {}
    for class_dir in sorted(path for path in root.iterdir() if path.is_dir()):
        files = sorted(
            path
            for path in class_dir.rglob("*")
            if path.suffix.lower() in images.IMAGE_EXTENSIONS and path.is_file()
        )
        if files:
            class_files[class_dir.name] = files
    if len(class_files) < 2:
        raise ValueError(
            f"image folder {folder} has {len(class_files)} class subfolder(s) with images "
            f"({', '.join(class_files) or 'none'}); expected at least two, one per class, "
            f"holding {'/'.join(images.IMAGE_EXTENSIONS)} files"
        )
    paths = [path for files in class_files.values() for path in files]
    labels = np.concatenate(
        [np.full(len(files), index) for index, files in enumerate(class_files.values())]
    ).astype(np.int64)
    return list(class_files), paths, labels


class _FolderReader:
    """Decode a folder's files CHUNK_IMAGES at a time, in parallel, noting what it found.

    Attributes:
        records: A files.json record (name under the folder, SHA-256) per readable file.
        skipped: The position in `paths` of every file that is not a readable image.
    """

    def __init__(self, root: Path, paths: list[Path], labels: np.ndarray) -> None:
        self.root = root
        self.paths = paths
        self.labels = labels
        self.records: list[dict] = []
        self.skipped: list[int] = []

    def decoded(
        self, split_orders: dict[str, np.ndarray], description: str
    ) -> Iterator[tuple[str, np.ndarray, int]]:
        """Yield (split, decoded image, label) of every readable file, split by split.

        Args:
            split_orders: For each split, the positions in `paths` of its files, in the
                order they are to be stored.
            description: The progress bar's label.
        """
        with (
            ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool,
            tqdm(total=len(self.paths), desc=description, unit="image") as progress,
        ):
            for split, order in split_orders.items():
                for start in range(0, len(order), CHUNK_IMAGES):
                    chunk = order[start : start + CHUNK_IMAGES]
                    results = list(pool.map(_read_image_file, [self.paths[i] for i in chunk]))
                    for i, (image, sha256) in zip(chunk, results, strict=True):
                        if image is None:
                            self.skipped.append(int(i))
                            continue
                        name = str(self.paths[i].relative_to(self.root))
                        self.records.append({"name": name, "sha256": sha256, "verified": False})
                        yield split, image, int(self.labels[i])
                    progress.update(len(chunk))


def write_image_folder(
    folder: str,
    dataset_dir: Path,
    image_size: int = 100,
    channels: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 42,
    name: str = "image_dir",
) -> dict:
    """Read a folder with one subfolder of images per class (e.g. cell_images/Parasitized).

    The test split is chosen from the labels alone (seeded, stratified), then each split is
    decoded, fitted into image_size x image_size (aspect kept) and written, CHUNK_IMAGES
    files at a time, in a seeded random order.

    Returns:
        The meta.json record; unreadable files are left out and listed under "skipped".

    Raises:
        ValueError: If the folder is missing, has fewer than two classes with images, or a
            class has no readable image.
    """
    class_names, paths, labels = list_image_folder(folder)
    root = Path(folder)
    rng = np.random.default_rng(seed)
    train_index, test_index = splits.stratified_split(labels, test_fraction, seed)
    split_orders = {"train": rng.permutation(train_index), "test": rng.permutation(test_index)}
    reader = _FolderReader(root, paths, labels)
    split_shards, channels = write_fitted_shards(
        dataset_dir, reader.decoded(split_orders, f"reading {folder}"), image_size, channels
    )
    skipped_per_class = np.bincount(labels[reader.skipped], minlength=len(class_names))
    readable_per_class = np.bincount(labels, minlength=len(class_names)) - skipped_per_class
    for index, class_name in enumerate(class_names):
        if not readable_per_class[index]:
            raise ValueError(f"no readable image in class folder {root / class_name}")
    skipped = [str(paths[i]) for i in reader.skipped]
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}", stacklevel=2
        )
    return datasets.write_meta(
        dataset_dir,
        name,
        class_names,
        (image_size, image_size, channels),
        str(root.resolve()),
        reader.records,
        split_shards,
        skipped=skipped,
        test_fraction=test_fraction,
        seed=seed,
    )
