"""Datasets: where they come from, how they are checked, and the `dataset/` artifact.

Every dataset ends up as the same thing: uint8 images of shape (N, H, W, C), integer
labels, class names, and a record of where each source file came from and whether its
SHA-256 matched the official one. `run_get_data` at the bottom is the MLflow edge.
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
from tqdm import tqdm

from mlpipe_vision import fetch, images, lineage, splits

DATASET_NAMES = ("mnist", "fashion_mnist", "malaria", "image_dir")
SPLIT_FILES = {"train": "train.npz", "test": "test.npz"}
META_FILE = "meta.json"


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


# --------------------------------------------------------------------- folders of images


def _read_image_file(path: Path) -> tuple[np.ndarray | None, str]:
    data = path.read_bytes()
    try:
        return images.decode_image(data, str(path)), fetch.sha256_of_bytes(data)
    except ValueError:
        return None, fetch.sha256_of_bytes(data)


def fit_all(
    decoded: list[np.ndarray], image_size: int, channels: int | None
) -> tuple[np.ndarray, int]:
    """Fit decoded images to one square size and channel count.

    Args:
        decoded: Images as `images.decode_image` returns them.
        image_size: Side of the square output.
        channels: 1 or 3, or None to use 1 when every image is grayscale and 3 otherwise.

    Returns:
        (uint8 array (N, image_size, image_size, channels), channels).
    """
    if channels is None:
        channels = 1 if all(images.is_grayscale(image) for image in decoded) else 3
    fitted = np.stack(
        [images.fit_image(image, image_size, image_size, channels) for image in decoded]
    )
    return fitted, channels


def split_train_test(
    all_images: np.ndarray, labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out a seeded, stratified test split; returns train images/labels, test images/labels."""
    train_index, test_index = splits.stratified_split(labels, test_fraction, seed)
    return all_images[train_index], labels[train_index], all_images[test_index], labels[test_index]


def load_image_folder(
    folder: str,
    image_size: int = 100,
    channels: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 42,
) -> Dataset:
    """Load a folder with one subfolder of images per class (e.g. cell_images/Parasitized).

    Args:
        folder: The folder.
        image_size: Images are fitted into image_size x image_size, aspect kept.
        channels: 1 or 3, or None for 1 when every image is grayscale and 3 otherwise.
        test_fraction: Share of every class held out as the test split.
        seed: Seed of the split.

    Returns:
        The dataset; unreadable files are left out and listed in `details["skipped"]`.

    Raises:
        ValueError: If the folder is missing, has fewer than two classes with images, or a
            class has no readable image.
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
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(
            tqdm(pool.map(_read_image_file, paths), total=len(paths), desc=f"reading {folder}")
        )
    readable = np.array([image is not None for image, _ in results])
    skipped = [str(path) for path, ok in zip(paths, readable, strict=True) if not ok]
    for index, class_name in enumerate(class_files):
        if not readable[labels == index].any():
            raise ValueError(f"no readable image in class folder {root / class_name}")
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}", stacklevel=2
        )
    decoded = [image for image, _ in results if image is not None]
    fitted, channels = fit_all(decoded, image_size, channels)
    labels = labels[readable]
    records = [
        {"name": str(path.relative_to(root)), "sha256": sha256, "verified": False}
        for path, (image, sha256) in zip(paths, results, strict=True)
        if image is not None
    ]
    train_x, train_y, test_x, test_y = split_train_test(fitted, labels, test_fraction, seed)
    return Dataset(
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        class_names=list(class_files),
        name="image_dir",
        source=str(root.resolve()),
        files=records,
        details={"skipped": skipped, "test_fraction": test_fraction, "seed": seed},
    )


def load_tfds_malaria(
    data_dir: str = "",
    image_size: int = 100,
    channels: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 42,
) -> Dataset:
    """Load the TFDS `malaria` dataset (one `train` split) and hold out a test split.

    Args:
        data_dir: TFDS data folder ("" for TFDS's default, ~/tensorflow_datasets).
        image_size: Images are fitted into image_size x image_size, aspect kept.
        channels: 1 or 3, or None to decide from the images (malaria cells are colour).
        test_fraction: Share of every class held out as the test split.
        seed: Seed of the split.

    Returns:
        The dataset.

    Raises:
        ValueError: If TFDS can neither find nor download the dataset.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder("malaria", data_dir=data_dir or None)
    try:
        builder.download_and_prepare()
        examples = builder.as_dataset(split="train", as_supervised=True)
    except Exception as error:  # TFDS raises many kinds when offline or on bad data
        raise ValueError(
            f"TFDS could not prepare 'malaria' in {data_dir or tfds.core.constants.DATA_DIR} "
            f"({lineage.first_line(error)}). Pass -P data_dir=<TFDS folder that holds it>, or "
            "unzip cell_images.zip and pass -P dataset=image_dir -P source=<.../cell_images>."
        ) from error
    decoded, labels = [], []
    total = int(examples.cardinality())  # negative when unknown
    for image, label in tqdm(
        tfds.as_numpy(examples), total=total if total > 0 else None, desc="reading malaria"
    ):
        decoded.append(image[:, :, 0] if image.shape[-1] == 1 else image)
        labels.append(int(label))
    fitted, _ = fit_all(decoded, image_size, channels)
    labels_array = np.array(labels, dtype=np.int64)
    train_x, train_y, test_x, test_y = split_train_test(fitted, labels_array, test_fraction, seed)
    # TFDS refuses downloads that do not match these checksums, so they count as verified.
    records = [
        {"name": info.filename or url, "sha256": info.checksum, "verified": True}
        for url, info in (builder.url_infos or {}).items()
    ]
    return Dataset(
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        class_names=list(builder.info.features["label"].names),
        name="malaria",
        source=f"tfds:malaria:{builder.info.version}",
        files=records,
        details={"test_fraction": test_fraction, "seed": seed, "data_dir": data_dir},
    )


def load_dataset(
    dataset: str,
    source: str = "",
    verify: bool = True,
    image_size: int = 100,
    channels: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 42,
    data_dir: str = "",
) -> Dataset:
    """Load any supported dataset by name.

    Args:
        dataset: One of DATASET_NAMES.
        source: Folder or mirror URL (IDX datasets), or the image folder (image_dir).
        verify: For IDX datasets, refuse files that do not match the official SHA-256.
        image_size: Square size for malaria and image_dir (IDX datasets stay 28x28).
        channels: 1 or 3 for malaria and image_dir; None decides from the images.
        test_fraction: Held-out test share for malaria and image_dir.
        seed: Seed of that split.
        data_dir: TFDS data folder for malaria.

    Returns:
        The dataset.

    Raises:
        ValueError: For an unknown name (listing the valid ones) or bad data.
    """
    if dataset in IDX_DATASETS:
        return load_idx_dataset(dataset, source=source, verify=verify)
    if dataset == "image_dir":
        return load_image_folder(source, image_size, channels, test_fraction, seed)
    if dataset == "malaria":
        if source:
            return load_image_folder(source, image_size, channels, test_fraction, seed)
        return load_tfds_malaria(data_dir, image_size, channels, test_fraction, seed)
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASET_NAMES)}")


