"""``dlsec keys``: create prints ``ID TOKEN`` once and nothing else on stdout; list never
shows a token; revoke stops a key at once; log prints the query log; every bad input is
one line on stderr, exit 2, nothing written."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from dlsec.cli import main
from dlsec.serve.store import TOKEN_PREFIX, KeyStore

H = hashlib.sha256(b"x").hexdigest()


def create(db: Path, capsys, *extra: str) -> tuple[str, str]:
    assert main(["keys", "create", "--db", str(db), *extra]) == 0
    io = capsys.readouterr()
    assert io.out.count("\n") == 1  # one line, for scripts: "ID TOKEN"
    key_id, token = io.out.split()
    assert "shown only now" in io.err and token not in io.err
    return key_id, token


def test_create_list_revoke_log_round_trip(tmp_path: Path, capsys) -> None:
    db = tmp_path / "keys.db"
    alice, token = create(db, capsys, "--name", "alice", "--budget", "10", "--rate", "2.5",
                          "--policy", "topk:1")
    bob, bob_token = create(db, capsys, "--name", "bob")
    assert token.startswith(TOKEN_PREFIX) and alice != bob

    with KeyStore(db) as store:  # what a server on the same file would see
        assert store.authenticate(token).id == alice
        store.record(alice, rows=4, input_sha256=H, outputs="[1]", policy="topk:1")

    assert main(["keys", "list", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["id", "name", "created", "revoked", "policy", "rate", "burst",
                                "budget", "used", "flagged"]
    row = lines[1].split()  # created is "DATE TIME": 10 fields
    assert row[:2] == [alice, "alice"] and row[4:] == ["no", "topk:1", "2.5", "3", "10", "4", "no"]
    assert lines[2].split()[:2] == [bob, "bob"] and lines[2].split()[-6:] == ["-"] * 4 + ["0", "no"]
    assert token not in out and bob_token not in out
    assert hashlib.sha256(token.encode()).hexdigest() not in out

    assert main(["keys", "revoke", "--db", str(db), alice]) == 0
    assert capsys.readouterr().out == f"revoked {alice} (alice)\n"
    with KeyStore(db) as store:
        assert store.authenticate(token) is None and store.authenticate(bob_token) is not None
    assert main(["keys", "list", "--db", str(db)]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[4] == "yes"

    assert main(["keys", "log", "--db", str(db), "--json"]) == 0
    log = json.loads(capsys.readouterr().out)
    assert [(r["key_id"], r["rows"], r["input_sha256"], r["status"]) for r in log] == [
        (alice, 4, H, 200)]
    assert main(["keys", "log", "--db", str(db), "--key", bob, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["keys", "log", "--db", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and alice in lines[1] and H[:16] in lines[1]


@pytest.mark.parametrize(("args", "words"), [
    (["create", "--name", "a", "--budget", "-1"], ["budget"]),
    (["create", "--name", "a", "--rate", "-2"], ["rate"]),
    (["create", "--name", "a", "--rate", "1", "--burst", "0"], ["burst"]),
    (["create", "--name", "a", "--burst", "2"], ["needs a rate"]),
    (["create", "--name", " "], ["name"]),
    (["create", "--name", "a", "--policy", "everything"], ["bad output policy", "topk:K"]),
    (["list"], ["no key database", "keys create"]),
    (["revoke", "abcd1234"], ["no key database"]),
    (["log"], ["no key database"]),
])
def test_errors_on_a_missing_database_write_nothing(
    args: list[str], words: list[str], tmp_path: Path, capsys, one_line_error
) -> None:
    db = tmp_path / "keys.db"
    assert main(["keys", args[0], "--db", str(db), *args[1:]]) == 2
    io = capsys.readouterr()
    one_line_error(io.err, *words)
    assert io.out == "" and list(tmp_path.iterdir()) == []


def test_errors_on_an_existing_database_change_nothing(tmp_path: Path, capsys,
                                                        one_line_error) -> None:
    db = tmp_path / "keys.db"
    key_id, _ = create(db, capsys, "--name", "alice")
    for args, words in [
        (["revoke", "--db", str(db), "ffffffff"], ["unknown key id", "ffffffff"]),
        (["log", "--db", str(db), "--key", "ffffffff"], ["unknown key id"]),
        (["create", "--db", str(db), "--name", "b", "--budget", "-5"], ["budget"]),
    ]:
        assert main(["keys", *args]) == 2
        io = capsys.readouterr()
        one_line_error(io.err, *words)
        assert io.out == ""
    with KeyStore(db) as store:
        assert [(k.id, k.revoked) for k in store.list()] == [(key_id, False)]


def test_paths_that_are_not_key_databases_are_refused(tmp_path: Path, capsys,
                                                       one_line_error) -> None:
    text = tmp_path / "notes.db"
    text.write_text("keep me\n")
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    before = foreign.read_bytes()
    for path, words in [(text, ["not an SQLite database"]), (tmp_path, ["is a directory"]),
                        (foreign, ["not a dlsec key database"]),
                        (text / "k.db", ["not a directory"]),
                        (tmp_path / "no" / "k.db", ["does not exist"])]:
        for command in (["create", "--name", "a"], ["list"]):
            assert main(["keys", command[0], "--db", str(path), *command[1:]]) == 2
            io = capsys.readouterr()
            one_line_error(io.err, *(words if command[0] == "create" or path.exists()
                                     else ["no key database"]))
            assert io.out == ""
    assert text.read_text() == "keep me\n" and foreign.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.db", "notes.db"]
