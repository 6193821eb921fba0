"""Output files: check an output path before any work, write atomically, never leave a
half-written output behind.

Every command checks each output option with :func:`check_output` before it computes, so
a mistake (a directory where a file is expected, ``/dev/null``, a path under a file, a
place it cannot write) is one line at once, not a traceback after minutes of work. The
atomic writers (:func:`atomic_open`, :func:`atomic_write_bytes`, :func:`atomic_write_text`)
write a temporary file beside the target and rename it on success; an ``OSError`` while
writing is an :class:`OutputError`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Literal

from dlsec.errors import DlsecError


class OutputError(DlsecError):
    """An output path that cannot be written (reported in one line, exit 2)."""


# errors a write itself can raise (disk full, quota, read-only, I/O); anything else raised
# inside ``atomic_open``'s block is the caller's and passes through unchanged
_WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM}
)


def _stat(path: Path) -> os.stat_result | None:
    """``os.stat`` of ``path`` (following links), None when nothing is there."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):  # or a parent is a file
        return None


def _describe(st: os.stat_result) -> str:
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return "a device"
    if stat.S_ISFIFO(st.st_mode):
        return "a pipe"
    if stat.S_ISSOCK(st.st_mode):
        return "a socket"
    return "a file"


def _probe(directory: Path) -> None:
    """Create and remove a file in ``directory``: the one check that holds everywhere
    (permissions, read-only mounts, /proc, quotas; also for root)."""
    fd, tmp = tempfile.mkstemp(prefix=".dlsec-probe-", dir=directory)
    os.close(fd)
    os.unlink(tmp)


def check_output(
    path: str | os.PathLike[str], *, kind: Literal["file", "dir"], option: str
) -> Path:
    """Check that ``path`` can be written as a ``kind`` before any work is done.

    ``kind="file"``: ``path`` is a regular file to (over)write, or nothing yet;
    ``kind="dir"``: ``path`` is a directory to write into, or nothing yet (created later).
    Refused, with one line naming ``option``: a directory where a file is expected and a
    file where a directory is expected, a device, pipe or socket (``/dev/null``), a path
    under a file, and a place this process cannot create files in. Nothing is created.

    Example:
        >>> check_output("report.json", kind="file", option="--out")   # doctest: +SKIP
        PosixPath('report.json')
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    p = Path(path)
    if str(path) == "":
        raise OutputError(f"{option}: empty path")
    try:
        st = _stat(p)
        if st is not None:
            what = _describe(st)
            if kind == "file" and not stat.S_ISREG(st.st_mode):
                raise OutputError(f"{option}: {p} is {what}; expected a file to write")
            if kind == "dir" and not stat.S_ISDIR(st.st_mode):
                raise OutputError(f"{option}: {p} is {what}; expected a directory")
            target = p if kind == "dir" else p.parent
        else:
            # the nearest ancestor that exists must be a directory we can create files in
            target = p.absolute().parent
            while (st := _stat(target)) is None and target != target.parent:
                target = target.parent
            if st is not None and not stat.S_ISDIR(st.st_mode):
                raise OutputError(
                    f"{option}: cannot write {p}: {target} is {_describe(st)}, not a directory"
                )
    except OSError as exc:  # a loop of links, a name too long, ...
        raise OutputError(f"{option}: cannot write {p}: {exc.strerror}") from None
    try:
        _probe(target)
    except OSError as exc:
        raise OutputError(
            f"{option}: cannot write {p}: cannot create files in {target} ({exc.strerror})"
        ) from None
    return p


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: object) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only on success.

    An ``OSError`` from creating, writing or renaming the file is raised as
    :class:`OutputError` (one line); the temporary file is removed either way.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    callers_error = False
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, mode, **kwargs) as fh:  # type: ignore[call-overload]
            try:
                yield fh
            except OSError as exc:
                callers_error = exc.errno not in _WRITE_ERRNOS
                raise
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not callers_error:
            raise OutputError(f"cannot write {path}: {exc.strerror}") from None
        raise


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
