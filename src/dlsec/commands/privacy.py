"""``dlsec privacy membership|invert`` and ``dlsec extract``: the privacy attacks from the shell.

Each command loads a saved model (``--model-dir``), attacks it through an Oracle (or, for
white-box inversion, directly) and prints a JSON summary; ``--out`` also writes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from dlsec.commands.options import SeedOpt, TestSizeOpt, ThreadsOpt, TrustCodeOpt, count
from dlsec.errors import DlsecError

MEMBERSHIP_ATTACKS = ("loss", "confidence", "entropy", "shadow", "lira", "lira-offline",
                      "label-only")
ModelDirOpt = Annotated[Path, typer.Option("--model-dir", help="Saved model to attack")]
JsonOutOpt = Annotated[Path | None, typer.Option(help="Write the JSON summary here")]


def _load_model(model_dir: Path, *, threads: int, trust_code: bool) -> tuple[Any, Any]:
    from dlsec.commands.options import set_threads
    from dlsec.models import load

    model, card = load(model_dir, trust_code=trust_code)
    set_threads(threads, device="cpu", model=model)
    return model, card


def _load(model_dir: Path, dataset: str | None, seed: int, test_size: float, *, threads: int,
          trust_code: bool) -> tuple[Any, ...]:
    from dlsec.data import load_dataset

    model, card = _load_model(model_dir, threads=threads, trust_code=trust_code)
    ds = load_dataset(dataset or card.dataset or "digits", seed=seed, test_size=test_size)
    return model, card, ds


def _check_out(path: Path | None, *, kind: str = "file", option: str = "--out") -> None:
    from dlsec.files import check_output

    if path is not None:
        check_output(path, kind=kind, option=option)  # type: ignore[arg-type]


def _emit(summary: dict[str, Any], out: Path | None) -> None:
    from dlsec.files import atomic_write_text

    text = json.dumps(summary, indent=2) + "\n"
    if out is not None:
        atomic_write_text(out, text)
    typer.echo(text, nl=False)


def register(app: typer.Typer) -> None:
    privacy_app = typer.Typer(help="Privacy attacks: membership inference, model inversion.")
    app.add_typer(privacy_app, name="privacy")

    @privacy_app.command("membership")
    def membership(
        model_dir: ModelDirOpt,
        attack: Annotated[str, typer.Option(help=" | ".join(MEMBERSHIP_ATTACKS))] = "lira",
        shadows: Annotated[int, count("Shadow models (shadow, lira): at least 2", low=2)] = 16,
        members: Annotated[int, count("Members tested (as many non-members)")] = 500,
        dataset: Annotated[str | None, typer.Option(help="Dataset (default: the card's)")] = None,
        seed: SeedOpt = 0,
        test_size: TestSizeOpt = 0.2,
        out: JsonOutOpt = None,
        threads: ThreadsOpt = 0,
        trust_code: TrustCodeOpt = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    ) -> None:
        """Membership inference on the model's training records vs its test records."""
        import torch

        from dlsec.attacks.privacy.membership import (
            balanced_membership_set,
            label_only_attack,
            lira,
            shadow_attack,
            threshold_attack,
            train_shadow_models,
        )
        from dlsec.attacks.surrogate import train_config_from_card
        from dlsec.data import stratified_split
        from dlsec.threat import LocalOracle

        if attack not in MEMBERSHIP_ATTACKS:
            raise DlsecError(f"unknown attack {attack!r} (choose from {', '.join(MEMBERSHIP_ATTACKS)})")
        _check_out(out)
        model, card, ds = _load(model_dir, dataset, seed, test_size, threads=threads,
                                trust_code=trust_code)
        idx = torch.arange(len(ds.y_train))
        val = float(card.training.get("val_fraction", 0.0) or 0.0)
        if val > 0:
            idx, _ = stratified_split(ds.y_train, test_size=val, seed=int(card.training.get("seed", 0)))
        g = torch.Generator().manual_seed(seed)
        x, y, is_member = balanced_membership_set(ds.x_train[idx], ds.y_train[idx], ds.x_test,
                                                  ds.y_test, n=members, generator=g)
        oracle = LocalOracle(model, card=card, output="label" if attack == "label-only" else "scores")
        if attack in ("loss", "confidence", "entropy"):
            res = threshold_attack(oracle, x, y, signal=attack, is_member=is_member)  # type: ignore[arg-type]
        elif attack == "label-only":
            res = label_only_attack(oracle, x, y, is_member=is_member, generator=g)
        else:
            cfg = train_config_from_card(card, device="auto")
            sh = train_shadow_models(x, y, card=card, n_models=shadows, config=cfg, generator=g,
                                     progress=not quiet)
            if attack == "shadow":
                res = shadow_attack(oracle, x, y, shadows=sh, is_member=is_member)
            else:
                res = lira(oracle, sh, is_member=is_member, online=attack == "lira")
        _emit(res.summary(), out)

    @privacy_app.command("invert")
    def invert(
        model_dir: Annotated[Path, typer.Option("--model-dir", help="Saved model to invert")],
        black_box: Annotated[bool, typer.Option("--black-box", help="Estimate gradients through the oracle")] = False,
        max_iter: Annotated[int, count("Iterations per class", "--max-iter")] = 1000,
        out: Annotated[Path | None, typer.Option(help="Directory for inversion.png and summary.json")] = None,
        seed: SeedOpt = 0,
        threads: ThreadsOpt = 0,
        trust_code: TrustCodeOpt = False,
    ) -> None:
        """MI-Face: reconstruct one representative input per class."""
        import base64

        import torch

        from dlsec.attacks.privacy.inversion import mi_face, mi_face_black_box
        from dlsec.audit.report.plots import image_grid
        from dlsec.files import atomic_write_bytes
        from dlsec.threat import LocalOracle

        _check_out(out, kind="dir")
        model, card = _load_model(model_dir, threads=threads, trust_code=trust_code)
        if black_box:
            oracle = LocalOracle(model, card=card, output="scores")
            res = mi_face_black_box(oracle, max_iter=max_iter,
                                    generator=torch.Generator().manual_seed(seed))
        else:
            res = mi_face(model, card=card, max_iter=max_iter)
        summary = {"variant": res.details["variant"], "queries": res.queries,
                   "iterations": res.iterations.tolist(), "seconds": round(res.seconds, 3)}
        if out is not None:  # the atomic writers create the directory
            if len(card.input_shape) == 3:
                fig = image_grid(res.images.cpu(), [card.classes[int(c)] for c in res.classes],
                                 title="MI-Face",
                                 bounds=(float(card.bounds[0]), float(card.bounds[1])))
                atomic_write_bytes(out / "inversion.png", base64.b64decode(fig.png_base64))
            _emit(summary, out / "summary.json")
        else:
            _emit(summary, None)

    @app.command("extract")
    def extract_cmd(
        model_dir: Annotated[Path, typer.Option("--model-dir", help="Victim model")],
        budget: Annotated[int, count("Query budget")] = 10_000,
        strategy: Annotated[str, typer.Option(help="random | natural | jacobian | active")] = "active",
        labels_only: Annotated[bool, typer.Option("--labels-only", help="The oracle returns labels only")] = False,
        dataset: Annotated[str | None, typer.Option(help="Dataset (default: the card's)")] = None,
        seed: SeedOpt = 0,
        test_size: TestSizeOpt = 0.2,
        save_to: Annotated[Path | None, typer.Option("--save-to", help="Save the substitute here (a model directory)")] = None,
        out: JsonOutOpt = None,
        threads: ThreadsOpt = 0,
        trust_code: TrustCodeOpt = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    ) -> None:
        """Steal the model through its oracle: half of the test split is the attacker's
        unlabeled data, the other half measures fidelity."""
        import torch

        from dlsec.attacks.surrogate import extract
        from dlsec.models import save
        from dlsec.threat import LocalOracle
        from dlsec.training import predict_logits

        _check_out(save_to, kind="dir", option="--save-to")
        _check_out(out)
        model, card, ds = _load(model_dir, dataset, seed, test_size, threads=threads,
                                trust_code=trust_code)
        half = len(ds.y_test) // 2
        perm = torch.randperm(len(ds.y_test), generator=torch.Generator().manual_seed(seed))
        pool, held = ds.x_test[perm[:half]], perm[half:]
        victim_labels = predict_logits(model, ds.x_test[held]).argmax(1)
        oracle = LocalOracle(model, card=card, output="label" if labels_only else "scores",
                             budget=budget)
        res = extract(oracle, card=card, strategy=strategy, budget=budget, x_pool=pool,  # type: ignore[arg-type]
                      eval_x=ds.x_test[held], eval_victim_labels=victim_labels,
                      eval_y=ds.y_test[held], generator=torch.Generator().manual_seed(seed),
                      progress=not quiet)
        if save_to is not None:
            save(res.substitute, card, save_to)
        _emit({**res.summary(), "curve": res.curve}, out)
