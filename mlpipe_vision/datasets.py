"""Datasets: where they come from, how they are checked, and the `dataset/` artifact.

Every dataset ends up as the same thing: a `dataset/` folder of uint8 image shards of shape
(N, H, W, C) with integer labels (see `mlpipe_vision.shards`), and a meta.json with the class
names and a record of where each source file came from and whether its SHA-256 matched the
official one. `run_get_data` at the bottom is the MLflow edge.
"""

import gzip
import json
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.tracking.context import registry as context_registry
from tqdm import tqdm

from mlpipe_vision import artifacts, console, fetch, images, lineage, shards, splits

DATASET_NAMES = ("mnist", "fashion_mnist", "malaria", "image_dir")


@dataclass(frozen=True)
class IdxFile:
    """One official IDX file and its checksums.

    `gzip_sha256` is the SHA-256 of the file as the official mirror serves it.
    `idx_sha256` is the SHA-256 of its decompressed content, which also identifies copies
    that were recompressed (Debian's dataset-fashion-mnist has different gzip headers but
    the same bytes inside); None where it was not measured.
    """

    name: str
    gzip_sha256: str
    idx_sha256: str | None = None


@dataclass(frozen=True)
class IdxDatasetSpec:
    """Where an IDX dataset lives and what its four files must hash to."""

    mirrors: tuple[str, ...]
    class_names: tuple[str, ...]
    files: dict[str, IdxFile]
    system_dirs: tuple[str, ...] = ()


