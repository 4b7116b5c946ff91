"""IDX files: parsing, finding, verifying and caching MNIST-style idx_files."""

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from mlpipe_vision import idx_files
from tests.conftest import idx_bytes, write_idx_mirror


def spec_for(
    folder: Path, mirrors: tuple[str, ...] = (), system_dirs=()
) -> idx_files.IdxDatasetSpec:
    """A dataset spec whose official checksums are those of the files in `folder`."""
    files = {}
    for role, name in (
        ("train_images", "train-images-idx3-ubyte.gz"),
        ("train_labels", "train-labels-idx1-ubyte.gz"),
        ("test_images", "t10k-images-idx3-ubyte.gz"),
        ("test_labels", "t10k-labels-idx1-ubyte.gz"),
    ):
        raw = (folder / name).read_bytes()
        files[role] = idx_files.IdxFile(
            name,
            hashlib.sha256(raw).hexdigest(),
            hashlib.sha256(gzip.decompress(raw)).hexdigest(),
        )
    return idx_files.IdxDatasetSpec(
        mirrors=mirrors,
        class_names=tuple(str(i) for i in range(10)),
        files=files,
        system_dirs=tuple(str(d) for d in system_dirs),
    )


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.array([3, 1, 4, 1, 5], dtype=np.uint8),
    ],
)
def test_parse_idx_round_trips(array):
    np.testing.assert_array_equal(idx_files.parse_idx(idx_bytes(array), "x"), array)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x02\x03\x04rest", "bad magic number"),
        (b"", "bad magic number"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated inside its IDX header"),
        (idx_bytes(np.zeros((2, 3, 4), np.uint8))[:-1], "truncated or corrupt"),
    ],
)
def test_parse_idx_refuses_malformed_files(data, message):
    with pytest.raises(ValueError, match=message):
        idx_files.parse_idx(data, "broken.idx")


def test_load_from_folder_with_verification(tmp_path):
    mirror = write_idx_mirror(tmp_path / "mirror")
    dataset = idx_files.load_idx_dataset("mnist", source=str(mirror), spec=spec_for(mirror))
    assert dataset.train_images.shape == (300, 28, 28, 1)
    assert dataset.test_labels.shape == (100,)
    assert dataset.verified
    assert {record["name"] for record in dataset.files} == {
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    }


def test_recompressed_copy_is_verified_by_its_content(tmp_path):
    mirror = write_idx_mirror(tmp_path / "mirror")
    spec = spec_for(mirror)
    recompressed = tmp_path / "recompressed"
    recompressed.mkdir()
    for path in mirror.iterdir():
        content = gzip.decompress(path.read_bytes())
        (recompressed / path.name).write_bytes(gzip.compress(content, mtime=0, compresslevel=1))
    dataset = idx_files.load_idx_dataset("mnist", source=str(recompressed), spec=spec)
    assert dataset.verified


def test_uncompressed_files_are_accepted(tmp_path):
    mirror = write_idx_mirror(tmp_path / "mirror")
    spec = spec_for(mirror)
    plain = tmp_path / "plain"
    plain.mkdir()
    for path in mirror.iterdir():
        (plain / path.name.removesuffix(".gz")).write_bytes(gzip.decompress(path.read_bytes()))
    assert idx_files.load_idx_dataset("mnist", source=str(plain), spec=spec).verified


def test_checksum_mismatch_names_file_and_both_hashes(tmp_path):
    official = write_idx_mirror(tmp_path / "official", seed=1)
    other = write_idx_mirror(tmp_path / "other", seed=2)
    spec = spec_for(official)
    found = hashlib.sha256((other / "train-images-idx3-ubyte.gz").read_bytes()).hexdigest()
    with pytest.raises(ValueError) as raised:
        idx_files.load_idx_dataset("mnist", source=str(other), spec=spec)
    message = str(raised.value)
    assert "train-images-idx3-ubyte.gz" in message
    assert spec.files["train_images"].gzip_sha256 in message
    assert found in message
    assert "verify=false" in message


def test_verify_false_accepts_other_files_and_records_them_unverified(tmp_path):
    official = write_idx_mirror(tmp_path / "official", seed=1)
    other = write_idx_mirror(tmp_path / "other", seed=2, train_count=50, test_count=20)
    dataset = idx_files.load_idx_dataset(
        "mnist", source=str(other), verify=False, spec=spec_for(official)
    )
    assert not dataset.verified
    assert len(dataset.train_labels) == 50


def test_missing_file_in_source_folder_is_named(tmp_path):
    mirror = write_idx_mirror(tmp_path / "mirror")
    spec = spec_for(mirror)
    (mirror / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz is not in .*mirror"):
        idx_files.load_idx_dataset("mnist", source=str(mirror), spec=spec)


def test_download_verifies_and_caches_then_reuses_the_cache(tmp_path):
    mirror = write_idx_mirror(tmp_path / "mirror")
    spec = spec_for(mirror, mirrors=(f"file://{mirror}/",))
    cache = tmp_path / "cache"
    first = idx_files.load_idx_dataset("mnist", cache_dir=cache, spec=spec)
    assert first.verified
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(
        p.name for p in mirror.iterdir()
    )
    for path in mirror.iterdir():
        path.unlink()
    second = idx_files.load_idx_dataset("mnist", cache_dir=cache, spec=spec)
    np.testing.assert_array_equal(first.train_images, second.train_images)
    assert all(str(cache) in record["source"] for record in second.files)


def test_corrupt_download_leaves_nothing_in_the_cache(tmp_path):
    official = write_idx_mirror(tmp_path / "official", seed=1)
    corrupt = write_idx_mirror(tmp_path / "corrupt", seed=3)
    spec = spec_for(official, mirrors=(f"file://{corrupt}/",))
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="checksum mismatch"):
        idx_files.load_idx_dataset("mnist", cache_dir=cache, spec=spec)
    assert not any(path.is_file() for path in cache.rglob("*"))


def test_corrupt_cached_copy_is_replaced(tmp_path):
    mirror = write_idx_mirror(tmp_path / "mirror")
    spec = spec_for(mirror, mirrors=(f"file://{mirror}/",))
    cache = tmp_path / "cache"
    (cache / "mnist").mkdir(parents=True)
    (cache / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"half a file")
    with pytest.warns(UserWarning, match="removing"):
        dataset = idx_files.load_idx_dataset("mnist", cache_dir=cache, spec=spec)
    assert dataset.verified


def test_system_copy_is_used_before_downloading(tmp_path):
    mirror = write_idx_mirror(tmp_path / "system")
    spec = spec_for(mirror, mirrors=("http://127.0.0.1:9/",), system_dirs=(mirror,))
    dataset = idx_files.load_idx_dataset("mnist", cache_dir=tmp_path / "cache", spec=spec)
    assert all(record["source"].startswith(str(mirror)) for record in dataset.files)


def test_no_copy_and_no_network_says_where_it_looked(tmp_path):
    mirror = write_idx_mirror(tmp_path / "mirror")
    spec = spec_for(mirror, mirrors=("http://127.0.0.1:9/",), system_dirs=(tmp_path / "none",))
    with pytest.raises(ValueError) as raised:
        idx_files.load_idx_dataset("mnist", cache_dir=tmp_path / "cache", spec=spec)
    message = str(raised.value)
    assert str(tmp_path / "cache") in message
    assert str(tmp_path / "none") in message
    assert "-P source=" in message
