"""MNIST and Fashion-MNIST from their four official IDX files, checked against SHA-256.

`load_idx_dataset` finds each file in a given folder or mirror, or else in the cache
(`default_cache_dir`), the system folders (Debian's dataset-fashion-mnist) and the official
mirrors, in that order; parses it (`parse_idx`) and records where it came from and whether
it matched the official checksum. Verified downloads are kept in the cache, written
atomically; a cached copy that no longer matches is removed. The result is an in-memory
`mlpipe_vision.datasets.Dataset`: these datasets are small and fixed and are read whole.
"""

import gzip
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlpipe_vision import datasets, fetch


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


def default_cache_dir() -> Path:
    """Return where verified downloads are kept: $MLPIPE_CACHE_DIR or ~/.cache/mlpipe."""
    return Path(os.environ.get("MLPIPE_CACHE_DIR", Path.home() / ".cache" / "mlpipe"))


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
) -> datasets.Dataset:
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
    return datasets.Dataset(
        train_images=arrays["train_images"].astype(np.uint8)[..., np.newaxis],
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"].astype(np.uint8)[..., np.newaxis],
        test_labels=arrays["test_labels"].astype(np.int64),
        class_names=list(spec.class_names),
        name=name,
        source=source or records[0]["source"].rsplit("/", 1)[0],
        files=records,
    )
