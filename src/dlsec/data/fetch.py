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
from typing import TYPE_CHECKING, Any

from dlsec import __version__
from dlsec.data.core import DatasetError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

# torchvision's primary MNIST mirror (yann.lecun.com now often refuses downloads).
MNIST_BASE_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"

# sha256 of the canonical files, as listed by TensorFlow Datasets
# (tensorflow_datasets/url_checksums/mnist.txt).
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz":
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz":
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

# Their sizes in bytes (same source): a download stops as soon as it would exceed
# them, so a hostile or broken mirror cannot fill the disk before the hash check.
MNIST_SIZES: dict[str, int] = {
    "train-images-idx3-ubyte.gz": 9_912_422,
    "train-labels-idx1-ubyte.gz": 28_881,
    "t10k-images-idx3-ubyte.gz": 1_648_877,
    "t10k-labels-idx1-ubyte.gz": 4_542,
}

# The most any file without a recorded size may take.
DEFAULT_MAX_BYTES = 256 << 20

CHUNK_SIZE = 1 << 16


class _Reporter:
    """Where download progress goes: one rich progress task per file (bytes, speed, time
    left) drawn on stderr, or nowhere (``progress`` None)."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._task: TaskID | None = None

    def start(self, name: str, *, total: int | None, done: int) -> None:
        if self._progress is not None:
            self._task = self._progress.add_task(name, total=total, completed=done)

    def advance(self, n: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)


@contextlib.contextmanager
def _reporter(enabled: bool) -> Iterator[_Reporter]:
    if not enabled:
        yield _Reporter(None)
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

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        yield _Reporter(progress)


def _sha256(path: Path, digest: Any = None) -> Any:
    """``digest`` (default: a new sha256) fed with the file's bytes, read in chunks."""
    digest = digest or hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest


