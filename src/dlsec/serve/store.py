"""API keys, per-key query budgets and the query log, in one SQLite database (WAL).

A key is a random token (``dlsec_`` + 43 url-safe characters, 256 bits) shown once by
:meth:`KeyStore.create`; the database keeps only its SHA-256. A request's key is checked
with :meth:`KeyStore.authenticate` and the request is charged and logged with
:meth:`KeyStore.record`, in one transaction, *before* its answer is sent: a request that
was answered always has its log row, and a budget can never be exceeded or reset, even if
the process is killed (``kill -9``) at any moment. Budgets count rows (queried points),
not requests, like :class:`dlsec.threat.Oracle`.

Extraction detection (schema 2): :meth:`KeyStore.flag` logs a detector's verdict in the
``detections`` table and marks the key flagged in one transaction (a server keeps
refusing or throttling it after a restart); :meth:`KeyStore.unflag` clears the mark and
keeps the events. A schema-1 database of an older dlsec is migrated in place when opened.

Example:
    >>> from pathlib import Path
    >>> store = KeyStore(Path("keys.db"))                    # doctest: +SKIP
    >>> key, token = store.create("alice", budget=10)       # doctest: +SKIP
    >>> store.authenticate(token).id == key.id              # doctest: +SKIP
    True
    >>> store.record(key.id, rows=4, input_sha256="0" * 64,
    ...              outputs="[[0.1, 0.9]]", policy="scores")   # doctest: +SKIP
    6

Notes:
    Durability. The database runs in WAL mode with ``synchronous=NORMAL`` by default: a
    commit is in the WAL file (in the operating system's cache) when :meth:`record`
    returns, so it survives the process being killed at any instruction; only a power
    loss or an operating-system crash can lose the last commits (the database stays
    consistent). ``synchronous="full"`` also fsyncs the WAL on every commit and survives
    power loss, at the cost of one fsync per request.

    Threads. Each thread gets its own connection (SQLite connections are not meant to be
    shared between threads); FastAPI's thread pool therefore reads in parallel, and
    writes are serialised by SQLite's own write lock (``BEGIN IMMEDIATE`` with a busy
    timeout), which also serialises writers in other processes on the same file. No
    result is cached: every :meth:`authenticate` reads the database, so a revocation by
    any connection or process is seen by the next request. Calls block (a commit takes
    about 50 us with ``normal``, 110 us with ``full`` on an ext4 disk): call them from
    sync endpoints (the thread pool), not inside an ``async def``. A thread's connection
    stays open until :meth:`close` (a pool's threads are reused).

    Tokens. Only ``sha256(token)`` is stored. The lookup uses the hash as an index and
    the match is confirmed with :func:`hmac.compare_digest`; what a timing difference
    could reveal is about the hash, not the token.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import math
import os
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dlsec.errors import DlsecError
from dlsec.files import OutputError, check_output

TOKEN_PREFIX = "dlsec_"
SCHEMA_VERSION = 2
APPLICATION_ID = 0x646C7365  # "dlse": marks a dlsec key database
BUSY_TIMEOUT_MS = 30_000
_MAX_TOKEN_CHARS = 256
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

_SCHEMA = """
CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    token_sha256 BLOB NOT NULL UNIQUE,
    created REAL NOT NULL,
    revoked REAL,
    policy TEXT,
    rate REAL,
    burst INTEGER,
    budget INTEGER,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE queries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id TEXT NOT NULL REFERENCES keys(id),
    time REAL NOT NULL,
    rows INTEGER NOT NULL,
    input_sha256 TEXT NOT NULL,
    outputs TEXT NOT NULL,
    policy TEXT NOT NULL,
    status INTEGER NOT NULL
);
CREATE INDEX queries_key ON queries(key_id, id);
"""

# schema 1 -> 2: extraction detection (a flag per key, an event table)
_MIGRATE_2 = """
ALTER TABLE keys ADD COLUMN flagged REAL;
CREATE TABLE detections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id TEXT NOT NULL REFERENCES keys(id),
    time REAL NOT NULL,
    detector TEXT NOT NULL,
    queries INTEGER NOT NULL,
    statistic REAL,
    action TEXT NOT NULL
);
CREATE INDEX detections_key ON detections(key_id, id)
"""

_KEY_COLUMNS = "id, name, created, revoked, policy, rate, burst, budget, used, flagged"
LOG_FIELDS = ("id", "key_id", "time", "rows", "input_sha256", "outputs", "policy", "status")
DETECTION_FIELDS = ("id", "key_id", "time", "detector", "queries", "statistic", "action")


class StoreError(DlsecError):
    """A bad key database (path, file, schema) or an unknown key id."""


class BudgetExceeded(StoreError):
    """A request needs more rows than its key has left; nothing was charged or logged."""

    def __init__(self, key_id: str, *, rows: int, remaining: int) -> None:
        super().__init__(
            f"key {key_id}: query budget exceeded ({rows} rows asked, {remaining} left)"
        )
        self.key_id = key_id
        self.rows = rows
        self.remaining = remaining


class KeyRevoked(StoreError):
    """The key was revoked before the request could be charged; nothing was logged."""


@dataclass(frozen=True)
class KeyRecord:
    """One API key as stored (never its token or hash).

    ``rate`` is in requests per second with a bucket of ``burst``; ``budget`` is the
    total number of rows the key may query (None: unlimited); ``used`` the rows charged;
    ``flagged``: an extraction detector flagged the key (until :meth:`KeyStore.unflag`).
    """

    id: str
    name: str
    created: float
    revoked: bool
    policy: str | None
    rate: float | None
    burst: int | None
    budget: int | None
    used: int
    flagged: bool = False


def hash_token(token: str) -> bytes:
    """The SHA-256 digest under which a token is stored."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def _record(row: tuple[Any, ...]) -> KeyRecord:
    kid, name, created, revoked, policy, rate, burst, budget, used, flagged = row
    return KeyRecord(
        id=kid, name=name, created=created, revoked=revoked is not None, policy=policy,
        rate=rate, burst=burst, budget=budget, used=used, flagged=flagged is not None,
    )


