"""Decoded images of any size in, a split's uint8 shards of one size out, a chunk at a time.

Folders of images (`mlpipe_vision.image_folders`) and TFDS (`mlpipe_vision.tfds_malaria`)
both hand `write_fitted_shards` a stream of decoded images with their split and label. It
fits CHUNK_IMAGES of a split at a time into image_size x image_size (aspect kept, see
`mlpipe_vision.images.fit_image`) and writes them as that split's shards (see
`mlpipe_vision.shards`), so memory stays flat however many images there are.
"""

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mlpipe_vision import images, shards

CHUNK_IMAGES = 256


class FittedImageWriter:
    """Fit decoded images to one size and write them as the shards of their split.

    With `channels=None` the images are kept in colour until every image has been seen; if
    all were grayscale the shards are then rewritten with one channel (a fitted grey image's
    first channel is exactly its one-channel fit), so no second decoding pass is needed.
    """

    def __init__(self, dataset_dir: Path, image_size: int, channels: int | None) -> None:
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 or 3 (or empty to decide), got {channels}")
        self.dataset_dir = dataset_dir
        self.image_size = image_size
        self.channels = channels
        self.all_grayscale = True
        self.writers: dict[str, shards.ShardWriter] = {}

    def add(
        self, split: str, decoded: list[np.ndarray], labels: np.ndarray, pool: ThreadPoolExecutor
    ) -> None:
        """Fit one chunk of decoded images of `split` and hand it to that split's shards."""
        if not decoded:
            return
        channels = self.channels or 3
        if self.channels is None:
            self.all_grayscale = self.all_grayscale and all(map(images.is_grayscale, decoded))
        size = self.image_size
        fitted = np.stack(
            list(pool.map(lambda i: images.fit_image(i, size, size, channels), decoded))
        )
        if split not in self.writers:
            self.writers[split] = shards.ShardWriter(self.dataset_dir, split, fitted.shape[1:])
        self.writers[split].add(fitted, labels)

    def close(self) -> tuple[dict[str, list[dict]], int]:
        """Write the last shards; returns (shard records by split, channels)."""
        split_shards = {split: writer.close() for split, writer in self.writers.items()}
        if self.channels is not None or not self.all_grayscale:
            return split_shards, self.channels or 3
        for records in split_shards.values():
            for record in records:
                path = self.dataset_dir / record["file"]
                with np.load(path) as data:
                    gray, labels = data["images"][..., :1], data["labels"]
                np.savez(path, images=np.ascontiguousarray(gray), labels=labels)
                record.update(shards.file_record(path))
        return split_shards, 1


def write_fitted_shards(
    dataset_dir: Path,
    examples: Iterable[tuple[str, np.ndarray, int]],
    image_size: int,
    channels: int | None,
) -> tuple[dict[str, list[dict]], int]:
    """Fit a stream of decoded images and write each split's shards, in the stream's order.

    Args:
        dataset_dir: The `dataset/` folder the shards go into.
        examples: (split, decoded image, label) triples; images 2-D (grayscale) or
            (H, W, C), of any size.
        image_size: Square size every image is fitted into.
        channels: 1 or 3; None decides from the images (1 only if every one is grayscale).

    Returns:
        (shard records by split, for meta.json; the channels the shards hold).

    Raises:
        ValueError: If `channels` is not 1, 3 or None.
    """
    writer = FittedImageWriter(dataset_dir, image_size, channels)
    pending: dict[str, tuple[list[np.ndarray], list[int]]] = {}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for split, image, label in examples:
            decoded, labels = pending.setdefault(split, ([], []))
            decoded.append(image)
            labels.append(label)
            if len(decoded) == CHUNK_IMAGES:
                writer.add(split, decoded, np.array(labels, dtype=np.int64), pool)
                pending[split] = ([], [])
        for split, (decoded, labels) in pending.items():
            writer.add(split, decoded, np.array(labels, dtype=np.int64), pool)
    return writer.close()
