"""DAWN in the server: the watermark records of each API key, in the key database.

:class:`ServedWatermark` is what :func:`dlsec.serve.app.create_app` takes as
``watermark=``: for every answered batch it marks a keyed-hash-chosen fraction of the
caller's rows (:class:`dlsec.serve.watermark.Dawn`), turns their answers into a wrong but
consistent label in the form of the key's output policy, and writes one record per marked
input to :class:`WatermarkLedger` *before* the answer leaves the server. ``dlsec
ownership`` later reads the records of a key and runs a suspect model on them
(:func:`dlsec.serve.watermark.suspect_ownership`).

Storage: two tables of the same SQLite file as the keys and the query log (WAL), created
idempotently (``CREATE TABLE IF NOT EXISTS``), so a key database of an older dlsec gains
them on the first ``dlsec serve --watermark``:

* ``watermark_secret``: one row, the 32-byte HMAC secret, drawn once by :mod:`secrets`
  the first time a watermarking server opens the file and reused by every later one (a
  new secret would give the same client new marks and new wrong labels). It is never
  printed, logged or sent; ``--watermark-secret-file`` keeps it out of the database.
* ``watermarks``: ``(key_id, input_sha256)`` primary key, the marked input itself
  (little-endian float32 bytes and its shape, needed to re-run a suspect), the label
  returned, the label the model gave, the number of classes and the time. A marked input
  sent again by the same key is one record (``INSERT OR IGNORE``): the ownership test
  counts each distinct input once. Inputs of unmarked queries are not stored.

Order in a request: the records are committed before the request is charged and logged
(:meth:`dlsec.serve.store.KeyStore.record`). A request refused for its budget at that
point leaves records of rows it was never answered; that costs the test a little power
(the thief cannot reproduce labels it never saw) but not validity (the p-value's null
does not depend on which rows were answered), while the other order could answer a
watermarked row without its record.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dlsec.serve.watermark import MIN_SECRET_BYTES, Dawn, WatermarkError

__all__ = ["KeyWatermarks", "ServedWatermark", "WatermarkLedger"]

BUSY_TIMEOUT_MS = 30_000
_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS watermark_secret (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        secret BLOB NOT NULL,
        created REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS watermarks (
        key_id TEXT NOT NULL,
        input_sha256 TEXT NOT NULL,
        input BLOB NOT NULL,
        input_shape TEXT NOT NULL,
        label INTEGER NOT NULL,
        served INTEGER NOT NULL,
        num_classes INTEGER NOT NULL,
        time REAL NOT NULL,
        PRIMARY KEY (key_id, input_sha256)
    )""",
)


def _row_bytes(x: Tensor) -> np.ndarray:
    """``(N, D)`` little-endian float32 rows (-0.0 as 0.0), as :class:`Dawn` hashes them."""
    rows = x.detach().to("cpu", torch.float32).reshape(len(x), -1).contiguous().numpy()
    return (rows + np.float32(0.0)).astype("<f4", copy=False)


@dataclass(frozen=True)
class KeyWatermarks:
    """The records of one key: ``inputs`` ``(n, *input_shape)`` float32, their watermark
    ``labels`` and the model's own ``served`` labels (int64 ``(n,)``), ``num_classes``."""

    key_id: str
    inputs: Tensor
    labels: Tensor
    served: Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.inputs.shape[1:])