# ------------------------------------------------------------------- the dataset/ artifact


def save_dataset(dataset: Dataset, dataset_dir: Path) -> None:
    """Write train.npz, test.npz and meta.json into `dataset_dir`."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    np.savez(
        dataset_dir / SPLIT_FILES["train"],
        images=dataset.train_images,
        labels=dataset.train_labels,
    )
    np.savez(
        dataset_dir / SPLIT_FILES["test"], images=dataset.test_images, labels=dataset.test_labels
    )
    meta = {
        "dataset": dataset.name,
        "class_names": dataset.class_names,
        "image_shape": list(dataset.image_shape),
        "source": dataset.source,
        "verified": dataset.verified,
        "counts": {"train": len(dataset.train_labels), "test": len(dataset.test_labels)},
        "files": dataset.files,
        **dataset.details,
    }
    (dataset_dir / META_FILE).write_text(json.dumps(meta, indent=2))


def read_dataset(dataset_dir: Path) -> Dataset:
    """Read a `dataset/` artifact folder written by `save_dataset`.

    Raises:
        ValueError: If a split file is missing or unreadable.
    """
    meta = json.loads((dataset_dir / META_FILE).read_text())
    arrays = {}
    for split, file_name in SPLIT_FILES.items():
        path = dataset_dir / file_name
        try:
            with np.load(path) as data:
                arrays[split] = (data["images"], data["labels"])
        except (OSError, KeyError, ValueError) as error:
            raise ValueError(
                f"{path} is missing or corrupt ({lineage.first_line(error)}); "
                "rerun get_data to rebuild the dataset"
            ) from error
    return Dataset(
        train_images=arrays["train"][0],
        train_labels=arrays["train"][1],
        test_images=arrays["test"][0],
        test_labels=arrays["test"][1],
        class_names=meta["class_names"],
        name=meta["dataset"],
        source=meta["source"],
        files=meta["files"],
    )


def load_dataset_uri(data_uri: str) -> Dataset:
    """Resolve a `dataset/` URI (or local folder) and read it."""
    with tempfile.TemporaryDirectory(prefix="mlpipe_dataset_") as download_dir:
        dataset_dir = lineage.resolve_artifact_dir(
            data_uri,
            META_FILE,
            "runs:/<get_data_run_id>/dataset from a get_data run",
            dst_path=download_dir,
        )
        return read_dataset(dataset_dir)


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
    """The get_data stage: load a dataset, log it as `dataset/`, print the next command.

    Args: as `load_dataset`.

    Returns:
        The `runs:/<run_id>/dataset` URI.
    """
    loaded = load_dataset(
        dataset, source, verify, image_size, channels, test_fraction, seed, data_dir
    )
    with lineage.start_stage_run("get_data") as run, tempfile.TemporaryDirectory() as tmp:
        dataset_dir = Path(tmp) / "dataset"
        save_dataset(loaded, dataset_dir)
        mlflow.log_artifacts(str(dataset_dir), "dataset")
        mlflow.log_input(
            mlflow.data.from_numpy(
                features=loaded.train_images,
                targets=loaded.train_labels,
                name=loaded.name,
                # MLflow resolves paths and URLs as sources; a TFDS name it cannot, so that
                # dataset is recorded with this run's code as its source instead.
                source=None if loaded.source.startswith("tfds:") else loaded.source,
            ),
            context="train",
        )
        mlflow.set_tags(
            {"mlpipe.dataset": loaded.name, "mlpipe.verified": str(loaded.verified).lower()}
        )
        mlflow.log_metrics(
            {"train_examples": len(loaded.train_labels), "test_examples": len(loaded.test_labels)}
        )
        data_uri = lineage.artifact_uri(run.info.run_id, "dataset")
    status = "verified" if loaded.verified else "NOT verified against official checksums"
    print(
        f"\n{loaded.name}: {len(loaded.train_labels)} train / {len(loaded.test_labels)} test "
        f"images of shape {loaded.image_shape}, {len(loaded.class_names)} classes ({status})"
    )
    print(f"dataset URI: {data_uri}")
    print("next: " + lineage.next_command("explore_data", data=data_uri))
    return data_uri
