"""``dlsec keys``: create, list and revoke the API keys of ``dlsec serve``; read the log.

``dlsec keys create --db keys.db --name alice --budget 10000`` prints one line on stdout,
``KEY_ID TOKEN``, and nothing else there, so a script can capture it
(``read -r id token < <(dlsec keys create ...)``); the token is shown this once and only
its SHA-256 is stored. ``list`` prints a table (never tokens or hashes), ``revoke ID``
stops a key at once, even for a server that is running, and ``log`` prints the query log
(``--json`` for a machine-readable one). ``list``, ``revoke`` and ``log`` refuse a
missing database instead of creating an empty one. ``list`` shows which keys an
extraction detector of ``dlsec serve`` flagged, ``events`` lists the detection events and
``unflag ID`` clears a key's flag (a running server reads it at the key's next request).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from dlsec.serve.store import KeyRecord, KeyStore, check_limits, check_name, check_policy

keys_app = typer.Typer(help="API keys of dlsec serve: create, list, revoke; the query log.")

DbOpt = Annotated[Path, typer.Option("--db", help="The key database (SQLite)")]


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    )


def _opt(value: object) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _key_row(key: KeyRecord) -> list[str]:
    return [
        key.id, key.name, _when(key.created), "yes" if key.revoked else "no", _opt(key.policy),
        _opt(key.rate), _opt(key.burst), _opt(key.budget), str(key.used),
        "yes" if key.flagged else "no",
    ]


@keys_app.command("create")
def create(
    db: DbOpt,
    name: Annotated[str, typer.Option(help="Who the key is for (shown by list)")],
    policy: Annotated[str | None, typer.Option(help="This key's output policy: scores | topk:K | rounded:D | label | noise:SIGMA | reverse-sigmoid:BETA,GAMMA (default: the server's)")] = None,
    rate: Annotated[float | None, typer.Option(help="Requests per second (token bucket; default unlimited)")] = None,
    burst: Annotated[int | None, typer.Option(help="Bucket size in requests (default ceil(rate))")] = None,
    budget: Annotated[int | None, typer.Option(help="Rows the key may query in all (default unlimited)")] = None,
) -> None:
    """Create a key; prints 'KEY_ID TOKEN' once on stdout (the token is not kept)."""
    check_name(name)  # before the database is created: a refused key writes nothing
    check_policy(policy)
    check_limits(rate=rate, burst=burst, budget=budget)
    with KeyStore(db) as store:
        key, token = store.create(name, policy=policy, rate=rate, burst=burst, budget=budget)
    typer.echo(f"{key.id} {token}")
    typer.echo("the token is shown only now: keep it (the database stores its hash)", err=True)


@keys_app.command("list")
def list_keys(db: DbOpt) -> None:
    """List the keys: id, name, created (UTC), revoked, limits, rows used, flagged."""
    with KeyStore(db, create=False) as store:
        keys = store.list()
    header = ["id", "name", "created", "revoked", "policy", "rate", "burst", "budget", "used",
              "flagged"]
    typer.echo(_table(header, [_key_row(k) for k in keys]))


@keys_app.command("revoke")
def revoke(
    db: DbOpt,
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (see dlsec keys list)")],
) -> None:
    """Revoke a key: its next request is refused, also by a server already running."""
    with KeyStore(db, create=False) as store:
        key = store.revoke(key_id)
    typer.echo(f"revoked {key.id} ({key.name})")


@keys_app.command("log")
def log(
    db: DbOpt,
    key: Annotated[str | None, typer.Option("--key", help="Only this key's requests")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON: a list of the log's rows")] = False,
) -> None:
    """Print the query log, oldest first: time, key, rows, status, policy, input hash."""
    with KeyStore(db, create=False) as store:
        rows = store.log_rows(key)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    header = ["id", "time", "key", "rows", "status", "policy", "input_sha256"]
    typer.echo(_table(header, [
        [str(r["id"]), _when(r["time"]), r["key_id"], str(r["rows"]), str(r["status"]),
         r["policy"], r["input_sha256"][:16]]
        for r in rows
    ]))


@keys_app.command("events")
def events(
    db: DbOpt,
    key: Annotated[str | None, typer.Option("--key", help="Only this key's events")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON: a list of the events")] = False,
) -> None:
    """Print the extraction-detection events, oldest first: time, key, detector, queries
    seen, the detector's statistic and the server's action."""
    with KeyStore(db, create=False) as store:
        rows = store.detections(key)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    header = ["id", "time", "key", "detector", "queries", "statistic", "action"]
    typer.echo(_table(header, [
        [str(r["id"]), _when(r["time"]), r["key_id"], r["detector"], str(r["queries"]),
         "-" if r["statistic"] is None else f"{r['statistic']:.4g}", r["action"]]
        for r in rows
    ]))


@keys_app.command("unflag")
def unflag(
    db: DbOpt,
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (see dlsec keys list)")],
) -> None:
    """Clear a key's extraction flag (its events stay); a running server's detectors may
    flag it again from their in-memory state."""
    with KeyStore(db, create=False) as store:
        key = store.unflag(key_id)
    typer.echo(f"unflagged {key.id} ({key.name})")
