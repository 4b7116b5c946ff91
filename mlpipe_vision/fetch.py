"""Downloading files safely: checksums, retries, a progress bar and atomic writes.

A file only ever appears under its final name after it has been completely written and,
when a checksum is known, verified; an interrupted or corrupt download leaves nothing that
a later run could mistake for a good copy.
"""

import hashlib
import os
import tempfile
import time
from pathlib import Path

import requests
from tqdm import tqdm

CHUNK_BYTES = 1 << 20


def sha256_of_bytes(data: bytes) -> str:
    """Return the hex SHA-256 of some bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_of_file(path: Path) -> str:
    """Return the hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes so that `path` holds either its old content or all of `data`, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def download_bytes(url: str, retries: int = 3, timeout_seconds: float = 30.0) -> bytes:
    """Download a URL into memory with a progress bar, retrying transient failures.

    Args:
        url: An http(s) or file URL.
        retries: How many attempts in all.
        timeout_seconds: Connect and read timeout of each attempt.

    Returns:
        The body.

    Raises:
        OSError: If every attempt failed; the message names the URL and the last error.
    """
    if url.startswith("file://"):
        return Path(url[len("file://") :]).read_bytes()
    last_error: Exception | None = None
    for attempt in range(1, retries + 1):
        try:
            with requests.get(url, stream=True, timeout=timeout_seconds) as response:
                response.raise_for_status()
                total = int(response.headers.get("content-length", 0)) or None
                chunks = []
                with tqdm(
                    total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1]
                ) as bar:
                    for chunk in response.iter_content(CHUNK_BYTES):
                        chunks.append(chunk)
                        bar.update(len(chunk))
                return b"".join(chunks)
        except requests.RequestException as error:
            last_error = error
            if attempt < retries:
                time.sleep(attempt)  # back off a little longer each time
    raise OSError(f"could not download {url} after {retries} attempts: {last_error}")
