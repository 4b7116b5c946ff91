"""Splits stored as shards: uint8 image chunks written, read and streamed one at a time.

The `dataset/` artifact of get_data and the `preprocessed/` artifact of preprocess hold each
split as numbered `.npz` files (`train-00000.npz`, ...) of at most SHARD_BYTES of pixels, with
`images` (uint8, N x H x W x C) and `labels` (int64), and list them in meta.json under
"shards". No stage holds more than a shard or two of pixels at a time, so memory does not
grow with the number of images. Pixels stay uint8: normalization happens on the fly, with
the same `images.normalize` the served model uses.

get_data writes every split in a seeded random order, so every shard is a random sample of
its split and a stage that reads shards in order (or picks them in random order, as training
does) sees the classes mixed.

Each shard's record holds its size and SHA-256, computed as it is written; `verify` checks
them before a stage spends time on the data, so a truncated or corrupt file stops the stage
at once with one line instead of a TensorFlow error after training.
"""

import hashlib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mlpipe_vision import fetch

SHARD_BYTES = 64 * 2**20
FORMAT = "npz shards of uint8 images"


class ShardWriter:
    """Collect (images, labels) chunks of one split and write them as shards of fixed size.

    Args:
        folder: Where the shard files go.
        split: Name of the split, the start of every file name ("train", "test", ...).
        image_shape: (height, width, channels) of every image.
        shard_bytes: Pixel bytes per shard (the last one may hold fewer); default SHARD_BYTES.
    """

    def __init__(
        self,
        folder: Path,
        split: str,
        image_shape: tuple[int, ...],
        shard_bytes: int | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.split = split
        self.image_shape = tuple(int(size) for size in image_shape)
        shard_bytes = shard_bytes or SHARD_BYTES
        self.images_per_shard = max(1, shard_bytes // int(np.prod(self.image_shape)))
        self.shards: list[dict] = []
        self._images: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._buffered = 0
        self.folder.mkdir(parents=True, exist_ok=True)

    def add(self, images: np.ndarray, labels: np.ndarray) -> None:
        """Buffer a chunk; write every shard that is full."""
        if images.shape[1:] != self.image_shape or images.dtype != np.uint8:
            raise ValueError(
                f"{self.split} shard images must be uint8 {self.image_shape}, got "
                f"{images.dtype} {images.shape[1:]}"
            )
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self._images.append(images)
        self._labels.append(np.asarray(labels, dtype=np.int64))
        self._buffered += len(labels)
        while self._buffered >= self.images_per_shard:
            self._write(self.images_per_shard)

    def close(self) -> list[dict]:
        """Write what is left; return the shard records for meta.json.

        Each record is {"file", "count", "bytes", "sha256"}.
        """
        if self._buffered:
            self._write(self._buffered)
        return self.shards

    def _write(self, count: int) -> None:
        images = np.concatenate(self._images)
        labels = np.concatenate(self._labels)
        name = f"{self.split}-{len(self.shards):05d}.npz"
        path = self.folder / name
        np.savez(path, images=images[:count], labels=labels[:count])
        self.shards.append({"file": name, "count": int(count), **file_record(path)})
        # Copies, not views: a view of the rest would keep the whole concatenation alive.
        self._images, self._labels = [images[count:].copy()], [labels[count:].copy()]
        self._buffered = len(labels) - count


def load(folder: Path, shard: dict, key: str) -> np.ndarray:
    """One array ("images" or "labels") of a shard, checked against its meta.json record."""
    path = Path(folder) / shard["file"]
    try:
        with np.load(path) as data:
            array = data[key]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"shard {path} is missing or corrupt ({type(error).__name__}: {error}); "
            "rerun the stage that wrote it"
        ) from error
    if len(array) != shard["count"]:
        raise ValueError(
            f"shard {path} holds {len(array)} {key} but meta.json says {shard['count']}; "
            "rerun the stage that wrote it"
        )
    return array


def file_record(path: Path) -> dict:
    """The size and SHA-256 of a written shard, for its meta.json record."""
    return {"bytes": path.stat().st_size, "sha256": fetch.sha256_of_file(path)}


def verify(folder: Path, meta: dict, written_by: str) -> None:
    """Check that every shard meta.json lists is there, whole and unchanged.

    Records without a size and checksum (artifacts from before they were recorded) are only
    checked to exist.

    Args:
        folder: The artifact folder.
        meta: Its meta.json.
        written_by: The stage that wrote it, for the message ("get_data", "preprocess").

    Raises:
        ValueError: Naming the first missing, truncated or corrupt file and what to rerun.
    """
    for records in (meta.get("shards") or {}).values():
        for record in records:
            path = Path(folder) / record["file"]
            rerun = f"rerun {written_by} (its run's artifact is damaged)"
            if not path.is_file():
                raise ValueError(f"shard {path} is missing; {rerun}")
            size = path.stat().st_size
            if "bytes" in record and size != record["bytes"]:
                raise ValueError(
                    f"shard {path} is {size} bytes, meta.json says {record['bytes']}: the file "
                    f"is truncated or was changed; {rerun}"
                )
            if "sha256" in record and fetch.sha256_of_file(path) != record["sha256"]:
                raise ValueError(
                    f"shard {path} does not match the SHA-256 in meta.json: the file is "
                    f"corrupt or was changed; {rerun}"
                )


def counts(split_shards: dict[str, list[dict]]) -> dict[str, int]:
    """Images per split, from the shard records of meta.json."""
    return {
        split: sum(shard["count"] for shard in records) for split, records in split_shards.items()
    }


def split_shards(meta: dict, split: str) -> list[dict]:
    """The shard records of a split from meta.json.

    Raises:
        ValueError: If meta.json lists no such split (an artifact of an older version).
    """
    try:
        return list(meta["shards"][split])
    except (KeyError, TypeError):
        raise ValueError(
            f"meta.json lists no {split!r} shards; the artifact was written by an older "
            "version of mlpipe: rerun get_data and preprocess"
        ) from None


def read_labels(folder: Path, meta: dict, split: str) -> np.ndarray:
    """All labels of a split, in stored order (the pixels are not read)."""
    labels = [load(folder, shard, "labels") for shard in split_shards(meta, split)]
    return np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)