def check_name(name: str) -> str:
    """A key's name: any non-blank text."""
    if not isinstance(name, str) or not name.strip():
        raise StoreError("a key needs a non-empty name")
    return name


def check_policy(policy: str | None) -> str | None:
    """A key's output policy as its canonical spec (see :mod:`dlsec.output_policies`)."""
    if policy is None:
        return None
    # imported here: the store itself needs no torch (a bare authenticate or record)
    from dlsec.output_policies import OutputPolicy, PolicyError

    try:
        return OutputPolicy.parse(policy).spec()
    except PolicyError as exc:
        raise StoreError(str(exc)) from None


def check_limits(
    *, rate: float | None, burst: int | None, budget: int | None
) -> tuple[float | None, int | None, int | None]:
    """Validate a key's limits; ``burst`` defaults to ``ceil(rate)`` (at least 1)."""
    if budget is not None and (isinstance(budget, bool) or budget < 0):
        raise StoreError(f"budget must be at least 0 rows, got {budget}")
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise StoreError(f"rate must be a finite number of requests per second > 0, got {rate}")
    if burst is not None:
        if rate is None:
            raise StoreError("a burst needs a rate (requests per second)")
        if isinstance(burst, bool) or burst < 1:
            raise StoreError(f"burst must be at least 1 request, got {burst}")
    elif rate is not None:
        burst = max(1, math.ceil(rate))
    return rate, burst, budget


def _check_file(path: Path, *, create: bool) -> bool:
    """Refuse a path that is not (or cannot become) a key database; True if it is new."""
    if path.is_dir():
        raise StoreError(f"key database {path} is a directory")
    if not path.exists():
        if not create:
            raise StoreError(
                f"no key database at {path} (create one with: dlsec keys create --db {path})"
            )
        try:
            check_output(path, kind="file", option="key database")
        except OutputError as exc:
            raise StoreError(str(exc)) from None
        if not path.parent.is_dir():
            raise StoreError(f"key database {path}: directory {path.parent} does not exist")
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise StoreError(f"cannot read key database {path}: {exc.strerror}") from None
    if head and head != _SQLITE_MAGIC:
        raise StoreError(f"{path} is not an SQLite database (refusing to overwrite it)")
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        raise StoreError(f"key database {path} is not writable")
    return not head


