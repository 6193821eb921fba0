"""Download MNIST (the four gzip'd IDX files) with sha256 checks and resume.

Each file is streamed into ``<name>.part`` beside its destination. An interrupted
download keeps the part file and the next run asks the server for the rest with an
HTTP ``Range`` header (a server that ignores it and answers 200 is handled by
starting over). Only once the sha256 matches is the part file renamed onto the
final name, so a file under its final name is always complete and verified.
:func:`dlsec.data.idx.load_idx_dir` reads the ``.gz`` files directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from dlsec import __version__
from dlsec.data.core import DatasetError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

# torchvision's primary MNIST mirror (yann.lecun.com now often refuses downloads).
MNIST_BASE_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"

# sha256 of the canonical files, as listed by TensorFlow Datasets
# (tensorflow_datasets/url_checksums/mnist.txt); sizes in bytes for reference:
# 9,912,422 / 28,881 / 1,648,877 / 4,542.
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
    ),
    "train-labels-idx1-ubyte.gz": (
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
    ),
    "t10k-images-idx3-ubyte.gz": (
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
    ),
}

CHUNK_SIZE = 1 << 16


class _Reporter(Protocol):
    """Where download progress goes: a rich progress bar or nothing."""

    def start(self, name: str, *, total: int | None, done: int) -> None: ...
    def advance(self, n: int) -> None: ...


class _Silent:
    def start(self, name: str, *, total: int | None, done: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass


class _RichReporter:
    """One rich progress task per file (bytes, speed, time left), drawn on stderr."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None

    def start(self, name: str, *, total: int | None, done: int) -> None:
        self._task = self._progress.add_task(name, total=total, completed=done)

    def advance(self, n: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, n)


@contextlib.contextmanager
def _reporter(enabled: bool) -> Iterator[_Reporter]:
    if not enabled:
        yield _Silent()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        yield _RichReporter(progress)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_name(name: str) -> None:
    """Refuse names that would write outside the destination folder."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise DatasetError(f"{name!r}: not a plain file name")


class _RangeNotSatisfiable(Exception):
    """The server refused our Range: the part file cannot be resumed."""


def _open_url(url: str, *, offset: int, timeout: float) -> http.client.HTTPResponse:
    """GET ``url``, asking for bytes from ``offset`` on when resuming."""
    headers = {"User-Agent": f"dlsec/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:  # part file not a prefix of the remote file
            raise _RangeNotSatisfiable from None
        raise DatasetError(f"{url}: download failed (HTTP {exc.code} {exc.reason})") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DatasetError(f"{url}: download failed ({reason})") from None
    return response


def _resume_offset(response: http.client.HTTPResponse, offset: int, url: str) -> int:
    """Where the body of ``response`` starts: ``offset`` for a 206, 0 for a plain 200."""
    if response.status == 200:
        return 0
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        # "bytes START-END/TOTAL"
        unit, _, spec = content_range.partition(" ")
        start = spec.partition("-")[0]
        if unit != "bytes" or not start.isdigit() or int(start) != offset:
            raise DatasetError(
                f"{url}: download failed (asked for bytes from {offset}, "
                f"server sent Content-Range {content_range!r})"
            )
        return offset
    raise DatasetError(f"{url}: download failed (unexpected HTTP status {response.status})")


def _download(url: str, part: Path, *, timeout: float, reporter: _Reporter, name: str) -> str:
    """Stream ``url`` into ``part`` (appending when resuming); return the whole file's sha256."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open_url(url, offset=offset, timeout=timeout)
    except _RangeNotSatisfiable:
        part.unlink()
        offset = 0
        response = _open_url(url, offset=0, timeout=timeout)
    with response:
        start = _resume_offset(response, offset, url)
        digest = hashlib.sha256()
        if start:
            with open(part, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        reporter.start(name, total=total, done=start)
        received = start
        with open(part, "ab" if start else "wb") as out:
            while True:
                try:
                    block = response.read(CHUNK_SIZE)
                except (OSError, http.client.HTTPException) as exc:
                    raise DatasetError(
                        f"{url}: download failed ({exc or type(exc).__name__}); "
                        f"the partial file {part} is kept, run again to resume"
                    ) from None
                if not block:
                    break
                out.write(block)
                digest.update(block)
                received += len(block)
                reporter.advance(len(block))
            out.flush()
            os.fsync(out.fileno())
    # http.client returns b"" rather than raising when the server hangs up early
    if total is not None and received < total:
        raise DatasetError(
            f"{url}: download failed (connection closed after {received} of {total} bytes); "
            f"the partial file {part} is kept, run again to resume"
        )
    return digest.hexdigest()


def fetch_mnist(
    to: Path,
    *,
    base_url: str = MNIST_BASE_URL,
    files: dict[str, str] | None = None,
    progress: bool = True,
    timeout: float = 30,
) -> list[Path]:
    """Download and verify MNIST into ``to``; return the paths of the files, in order.

    ``files`` maps file names (joined to ``base_url``) to their sha256; it defaults
    to the four MNIST archives. Files already present with the right hash are not
    downloaded again; a ``<name>.part`` left by an interrupted run is resumed.
    Raises :class:`DatasetError` for a network failure (the message starts with the
    URL) or a hash mismatch (the message names the file and both hashes; the bad
    download is deleted).
    """
    to = Path(to)
    wanted = MNIST_FILES if files is None else files
    scheme = urllib.parse.urlsplit(base_url).scheme
    if scheme not in ("http", "https"):
        raise DatasetError(f"{base_url}: only http(s) URLs can be fetched")
    for name in wanted:
        _check_name(name)
    try:
        to.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"{to}: cannot create the folder ({exc.strerror or exc})") from None

    base = base_url if base_url.endswith("/") else base_url + "/"
    paths: list[Path] = []
    with _reporter(progress) as reporter:
        for name, expected_hash in wanted.items():
            expected = expected_hash.lower()
            final = to / name
            paths.append(final)
            if final.is_file() and sha256_file(final) == expected:
                continue
            part = to / f"{name}.part"
            if part.is_file() and sha256_file(part) == expected:
                os.replace(part, final)  # a finished download that was never renamed
                continue
            url = base + urllib.parse.quote(name)
            actual = _download(url, part, timeout=timeout, reporter=reporter, name=name)
            if actual != expected:
                part.unlink(missing_ok=True)
                raise DatasetError(
                    f"{final}: sha256 mismatch (expected {expected}, got {actual}); "
                    f"the download from {url} was deleted"
                )
            os.replace(part, final)
    return paths
