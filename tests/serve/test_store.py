"""KeyStore: tokens stored only as hashes, revocation seen at once, budgets exact under
threads and processes, every committed log row surviving ``kill -9``."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dlsec.serve.store import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    TOKEN_PREFIX,
    BudgetExceeded,
    KeyRevoked,
    KeyStore,
    StoreError,
)

H = hashlib.sha256(b"inputs").hexdigest()


def rec(store: KeyStore, key_id: str, rows: int) -> int:
    return store.record(key_id, rows=rows, input_sha256=H, outputs="[[0.5]]", policy="scores")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "keys.db"


def test_create_authenticate_revoke_seen_by_a_second_store_at_once(db: Path) -> None:
    a, b = KeyStore(db), KeyStore(db)
    key, token = a.create("alice", policy="topk:1", rate=2.5, burst=4, budget=10)
    assert token.startswith(TOKEN_PREFIX) and len(token) == len(TOKEN_PREFIX) + 43
    assert len(key.id) == 8 and int(key.id, 16) >= 0
    assert (key.policy, key.rate, key.burst, key.budget, key.used) == ("topk:1", 2.5, 4, 10, 0)
    other, other_token = a.create("bob")
    assert other_token != token and other.id != key.id and other.rate is None
    seen = b.authenticate(token)
    assert seen is not None and seen.id == key.id and seen.name == "alice"
    for bad in ["", token[:-1], token + "x", other_token[:-1] + "?", "x" * 10_000]:
        assert b.authenticate(bad) is None
    assert a.revoke(key.id).revoked
    assert b.authenticate(token) is None  # the other connection, the very next read
    assert b.authenticate(other_token) is not None
    with pytest.raises(KeyRevoked):
        rec(b, key.id, 1)
    assert b.log_rows() == [] and b.get(key.id).used == 0
    assert a.revoke(key.id).revoked  # twice: harmless
    assert [k.id for k in b.list()] == [key.id, other.id]
    assert [k.revoked for k in b.list()] == [True, False]
    a.close()
    b.close()


def test_tokens_are_stored_only_as_hashes(db: Path) -> None:
    store = KeyStore(db)
    tokens = [store.create(f"k{i}")[1] for i in range(5)]
    store.revoke(store.list()[0].id)

    def files_bytes() -> bytes:
        return b"".join(p.read_bytes() for p in db.parent.iterdir() if p.name.startswith("keys.db"))

    for moment in ("open", "closed"):
        blob = files_bytes()
        for token in tokens:
            assert token.encode() not in blob, moment
            assert token[len(TOKEN_PREFIX):].encode()[:20] not in blob, moment
        store.close()
    # what is stored is the digest (so authenticate has something to find)
    assert all(hashlib.sha256(t.encode()).digest() in files_bytes() for t in tokens)


def test_budget_accounting_is_exact(db: Path) -> None:
    with KeyStore(db) as store:
        key, _ = store.create("alice", budget=10)
        assert rec(store, key.id, 4) == 6
        assert rec(store, key.id, 4) == 2
        with pytest.raises(BudgetExceeded) as info:
            rec(store, key.id, 4)
        assert info.value.remaining == 2 and info.value.rows == 4
        assert len(store.log_rows(key.id)) == 2 and store.remaining(key.id) == 2
        assert rec(store, key.id, 2) == 0
        with pytest.raises(BudgetExceeded) as info:
            rec(store, key.id, 1)
        assert info.value.remaining == 0
        assert rec(store, key.id, 0) == 0  # a refused request may be logged at no charge
        log = store.log_rows(key.id)
        assert [r["rows"] for r in log] == [4, 4, 2, 0] and store.get(key.id).used == 10
        assert log[0]["input_sha256"] == H and log[0]["policy"] == "scores"
        assert log[0]["outputs"] == "[[0.5]]" and log[0]["status"] == 200
        assert [r["id"] for r in log] == sorted(r["id"] for r in log)
        free, _ = store.create("free")
        assert rec(store, free.id, 1000) == -1 and store.remaining(free.id) == -1
        assert len(store.log_rows()) == 5


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"rows": -1}, "rows"), ({"rows": True}, "rows"), ({"rows": 1.5}, "rows"),
    ({"input_sha256": "abc"}, "64"), ({"input_sha256": H.upper()}, "64"),
])
def test_record_refuses_malformed_arguments(db: Path, kwargs: dict, words: str) -> None:
    with KeyStore(db) as store:
        key, _ = store.create("alice", budget=10)
        args = {"rows": 1, "input_sha256": H, "outputs": "", "policy": "scores", **kwargs}
        with pytest.raises(StoreError, match=words):
            store.record(key.id, **args)
        with pytest.raises(StoreError, match="unknown key"):
            store.record("deadbeef", rows=1, input_sha256=H, outputs="", policy="scores")
        assert store.log_rows() == [] and store.get(key.id).used == 0


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"budget": -1}, "budget"), ({"rate": -1.0}, "rate"), ({"rate": 0.0}, "rate"),
    ({"rate": float("nan")}, "rate"), ({"rate": 1.0, "burst": 0}, "burst"),
    ({"burst": 3}, "needs a rate"), ({"policy": "top-k:1"}, "bad output policy"),
    ({"policy": "topk:0"}, "topk"),
])
def test_create_refuses_bad_limits(db: Path, kwargs: dict, words: str) -> None:
    with KeyStore(db) as store:
        with pytest.raises(StoreError, match=words):
            store.create("alice", **kwargs)
        with pytest.raises(StoreError, match="name"):
            store.create("  ")
        assert store.list() == []
        assert store.create("r", rate=2.5)[0].burst == 3  # default burst: ceil(rate)
        assert store.create("r", rate=0.2)[0].burst == 1
        assert store.create("p", policy=" TopK:2")[0].policy == "topk:2"  # canonical


def _hammer(stores: list[KeyStore], key_id: str, per_thread: int, rows: int) -> list[int]:
    """len(stores) threads each recording ``per_thread`` times; returns rows charged."""
    charged = [0] * len(stores)

    def work(i: int) -> None:
        for _ in range(per_thread):
            try:
                rec(stores[i], key_id, rows)
                charged[i] += rows
            except BudgetExceeded:
                pass

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return charged


@pytest.mark.parametrize("separate", [False, True], ids=["one-store", "store-per-thread"])
def test_concurrent_records_are_all_counted(db: Path, separate: bool) -> None:
    main = KeyStore(db)
    key, _ = main.create("alice")
    stores = [KeyStore(db) if separate else main for _ in range(8)]
    charged = _hammer(stores, key.id, 50, 1)
    assert charged == [50] * 8
    assert main.get(key.id).used == 400 and len(main.log_rows(key.id)) == 400
    for s in {id(s): s for s in [main, *stores]}.values():
        s.close()


@pytest.mark.parametrize("separate", [False, True], ids=["one-store", "store-per-thread"])
def test_budget_never_exceeded_under_concurrency(db: Path, separate: bool) -> None:
    main = KeyStore(db)
    key, _ = main.create("alice", budget=100)
    stores = [KeyStore(db) if separate else main for _ in range(8)]
    charged = _hammer(stores, key.id, 10, 3)  # 240 rows asked of 100
    used = main.get(key.id).used
    log = main.log_rows(key.id)
    assert used == sum(charged) == 3 * len(log) == 99  # 33 requests fit, the 34th never
    assert main.remaining(key.id) == 1
    for s in {id(s): s for s in [main, *stores]}.values():
        s.close()


_CRASH = """
import hashlib, os, signal, sys
from pathlib import Path
from dlsec.serve.store import KeyStore
store = KeyStore(Path(sys.argv[1]))
key = store.list()[0].id
for i in range(int(sys.argv[2])):
    store.record(key, rows=2, input_sha256=hashlib.sha256(str(i).encode()).hexdigest(),
                 outputs=str(i), policy="scores")
