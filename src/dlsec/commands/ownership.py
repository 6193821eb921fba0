"""``dlsec ownership``: does a suspect model reproduce the DAWN watermark of a served model?

``dlsec ownership --suspect MODEL_DIR --log keys.db`` reads the watermark records that
``dlsec serve --watermark FRACTION`` wrote to the key database (the marked inputs and the
wrong labels each key was given, :mod:`dlsec.serve.ledger`), runs the suspect on them and
tests, per key, whether it predicts the watermark labels more often than chance
(:func:`dlsec.serve.watermark.suspect_ownership`: an exact one-sided binomial test against
``1 / (classes - 1)``). Without ``--key`` every key with records is tested and the p-values
are Bonferroni-corrected for their number. The suspect is loaded the safe way
(safetensors, no code unless ``--trust-code``).

Output: one line per key (marked inputs, matches, p-value, verdict at ``--alpha``) and an
overall line; ``--json OUT`` writes the same as JSON (atomically). A "not stolen" verdict
is no proof of innocence: a thief that stops training early does not learn the watermark
(see :mod:`dlsec.serve.watermark`, Notes).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from dlsec.commands.options import DeviceOpt, TrustCodeOpt
from dlsec.errors import DlsecError
from dlsec.files import atomic_write_text, check_output
from dlsec.models.io import load
from dlsec.serve.ledger import WatermarkLedger
from dlsec.serve.store import KeyStore
from dlsec.serve.watermark import suspect_ownership
from dlsec.training import resolve_device


class OwnershipError(DlsecError):
    """dlsec ownership cannot test the suspect (bad flag, records that do not fit it)."""


def register(app: typer.Typer) -> None:
    app.command("ownership")(ownership)


def ownership(
    suspect: Annotated[Path, typer.Option("--suspect", help="The suspect model: a saved model directory (card.json + weights)")],
    log: Annotated[Path, typer.Option("--log", help="The key database of dlsec serve --watermark (its watermark records)")],
    key: Annotated[str | None, typer.Option("--key", help="Only this key's watermark (default: every key with records, Bonferroni-corrected)")] = None,
    alpha: Annotated[float, typer.Option(help="Significance level of the verdict 'stolen'")] = 0.01,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON to this file")] = None,
    device: DeviceOpt = "auto",
    trust_code: TrustCodeOpt = False,
) -> None:
    """Test whether a suspect model was trained on a served model's watermarked answers."""
    if not (math.isfinite(alpha) and 0.0 < alpha < 1.0):
        raise OwnershipError(f"--alpha must be in (0, 1), got {alpha}")
    if json_out is not None:
        check_output(json_out, kind="file", option="--json")
    with WatermarkLedger(log, create=False) as ledger:
        counts = ledger.counts()
        if key is not None:
            if key not in counts:
                raise OwnershipError(f"key {key!r} has no watermark records in {log}")
            keys = [key]
        else:
            keys = list(counts)
        if not keys:
            raise OwnershipError(f"{log} holds no watermark records (no key was watermarked yet)")
        records = [ledger.records(k) for k in keys]
    with KeyStore(log, create=False) as store:  # names for the report (ids stay the keys)
        names = {k.id: k.name for k in store.list()}
    model, card = load(suspect, device=resolve_device(device), trust_code=trust_code)
    shape = tuple(int(s) for s in card.input_shape)
    results: list[dict[str, Any]] = []
    for rec in records:
        if rec.input_shape != shape:
            raise OwnershipError(
                f"the suspect takes inputs of shape {list(shape)} but key {rec.key_id}'s "
                f"watermark inputs have shape {list(rec.input_shape)}")
        if len(card.classes) != rec.num_classes:
            raise OwnershipError(
                f"the suspect has {len(card.classes)} classes but the watermarked model "
                f"had {rec.num_classes}")
        test = suspect_ownership(model, rec.inputs, rec.labels, num_classes=rec.num_classes,
                                 tests=len(records))
        results.append({
            "key": rec.key_id, "name": names.get(rec.key_id), "marked": test.n, "matches": test.matches,
            "agreement": test.agreement, "chance": test.chance, "p_value": test.p_value,
            "stolen": test.stolen(alpha),
        })
    stolen = [r for r in results if r["stolen"]]
    for r in results:
        named = f" ({r['name']})" if r["name"] else ""
        typer.echo(f"key {r['key']}{named}: {r['matches']}/{r['marked']} watermark labels reproduced "
                   f"(chance {r['chance']:.3f}), p = {r['p_value']:.3g}: "
                   f"{'STOLEN' if r['stolen'] else 'not stolen'} at alpha {alpha:g}")
    correction = f", Bonferroni over {len(results)} keys" if len(results) > 1 else ""
    if stolen:
        best = min(stolen, key=lambda r: r["p_value"])
        best_name = f" ({best['name']})" if best["name"] else ""
        typer.echo(f"overall: STOLEN: the suspect reproduces the watermark of "
                   f"{len(stolen)} of {len(results)} keys (smallest p = {best['p_value']:.3g} "
                   f"for key {best['key']}{best_name}{correction})")
    else:
        typer.echo(f"overall: not stolen at alpha {alpha:g} ({len(results)} keys tested"
                   f"{correction}); a thief that stopped training early may escape this test")
    if json_out is not None:
        atomic_write_text(json_out, json.dumps({
            "suspect": str(suspect), "log": str(log), "alpha": alpha, "keys": results,
            "stolen": bool(stolen),
        }, indent=2) + "\n")