class KeyStore:
    """API keys, budgets and the query log in the SQLite file ``path``.

    Args:
        path: the database file; created (mode 0600) when missing if ``create``.
        create: False to refuse a missing file (``dlsec keys list``/``revoke``).
        synchronous: ``"normal"`` (survives a killed process) or ``"full"`` (survives
            a power loss too); see the module's Notes.

    Raises:
        StoreError: a directory, an unwritable place, a file that is not SQLite or an
            SQLite database of something else, or a schema newer than this dlsec.
    """

    def __init__(
        self, path: Path, *, create: bool = True,
        synchronous: Literal["normal", "full"] = "normal",
    ) -> None:
        if synchronous not in ("normal", "full"):
            raise StoreError(f"synchronous must be 'normal' or 'full', got {synchronous!r}")
        self.path = Path(path)
        self._synchronous = synchronous.upper()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        new = _check_file(self.path, create=create)
        if new and not self.path.exists():
            try:  # the WAL and shared-memory files take the database file's mode
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except OSError as exc:
                raise StoreError(f"cannot create key database {self.path}: {exc.strerror}") from None
        try:
            self._init_schema(self._conn())
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"cannot open key database {self.path}: {exc}") from None
        except StoreError:
            self.close()
            raise

    # -- connections -------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"key database {self.path} is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # autocommit: every statement outside BEGIN reads the latest commit
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app_id != APPLICATION_ID and (tables or version):
                raise StoreError(f"{self.path} is an SQLite database but not a dlsec key database")
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"key database {self.path} has schema {version}; this dlsec reads "
                    f"up to {SCHEMA_VERSION} (upgrade dlsec)"
                )
            if version == 0:
                # statement by statement: executescript would COMMIT the open transaction
                for statement in (_SCHEMA + ";" + _MIGRATE_2).split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version == 1:  # a database of an older dlsec: add detection, keep all
                for statement in _MIGRATE_2.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"key database {self.path}: WAL mode unavailable (got {mode})")

    def close(self) -> None:
        """Close every thread's connection; the store cannot be used afterwards."""
        self._closed = True
        with self._lock:
            conns, self._connections = self._connections, []
        for conn in conns:
            conn.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- keys ----------------------------------------------------------------------------

    def create(
        self, name: str, *, policy: str | None = None, rate: float | None = None,
        burst: int | None = None, budget: int | None = None,
    ) -> tuple[KeyRecord, str]:
        """A new key and its token; the token is not kept and cannot be shown again.

        ``policy`` is an output-policy spec (``"topk:1"``, ``"label"``; None: the
        server's), stored in its canonical form; ``rate``/``burst``/``budget``: see
        :class:`KeyRecord` and :func:`check_limits`.
        """
        check_name(name)
        policy = check_policy(policy)
        rate, burst, budget = check_limits(rate=rate, burst=burst, budget=budget)
        conn = self._conn()
        while True:
            token = TOKEN_PREFIX + secrets.token_urlsafe(32)
            record = KeyRecord(
                id=secrets.token_hex(4), name=name, created=time.time(), revoked=False,
                policy=policy, rate=rate, burst=burst, budget=budget, used=0,
            )
            try:
                conn.execute(
                    "INSERT INTO keys (id, name, token_sha256, created, policy, rate, burst,"
                    " budget) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (record.id, name, hash_token(token), record.created, policy, rate,
                     burst, budget),
                )
            except sqlite3.IntegrityError:  # an id taken already (1 in 4e9): draw again
                continue
            return record, token

    def get(self, key_id: str) -> KeyRecord:
        """The key ``key_id``; StoreError if there is none."""
        row = self._conn().execute(
            f"SELECT {_KEY_COLUMNS} FROM keys WHERE id = ?", (key_id,)
        ).fetchone()
        if row is None:
            raise StoreError(f"unknown key id {key_id!r} (see dlsec keys list)")
        return _record(row)

    def list(self) -> list[KeyRecord]:
        """Every key, oldest first (revoked ones included)."""
        rows = self._conn().execute(
            f"SELECT {_KEY_COLUMNS} FROM keys ORDER BY created, id"
        ).fetchall()
        return [_record(r) for r in rows]

    def revoke(self, key_id: str) -> KeyRecord:
        """Revoke a key (at once, for every connection); revoking twice is harmless."""
        conn = self._conn()
        conn.execute(
            "UPDATE keys SET revoked = ? WHERE id = ? AND revoked IS NULL", (time.time(), key_id)
        )
        return self.get(key_id)

    def authenticate(self, token: str) -> KeyRecord | None:
        """The live key whose token this is; None for an unknown or revoked token."""
        if not isinstance(token, str) or len(token) > _MAX_TOKEN_CHARS:
            return None
        digest = hash_token(token)
        row = self._conn().execute(
            f"SELECT {_KEY_COLUMNS}, token_sha256 FROM keys WHERE token_sha256 = ?", (digest,)
        ).fetchone()
        if row is None or not hmac.compare_digest(bytes(row[-1]), digest):
            return None
        record = _record(row[:-1])
        return None if record.revoked else record

    # -- budget and log ------------------------------------------------------------------

    def record(
        self, key_id: str, *, rows: int, input_sha256: str, outputs: str, policy: str,
        status: int = 200,
    ) -> int:
        """Charge ``rows`` to the key and log the request, in one transaction.

        Call it before the answer is sent: when it returns, the charge and the log row
        are committed (see Notes on durability). Returns the rows left (-1: unlimited).

        Raises:
            BudgetExceeded: ``used + rows`` would pass the budget (nothing written).
            KeyRevoked: the key was revoked meanwhile (nothing written).
            StoreError: an unknown key, or a malformed argument.
        """
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise StoreError(f"rows must be an integer >= 0, got {rows!r}")
        if not isinstance(input_sha256, str) or not _SHA256_HEX.fullmatch(input_sha256):
            raise StoreError("input_sha256 must be 64 lowercase hex digits")
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT revoked, budget, used FROM keys WHERE id = ?", (key_id,)
            ).fetchone()
            if row is None:
                raise StoreError(f"unknown key id {key_id!r}")
            revoked, budget, used = row
            if revoked is not None:
                raise KeyRevoked(f"key {key_id} is revoked")
            if budget is not None and used + rows > budget:
                raise BudgetExceeded(key_id, rows=rows, remaining=budget - used)
            conn.execute("UPDATE keys SET used = used + ? WHERE id = ?", (rows, key_id))
            conn.execute(
                "INSERT INTO queries (key_id, time, rows, input_sha256, outputs, policy,"
                " status) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key_id, time.time(), rows, input_sha256, outputs, policy, int(status)),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return -1 if budget is None else budget - used - rows

    def remaining(self, key_id: str) -> int:
        """Rows the key may still query (-1: unlimited)."""
        key = self.get(key_id)
        return -1 if key.budget is None else key.budget - key.used

    def log_rows(self, key_id: str | None = None) -> builtins.list[dict[str, Any]]:
        """The query log (all keys, or one), oldest first, as dicts of :data:`LOG_FIELDS`."""
        sql = f"SELECT {', '.join(LOG_FIELDS)} FROM queries"
        args: tuple[str, ...] = ()
        if key_id is not None:
            self.get(key_id)  # an unknown id is an error, not an empty log
            sql, args = sql + " WHERE key_id = ?", (key_id,)
        rows = self._conn().execute(sql + " ORDER BY id", args).fetchall()
        return [dict(zip(LOG_FIELDS, r, strict=True)) for r in rows]

    # -- extraction detection ------------------------------------------------------------

    def flag(
        self, key_id: str, *, detector: str, queries: int, statistic: float | None, action: str,
    ) -> KeyRecord:
        """Log a detection event and mark the key flagged (one transaction); a key flagged
        already keeps its first flag time. Returns the key after it."""
        if not isinstance(detector, str) or not detector or not isinstance(action, str):
            raise StoreError("a detection needs a detector name and an action")
        now = time.time()
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM keys WHERE id = ?", (key_id,)).fetchone() is None:
                raise StoreError(f"unknown key id {key_id!r}")
            conn.execute(
                "INSERT INTO detections (key_id, time, detector, queries, statistic, action)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (key_id, now, detector, int(queries),
                 None if statistic is None else float(statistic), action),
            )
            conn.execute("UPDATE keys SET flagged = ? WHERE id = ? AND flagged IS NULL",
                         (now, key_id))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return self.get(key_id)

    def unflag(self, key_id: str) -> KeyRecord:
        """Clear a key's flag (its detection events stay in the log); at once, for every
        running server that reads this database."""
        self.get(key_id)
        self._conn().execute("UPDATE keys SET flagged = NULL WHERE id = ?", (key_id,))
        return self.get(key_id)

    def detections(self, key_id: str | None = None) -> builtins.list[dict[str, Any]]:
        """Detection events (all keys, or one), oldest first, as dicts of
        :data:`DETECTION_FIELDS`."""
        sql = f"SELECT {', '.join(DETECTION_FIELDS)} FROM detections"
        args: tuple[str, ...] = ()
        if key_id is not None:
            self.get(key_id)
            sql, args = sql + " WHERE key_id = ?", (key_id,)
        rows = self._conn().execute(sql + " ORDER BY id", args).fetchall()
        return [dict(zip(DETECTION_FIELDS, r, strict=True)) for r in rows]