# Checksums of the files on the official mirrors, as tensorflow-datasets records them.
IDX_DATASETS = {
    "mnist": IdxDatasetSpec(
        mirrors=(
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
        ),
        class_names=tuple(str(digit) for digit in range(10)),
        files={
            "train_images": IdxFile(
                "train-images-idx3-ubyte.gz",
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            ),
            "train_labels": IdxFile(
                "train-labels-idx1-ubyte.gz",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            ),
            "test_images": IdxFile(
                "t10k-images-idx3-ubyte.gz",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            ),
            "test_labels": IdxFile(
                "t10k-labels-idx1-ubyte.gz",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            ),
        },
    ),
    "fashion_mnist": IdxDatasetSpec(
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        files={
            "train_images": IdxFile(
                "train-images-idx3-ubyte.gz",
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            ),
            "train_labels": IdxFile(
                "train-labels-idx1-ubyte.gz",
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            ),
            "test_images": IdxFile(
                "t10k-images-idx3-ubyte.gz",
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            ),
            "test_labels": IdxFile(
                "t10k-labels-idx1-ubyte.gz",
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        },
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}

_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


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


def default_cache_dir() -> Path:
    """Return where verified downloads are kept: $MLPIPE_CACHE_DIR or ~/.cache/mlpipe."""
    return Path(os.environ.get("MLPIPE_CACHE_DIR", Path.home() / ".cache" / "mlpipe"))


# ----------------------------------------------------------------------------- IDX files


def parse_idx(data: bytes, name: str) -> np.ndarray:
    """Parse the bytes of an uncompressed IDX file into an array.

    Args:
        data: The file's bytes.
        name: The file name, for error messages.

    Returns:
        The array with the shape and dtype the header declares.

    Raises:
        ValueError: If the header is malformed or the size does not match it.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{name} is not an IDX file (bad magic number {data[:4].hex()!r})")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header_bytes = 4 + 4 * ndim
    if len(data) < header_bytes:
        raise ValueError(f"{name} is truncated inside its IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_bytes + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{name} holds {len(data)} bytes but its IDX header {shape} needs {expected}; "
            "the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=dtype, offset=header_bytes).reshape(shape)


def check_idx_bytes(raw: bytes, expected: IdxFile) -> tuple[bytes, dict]:
    """Decompress an IDX file if needed and compare it with the official checksums.

    Args:
        raw: The file's bytes as found (gzip-compressed or not).
        expected: The official file it should be.

    Returns:
        (uncompressed bytes, record with name, sha256 of the file as found, and verified).

    Raises:
        ValueError: If a gzip file cannot be decompressed.
    """
    file_sha256 = fetch.sha256_of_bytes(raw)
    if raw[:2] == b"\x1f\x8b":
        try:
            content = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise ValueError(f"{expected.name} is a corrupt gzip file ({error})") from error
        content_sha256 = fetch.sha256_of_bytes(content)
    else:
        content, content_sha256 = raw, file_sha256
    verified = file_sha256 == expected.gzip_sha256 or content_sha256 == expected.idx_sha256
    record = {"name": expected.name, "sha256": file_sha256, "verified": verified}
    return content, record


def checksum_error(expected: IdxFile, found_sha256: str, where: str) -> ValueError:
    """Build the error for a file whose checksum does not match the official one."""
    return ValueError(
        f"checksum mismatch for {expected.name} from {where}: expected SHA-256 "
        f"{expected.gzip_sha256} (official gzip file) but got {found_sha256}. "
        "Nothing was kept. If this is intentionally other data in IDX format, "
        "pass -P verify=false."
    )


def _read_from_folder(folder: Path, expected: IdxFile) -> bytes | None:
    """Read an IDX file from a folder, compressed or not; None when it is not there."""
    for candidate in (folder / expected.name, folder / expected.name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate.read_bytes()
    return None


def find_idx_file(
    expected: IdxFile,
    spec: IdxDatasetSpec,
    source: str,
    verify: bool,
    cache_dir: Path,
) -> tuple[bytes, dict]:
    """Find one IDX file: in `source` if given, else the cache, system folders, mirrors.

    Args:
        expected: The official file.
        spec: The dataset it belongs to.
        source: A local folder or a mirror URL, or "" to search the usual places.
        verify: Refuse files whose checksum does not match the official one.
        cache_dir: Where verified downloads are kept.

    Returns:
        (uncompressed bytes, provenance record).

    Raises:
        ValueError: If the file is missing, corrupt, or fails verification.
    """
    if source and not _is_url(source):
        raw = _read_from_folder(Path(source), expected)
        if raw is None:
            raise ValueError(
                f"{expected.name} is not in {source}; the folder must hold "
                f"{', '.join(file.name for file in spec.files.values())} (or the same "
                "names without .gz)"
            )
        content, record = check_idx_bytes(raw, expected)
        if verify and not record["verified"]:
            raise checksum_error(expected, record["sha256"], source)
        return content, {**record, "source": str(Path(source) / expected.name)}

    cached_path = cache_dir / expected.name
    if not source:
        if cached_path.is_file():
            content, record = check_idx_bytes(cached_path.read_bytes(), expected)
            if record["verified"]:
                return content, {**record, "source": str(cached_path)}
            warnings.warn(f"removing {cached_path}: its checksum does not match", stacklevel=2)
            cached_path.unlink()
        for system_dir in spec.system_dirs:
            raw = _read_from_folder(Path(system_dir), expected)
            if raw is not None:
                content, record = check_idx_bytes(raw, expected)
                if record["verified"]:
                    return content, {**record, "source": str(Path(system_dir) / expected.name)}

    mirrors = (source,) if source else spec.mirrors
    errors = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + expected.name
        try:
            raw = fetch.download_bytes(url)
        except OSError as error:
            errors.append(str(error))
            continue
        content, record = check_idx_bytes(raw, expected)
        if verify and not record["verified"]:
            raise checksum_error(expected, record["sha256"], url)
        if record["verified"]:
            fetch.atomic_write_bytes(cached_path, raw)
        return content, {**record, "source": url}
    looked = [str(cached_path)] if not source else []
    looked += [str(Path(folder) / expected.name) for folder in spec.system_dirs if not source]
    raise ValueError(
        f"could not get {expected.name}: looked in {', '.join(looked) or 'no local folder'} "
        f"and downloading failed ({'; '.join(errors)}). Pass -P source=<folder holding the "
        "four IDX files> or -P source=<mirror URL>."
    )


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://", "file://"))


def load_idx_dataset(
    name: str,
    source: str = "",
    verify: bool = True,
    cache_dir: Path | None = None,
    spec: IdxDatasetSpec | None = None,
) -> Dataset:
    """Load MNIST or Fashion-MNIST from its four IDX files.

    Args:
        name: "mnist" or "fashion_mnist".
        source: A folder or mirror URL, or "" for cache, system folders and official mirrors.
        verify: Refuse files that do not match the official SHA-256.
        cache_dir: Where verified downloads are kept (default: `default_cache_dir()`).
        spec: Override of the dataset's mirrors and checksums (tests use this).

    Returns:
        The dataset, images with a channel axis.

    Raises:
        ValueError: On missing, corrupt or unverified files, or inconsistent contents.
    """
    spec = spec or IDX_DATASETS[name]
    cache_dir = (cache_dir or default_cache_dir()) / name
    arrays, records = {}, []
    for role, expected in spec.files.items():
        content, record = find_idx_file(expected, spec, source, verify, cache_dir)
        arrays[role] = parse_idx(content, expected.name)
        records.append(record)
    for split in ("train", "test"):
        images_, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images_.ndim != 3 or labels.ndim != 1 or len(images_) != len(labels):
            raise ValueError(
                f"{split} files disagree: images {images_.shape}, labels {labels.shape}; "
                "expected (N, H, W) images and N labels"
            )
        labels_out_of_range = labels.max(initial=0) >= len(spec.class_names)
        if labels_out_of_range:
            raise ValueError(
                f"{split} labels go up to {labels.max()} but {name} has "
                f"{len(spec.class_names)} classes"
            )
    return Dataset(
        train_images=arrays["train_images"].astype(np.uint8)[..., np.newaxis],
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"].astype(np.uint8)[..., np.newaxis],
        test_labels=arrays["test_labels"].astype(np.int64),
        class_names=list(spec.class_names),
        name=name,
        source=source or records[0]["source"].rsplit("/", 1)[0],
        files=records,
    )


# ------------------------------------------------------------------- the dataset/ artifact
#
# Every loader ends in `write_*` functions that put a `dataset/` folder on disk: meta.json and
# each split as uint8 shards (see `mlpipe_vision.shards`), each split in a seeded random
# order. Folders of images and TFDS are decoded and fitted chunk by chunk, so memory stays
# flat however many images there are; IDX datasets are small and fixed and are read whole.

CHUNK_IMAGES = 256


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
        self.class_counts: dict[str, np.ndarray] = {}

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
        return split_shards, 1


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
    writer = FittedImageWriter(dataset_dir, image_size, channels)
    records, skipped, readable_per_class = [], [], np.zeros(len(class_names), dtype=np.int64)
    with (
        ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool,
        tqdm(total=len(paths), desc=f"reading {folder}", unit="image") as progress,
    ):
        for split, index in (("train", train_index), ("test", test_index)):
            order = rng.permutation(index)
            for start in range(0, len(order), CHUNK_IMAGES):
                chunk = order[start : start + CHUNK_IMAGES]
                results = list(pool.map(_read_image_file, [paths[i] for i in chunk]))
                kept = [
                    i for i, (image, _) in zip(chunk, results, strict=True) if image is not None
                ]
                for i, (image, sha256) in zip(chunk, results, strict=True):
                    if image is None:
                        skipped.append(str(paths[i]))
                    else:
                        records.append(
                            {
                                "name": str(paths[i].relative_to(root)),
                                "sha256": sha256,
                                "verified": False,
                            }
                        )
                np.add.at(readable_per_class, labels[kept], 1)
                writer.add(
                    split, [image for image, _ in results if image is not None], labels[kept], pool
                )
                progress.update(len(chunk))
    for index, class_name in enumerate(class_names):
        if not readable_per_class[index]:
            raise ValueError(f"no readable image in class folder {root / class_name}")
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}", stacklevel=2
        )
    split_shards, channels = writer.close()
    return write_meta(
        dataset_dir,
        name,
        class_names,
        (image_size, image_size, channels),
        str(root.resolve()),
        records,
        split_shards,
        skipped=skipped,
        test_fraction=test_fraction,
        seed=seed,
    )


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
    writer = FittedImageWriter(dataset_dir, image_size, channels)
    pending = {"train": ([], []), "test": ([], [])}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for position, (image, label) in enumerate(
            tqdm(tfds.as_numpy(examples), total=len(labels), desc="reading malaria", unit="image")
        ):
            split = "test" if is_test[position] else "train"
            decoded, split_labels = pending[split]
            decoded.append(image[:, :, 0] if image.shape[-1] == 1 else image)
            split_labels.append(int(label))
            if len(decoded) == CHUNK_IMAGES:
                writer.add(split, decoded, np.array(split_labels), pool)
                pending[split] = ([], [])
        for split, (decoded, split_labels) in pending.items():
            writer.add(split, decoded, np.array(split_labels, dtype=np.int64), pool)
    split_shards, channels = writer.close()
    # TFDS refuses downloads that do not match these checksums, so they count as verified.
    records = [
        {"name": info.filename or url, "sha256": info.checksum, "verified": True}
        for url, info in (builder.url_infos or {}).items()
    ]
    return write_meta(
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
    if dataset in IDX_DATASETS:
        return save_dataset(
            load_idx_dataset(dataset, source=source, verify=verify), dataset_dir, seed
        )
    if dataset == "image_dir" or (dataset == "malaria" and source):
        return write_image_folder(
            source, dataset_dir, image_size, channels, test_fraction, seed, name=dataset
        )
    if dataset == "malaria":
        return write_tfds_malaria(dataset_dir, data_dir, image_size, channels, test_fraction, seed)
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