print("recorded", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_every_committed_row_survives_kill_9(db: Path) -> None:
    with KeyStore(db) as store:
        key, _ = store.create("alice", budget=1000)
    n = 60
    proc = subprocess.run([sys.executable, "-c", _CRASH, str(db), str(n)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL and "recorded" in proc.stdout, proc.stderr
    assert Path(str(db) + "-wal").exists()  # killed: the WAL was never checkpointed away
    with KeyStore(db) as store:
        log = store.log_rows(key.id)
        assert [r["outputs"] for r in log] == [str(i) for i in range(n)]
        assert store.get(key.id).used == 2 * n and store.remaining(key.id) == 1000 - 2 * n


_RACE = """
import hashlib, sys, time
from pathlib import Path
from dlsec.serve.store import BudgetExceeded, KeyStore
store = KeyStore(Path(sys.argv[1]))
key, charged = store.list()[0].id, 0
print("ready", flush=True)
while not Path(sys.argv[3]).exists():  # start together
    time.sleep(0.002)
for i in range(int(sys.argv[2])):
    try:
        store.record(key, rows=1, input_sha256=hashlib.sha256(b"q").hexdigest(),
                     outputs="", policy="scores")
        charged += 1
    except BudgetExceeded:
        pass
print(charged)
"""


def test_budget_holds_across_processes(db: Path) -> None:
    with KeyStore(db) as store:
        key, _ = store.create("alice", budget=300)
    go = db.parent / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _RACE, str(db), "200", str(go)],
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:  # all started and connected before any records
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
    go.touch()
    charged = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(charged) == 300  # 600 rows asked of 300
    with KeyStore(db) as store:
        assert store.get(key.id).used == 300 and len(store.log_rows()) == 300


def test_database_is_wal_versioned_and_private(db: Path) -> None:
    KeyStore(db).close()
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert raw.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    raw.close()
    assert db.stat().st_mode & 0o077 == 0
    with KeyStore(db) as store:  # reopened: same schema, keys kept
        store.create("a")
    with KeyStore(db, create=False, synchronous="full") as store:
        assert [k.name for k in store.list()] == ["a"]
        assert store._conn().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_bad_paths_are_refused_and_left_untouched(tmp_path: Path) -> None:
    text = tmp_path / "notes.db"
    text.write_text("not a database\n")
    with pytest.raises(StoreError, match="not an SQLite database"):
        KeyStore(text)
    assert text.read_text() == "not a database\n"
    with pytest.raises(StoreError, match="is a directory"):
        KeyStore(tmp_path)
    missing = tmp_path / "missing.db"
    with pytest.raises(StoreError, match="no key database"):
        KeyStore(missing, create=False)
    assert not missing.exists()
    with pytest.raises(StoreError, match="does not exist"):
        KeyStore(tmp_path / "nodir" / "k.db")
    with pytest.raises(StoreError, match="not a directory"):
        KeyStore(text / "k.db")
    foreign = tmp_path / "other.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    before = foreign.read_bytes()
    with pytest.raises(StoreError, match="not a dlsec key database"):
        KeyStore(foreign)
    assert foreign.read_bytes() == before
    newer = tmp_path / "newer.db"
    KeyStore(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="upgrade dlsec"):
        KeyStore(newer)
    store = KeyStore(tmp_path / "k.db")
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.list()


def test_flag_unflag_and_detection_events(db: Path) -> None:
    with KeyStore(db) as store:
        a, _ = store.create("a")
        b, _ = store.create("b")
        assert not store.get(a.id).flagged
        got = store.flag(a.id, detector="prada", queries=109, statistic=0.41, action="block")
        assert got.flagged and not store.get(b.id).flagged
        first = store._conn().execute("SELECT flagged FROM keys WHERE id = ?", (a.id,)).fetchone()
        store.flag(a.id, detector="ood", queries=120, statistic=None, action="block")
        again = store._conn().execute("SELECT flagged FROM keys WHERE id = ?", (a.id,)).fetchone()
        assert first == again  # the first flag time is kept
        events = store.detections()
        assert [(e["key_id"], e["detector"], e["queries"], e["statistic"], e["action"])
                for e in events] == [(a.id, "prada", 109, 0.41, "block"),
                                     (a.id, "ood", 120, None, "block")]
        assert store.detections(b.id) == []
        with pytest.raises(StoreError, match="unknown key"):
            store.flag("nope", detector="prada", queries=1, statistic=None, action="log")
        with pytest.raises(StoreError, match="unknown key"):
            store.detections("nope")
    with KeyStore(db, create=False) as store:  # the flag is on disk
        assert store.get(a.id).flagged
        assert not store.unflag(a.id).flagged
        assert len(store.detections(a.id)) == 2  # events stay


def test_schema_1_database_is_migrated_keeping_its_keys(db: Path) -> None:
    # A database as dlsec's schema 1 wrote it (no flag column, no detections table).
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE keys (id TEXT PRIMARY KEY, name TEXT NOT NULL,
            token_sha256 BLOB NOT NULL UNIQUE, created REAL NOT NULL, revoked REAL,
            policy TEXT, rate REAL, burst INTEGER, budget INTEGER,
            used INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE queries (id INTEGER PRIMARY KEY AUTOINCREMENT,
            key_id TEXT NOT NULL REFERENCES keys(id), time REAL NOT NULL,
            rows INTEGER NOT NULL, input_sha256 TEXT NOT NULL, outputs TEXT NOT NULL,
            policy TEXT NOT NULL, status INTEGER NOT NULL);
    """)
    token = TOKEN_PREFIX + "old"
    conn.execute("INSERT INTO keys (id, name, token_sha256, created, budget, used)"
                 " VALUES ('k1', 'old', ?, 1.0, 10, 4)", (hashlib.sha256(token.encode()).digest(),))
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with KeyStore(db, create=False) as store:
        key = store.authenticate(token)
        assert key is not None and (key.id, key.used, key.budget, key.flagged) == ("k1", 4, 10, False)
        store.flag("k1", detector="ood", queries=20, statistic=0.84, action="throttle")
        assert store.get("k1").flagged
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    raw.close()