def _check_name(name: str) -> None:
    """Refuse names that would write outside the destination folder."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise DatasetError(f"{name!r}: not a plain file name")


def _shown(text: str) -> str:
    """Text for a one-line message: quoted when it has spaces or control characters."""
    text = text if len(text) <= 200 else text[:200] + "..."
    return text if text and text.isprintable() and " " not in text else repr(text)


def check_base_url(url: str) -> str:
    """``url`` with a trailing slash if it names an http(s) mirror, else a one-line error.

    Checked before any request: the scheme (http or https; ``file:``, ``ftp:`` and
    the rest are refused), a host that can be encoded, a valid port, and no
    whitespace, control characters, query or fragment (file names are appended).
    """
    if not url or not url.isprintable() or any(ch.isspace() for ch in url):
        raise DatasetError(
            f"{_shown(url)}: not a valid mirror URL (empty, or contains spaces or control "
            "characters); give one like https://host/path/"
        )
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DatasetError(f"{_shown(url)}: not a valid mirror URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        got = f"{parts.scheme}:" if parts.scheme else "no scheme"
        raise DatasetError(
            f"{_shown(url)}: only http(s) URLs can be fetched (got {got}); "
            "give one like https://host/path/"
        )
    host = parts.hostname
    if not host:
        raise DatasetError(f"{_shown(url)}: not a valid mirror URL (no host name)")
    try:
        host.encode("idna")
    except UnicodeError as exc:
        raise DatasetError(f"{_shown(url)}: not a valid mirror URL (host name: {exc})") from None
    if port == 0:
        raise DatasetError(f"{_shown(url)}: not a valid mirror URL (port 0)")
    if parts.query or parts.fragment:
        raise DatasetError(
            f"{_shown(url)}: not a valid mirror URL (a mirror URL takes no query or fragment; "
            "the file names are appended to it)"
        )
    return url if url.endswith("/") else url + "/"


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
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DatasetError(f"{url}: download failed ({reason})") from None
    return response


def _resume_offset(
    response: http.client.HTTPResponse, offset: int, url: str
) -> tuple[int, int | None]:
    """(where the body starts, the whole file's size if the server said): 206 or 200."""
    if response.status == 200:
        length = response.headers.get("Content-Length")
        return 0, int(length) if length and length.isdigit() else None
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
        total = spec.rpartition("/")[2]
        length = response.headers.get("Content-Length")
        if total.isdigit():
            return offset, int(total)
        return offset, offset + int(length) if length and length.isdigit() else None
    raise DatasetError(f"{url}: download failed (unexpected HTTP status {response.status})")


def _too_big(url: str, limit: int, *, announced: int | None) -> DatasetError:
    """The one-line error for a download larger than the file it should be."""
    if announced is not None:
        what = f"the server announces {announced:,} bytes, more than the {limit:,} expected"
    else:
        what = f"the server sent more than the {limit:,} bytes expected; the download was deleted"
    return DatasetError(f"{url}: download refused ({what}; wrong or hostile mirror)")


def _download(
    url: str, part: Path, *, limit: int, timeout: float, reporter: _Reporter, name: str
) -> str:
    """Stream ``url`` into ``part`` (appending when resuming); return the whole file's sha256.

    Never writes more than ``limit`` bytes: a size announced above it is refused
    before reading, a body that runs past it is cut off and the part file deleted.
    """
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open_url(url, offset=offset, timeout=timeout)
    except _RangeNotSatisfiable:
        part.unlink()
        offset = 0
        response = _open_url(url, offset=0, timeout=timeout)
    with response:
        start, total = _resume_offset(response, offset, url)
        if total is not None and total > limit:
            raise _too_big(url, limit, announced=total)
        digest = _sha256(part) if start else hashlib.sha256()
        reporter.start(name, total=total, done=start)
        received = start
        with open(part, "ab" if start else "wb") as out:
            while True:
                try:  # at most one byte past the limit, to notice a body that runs on
                    block = response.read(min(CHUNK_SIZE, limit + 1 - received))
                except (OSError, http.client.HTTPException) as exc:
                    raise DatasetError(
                        f"{url}: download failed ({exc or type(exc).__name__}); "
                        f"the partial file {part} is kept, run again to resume"
                    ) from None
                if not block:
                    break
                if received + len(block) > limit:
                    out.close()
                    part.unlink(missing_ok=True)
                    raise _too_big(url, limit, announced=None)
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


def _fs_error(path: Path, action: str, exc: OSError) -> DatasetError:
    return DatasetError(f"{path}: cannot {action} ({exc.strerror or exc})")


def _has_hash(path: Path, expected: str) -> bool:
    """True when ``path`` is a regular file whose sha256 is ``expected``."""
    try:
        return path.is_file() and _sha256(path).hexdigest() == expected
    except OSError as exc:
        raise _fs_error(path, "read", exc) from None


def fetch_mnist(
    to: Path,
    *,
    base_url: str = MNIST_BASE_URL,
    files: dict[str, str] | None = None,
    sizes: dict[str, int] | None = None,
    progress: bool = True,
    timeout: float = 30,
) -> list[Path]:
    """Download and verify MNIST into ``to``; return the paths of the files, in order.

    ``files`` maps file names (joined to ``base_url``) to their sha256; it defaults
    to the four MNIST archives. ``sizes`` maps names to their size in bytes
    (default :data:`MNIST_SIZES`; :data:`DEFAULT_MAX_BYTES` for a name without
    one): no download is read past it. Files already present with the right hash
    are not downloaded again; a ``<name>.part`` left by an interrupted run is
    resumed. Raises :class:`DatasetError` for a bad URL (before any request), a
    network failure or an oversized download (the message starts with the URL), or
    a hash mismatch (the message names the file and both hashes; the bad download
    is deleted).
    """
    to = Path(to)
    wanted = MNIST_FILES if files is None else files
    limits = MNIST_SIZES if sizes is None else sizes
    base = check_base_url(base_url)
    for name in wanted:
        _check_name(name)
    try:
        to.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DatasetError(f"{to}: exists and is not a folder") from None
    except OSError as exc:
        raise _fs_error(to, "create the folder", exc) from None

    paths: list[Path] = []
    with _reporter(progress) as reporter:
        for name, expected_hash in wanted.items():
            expected = expected_hash.lower()
            limit = limits.get(name, DEFAULT_MAX_BYTES)
            final = to / name
            paths.append(final)
            if final.is_dir():
                raise DatasetError(f"{final}: is a directory, expected the downloaded file")
            if _has_hash(final, expected):
                continue
            part = to / f"{name}.part"
            try:
                if _has_hash(part, expected):
                    os.replace(part, final)  # a finished download that was never renamed
                    continue
                if part.is_file() and part.stat().st_size >= limit:
                    part.unlink()  # already complete yet wrong, or longer than the file
                url = base + urllib.parse.quote(name)
                actual = _download(
                    url, part, limit=limit, timeout=timeout, reporter=reporter, name=name
                )
                if actual != expected:
                    part.unlink(missing_ok=True)
                    raise DatasetError(
                        f"{final}: sha256 mismatch (expected {expected}, got {actual}); "
                        f"the download from {url} was deleted"
                    )
                os.replace(part, final)
            except OSError as exc:
                raise _fs_error(part, "write", exc) from None
    return paths