def iterate(folder: Path, meta: dict, split: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (images, labels) of a split one shard at a time, in stored order."""
    for shard in split_shards(meta, split):
        yield load(folder, shard, "images"), load(folder, shard, "labels")


def content_digest(folder: Path, meta: dict, split: str) -> str:
    """The sha256 of a split's images and labels, in stored order.

    Two preprocess runs of the same data write equal arrays but not equal files (the npz
    archives carry their write time), so this hashes the arrays, not the files.
    """
    image_digest, label_digest = hashlib.sha256(), hashlib.sha256()  # apart: shard-independent
    for images, labels in iterate(folder, meta, split):
        image_digest.update(np.ascontiguousarray(images).tobytes())
        label_digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    shape = [int(size) for size in meta["image_shape"]]
    record = (shape, list(meta["class_names"]), image_digest.hexdigest())
    return hashlib.sha256(repr((*record, label_digest.hexdigest())).encode()).hexdigest()


def read_images(folder: Path, meta: dict, split: str, indices: np.ndarray) -> np.ndarray:
    """The images at `indices` (positions in stored order), in the order asked for."""
    indices = np.asarray(indices, dtype=np.int64)
    image_shape = tuple(int(size) for size in meta["image_shape"])
    result = np.zeros((len(indices), *image_shape), dtype=np.uint8)
    start = 0
    for shard in split_shards(meta, split):
        end = start + shard["count"]
        wanted = np.flatnonzero((indices >= start) & (indices < end))
        if len(wanted):
            result[wanted] = load(folder, shard, "images")[indices[wanted] - start]
        start = end
    if len(indices) and (indices.min() < 0 or indices.max() >= start):
        raise IndexError(f"{split} has {start} images; asked for index {indices.max()}")
    return result


def read_split(folder: Path, meta: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole split in memory: for small data, tests and benchmarks, not for the stages."""
    image_shape = tuple(int(size) for size in meta["image_shape"])
    chunks = list(iterate(folder, meta, split))
    if not chunks:
        return np.zeros((0, *image_shape), dtype=np.uint8), np.zeros(0, dtype=np.int64)
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


def write_split(
    folder: Path,
    split: str,
    images: np.ndarray,
    labels: np.ndarray,
    shard_bytes: int | None = None,
) -> list[dict]:
    """Write in-memory arrays of one split as shards; return the records for meta.json."""
    writer = ShardWriter(folder, split, images.shape[1:], shard_bytes)
    writer.add(images, labels)
    return writer.close()