class WatermarkLedger:
    """The watermark records in the SQLite file ``path`` (a dlsec key database).

    Args:
        path: the database file; it must exist (``dlsec keys create`` makes it).
        create: create the tables if missing (a server); False only reads (``dlsec
            ownership``), and a file without them is a :class:`WatermarkError`.
    """

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise WatermarkError(f"no key database at {self.path}")
        with self.path.open("rb") as fh:
            if fh.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
                raise WatermarkError(f"{self.path} is not an SQLite database")
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                     timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if create:
                self._conn.execute("PRAGMA journal_mode = WAL")
                for statement in _SCHEMA:
                    self._conn.execute(statement)
            else:
                found = self._conn.execute(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'watermarks'"
                ).fetchone()[0]
                if not found:
                    raise WatermarkError(
                        f"{self.path} holds no watermark records (was it served with "
                        "dlsec serve --watermark?)")
        except sqlite3.Error as exc:
            self._conn.close()
            raise WatermarkError(f"cannot open {self.path}: {exc}") from None
        except WatermarkError:
            self._conn.close()
            raise

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> WatermarkLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def secret(self) -> bytes:
        """The database's watermark secret, drawn (32 random bytes) the first time."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT OR IGNORE INTO watermark_secret (id, secret, created) VALUES (1, ?, ?)",
                    (secrets.token_bytes(32), time.time()))
                value = bytes(self._conn.execute(
                    "SELECT secret FROM watermark_secret WHERE id = 1").fetchone()[0])
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        return value

    def record(
        self, key_id: str, inputs: Tensor, labels: Tensor, served: Tensor, *, num_classes: int
    ) -> None:
        """Commit one record per marked input (a repeated ``(key, input)`` is kept once)."""
        if len(inputs) == 0:
            return
        rows = _row_bytes(inputs)
        shape = json.dumps([int(s) for s in inputs.shape[1:]])
        now = time.time()
        values = [
            (key_id, hashlib.sha256(r.tobytes()).hexdigest(), r.tobytes(), shape, int(lab),
             int(srv), int(num_classes), now)
            for r, lab, srv in zip(rows, labels.tolist(), served.tolist(), strict=True)
        ]
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT OR IGNORE INTO watermarks (key_id, input_sha256, input, input_shape,"
                    " label, served, num_classes, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def counts(self) -> dict[str, int]:
        """Records per key id, for every key that has some (sorted by key id)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT key_id, count(*) FROM watermarks GROUP BY key_id ORDER BY key_id"
            ).fetchall()
        return {str(k): int(n) for k, n in rows}

    def records(self, key_id: str) -> KeyWatermarks:
        """The records of ``key_id`` in the order they were written."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT input, input_shape, label, served, num_classes FROM watermarks"
                " WHERE key_id = ? ORDER BY time, rowid", (key_id,)).fetchall()
        if not rows:
            raise WatermarkError(f"key {key_id!r} has no watermark records in {self.path}")
        shapes = {r[1] for r in rows}
        classes = {int(r[4]) for r in rows}
        if len(shapes) != 1 or len(classes) != 1:
            raise WatermarkError(
                f"key {key_id!r}: watermark records of more than one model in {self.path} "
                f"(input shapes {sorted(shapes)}, classes {sorted(classes)})")
        shape = tuple(json.loads(rows[0][1]))
        flat = np.frombuffer(b"".join(bytes(r[0]) for r in rows), dtype="<f4")
        inputs = torch.from_numpy(flat.astype(np.float32)).reshape(len(rows), *shape)
        return KeyWatermarks(
            key_id=key_id, inputs=inputs,
            labels=torch.tensor([int(r[2]) for r in rows], dtype=torch.int64),
            served=torch.tensor([int(r[3]) for r in rows], dtype=torch.int64),
            num_classes=classes.pop(),
        )


class ServedWatermark:
    """DAWN for :func:`dlsec.serve.app.create_app`: marks, answers and records.

    Args:
        ledger: where the records go (the key database).
        fraction: ``r_w``, the expected fraction of each key's distinct inputs answered with a
            watermark label, in (0, 1). Each costs that client one wrong answer: a benign
            client's accuracy drops by about ``fraction``.
        secret: the HMAC secret (at least 16 bytes); None: the ledger's own
            (:meth:`WatermarkLedger.secret`, drawn once per database).

    Notes:
        How strong the proof is depends on the thief (see :mod:`dlsec.serve.watermark`):
        a surrogate fitted closely to its answers reproduces the watermark labels and is
        identified; one that stops early (a held-out validation epoch, few epochs) does not
        learn them and escapes. A verdict "not stolen" is therefore no proof of innocence.
    """

    def __init__(self, ledger: WatermarkLedger, *, fraction: float,
                 secret: bytes | None = None) -> None:
        if secret is not None and (not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES):
            raise WatermarkError(f"the watermark secret must be at least {MIN_SECRET_BYTES} bytes")
        if not 0.0 < fraction < 1.0:
            raise WatermarkError(f"watermark fraction must be in (0, 1), got {fraction!r}")
        self.ledger = ledger
        self.fraction = float(fraction)
        self._secret = secret if secret is not None else ledger.secret()
        self._dawns: dict[int, Dawn] = {}

    def __repr__(self) -> str:  # never shows the secret
        return f"ServedWatermark(fraction={self.fraction}, db={str(self.ledger.path)!r})"

    def _dawn(self, num_classes: int) -> Dawn:
        dawn = self._dawns.get(num_classes)
        if dawn is None:
            dawn = self._dawns[num_classes] = Dawn(self._secret, fraction=self.fraction,
                                                   num_classes=num_classes)
        return dawn

    def apply(self, key_id: str, x: Tensor, probs: Tensor, outputs: Tensor) -> Tensor:
        """The answer for ``key_id``: ``outputs`` (the output policy's, labels ``(N,)`` or
        scores ``(N, C)``) with the marked rows' argmax turned to their watermark label,
        drawn from the clean ``probs``' argmax. The records are committed before return."""
        num_classes = int(probs.shape[1])
        served = probs.argmax(1)
        out = self._dawn(num_classes).apply(key_id, x, outputs, served=served)
        m = out.marked
        if bool(m.any()):
            self.ledger.record(key_id, x[m.to(x.device)], out.watermark_labels[m], served.cpu()[m],
                               num_classes=num_classes)
        return out.answer
