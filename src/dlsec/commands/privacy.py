"""``dlsec privacy membership|invert`` and ``dlsec extract``: the privacy attacks from the shell.

Each command loads a saved model (``--model-dir``), attacks it through an Oracle (or, for
white-box inversion, directly) and prints a JSON summary; ``--out`` also writes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dlsec.commands.options import (
    SeedOpt,
    TestSizeOpt,
    ThreadsOpt,
    TrustCodeOpt,
    count,
    number,
)
from dlsec.errors import DlsecError

if TYPE_CHECKING:
    from dlsec.scenarios import ScenarioContext

ModelDirOpt = Annotated[Path, typer.Option("--model-dir", help="Saved model to attack")]
JsonOutOpt = Annotated[Path | None, typer.Option(help="Write the JSON summary here")]


def _context(model_dir: Path, dataset: str | None, seed: int, test_size: float, *,
             threads: int, trust_code: bool, progress: bool = False,
             with_data: bool = True) -> ScenarioContext:
    """The scenario context of a saved model: its card's dataset (or ``dataset``), or none."""
    from dlsec.commands.options import set_threads
    from dlsec.data import load_dataset
    from dlsec.models import load
    from dlsec.scenarios import ScenarioContext
    from dlsec.scenarios.inversion import no_data

    model, card = load(model_dir, trust_code=trust_code)
    set_threads(threads, device="cpu", model=model)
    ds = (load_dataset(dataset or card.dataset or "digits", seed=seed, test_size=test_size)
          if with_data else no_data(card))
    return ScenarioContext(model=model, card=card, dataset=ds, seed=seed, progress=progress)


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
    privacy_app = typer.Typer(
        help="Privacy attacks: membership inference, model inversion; a model's DP budget and "
             "its one-run audit.")
    app.add_typer(privacy_app, name="privacy")

    @privacy_app.command("membership")
    def membership(
        model_dir: ModelDirOpt,
        attack: Annotated[str, typer.Option(
            help="loss | confidence | entropy | shadow | lira | lira-offline | label-only")] = "lira",
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
        from dlsec.scenarios.membership import MEMBERSHIP_ATTACKS, MembershipOptions, run_membership

        if attack not in MEMBERSHIP_ATTACKS:
            raise DlsecError(f"unknown attack {attack!r} (choose from {', '.join(MEMBERSHIP_ATTACKS)})")
        _check_out(out)
        ctx = _context(model_dir, dataset, seed, test_size, threads=threads,
                       trust_code=trust_code, progress=not quiet)
        res = run_membership(ctx, MembershipOptions(attacks=(attack,), members=members,
                                                    shadows=shadows))
        _emit(res.artifacts["results"][0].summary(), out)

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

        from dlsec.audit.report.plots import image_grid
        from dlsec.files import atomic_write_bytes
        from dlsec.scenarios.inversion import InversionOptions, run_inversion

        _check_out(out, kind="dir")
        ctx = _context(model_dir, None, seed, 0.2, threads=threads, trust_code=trust_code,
                       with_data=False)
        inv = run_inversion(ctx, InversionOptions(
            white_box=not black_box, white_box_iters=max_iter,
            black_box_iters=max_iter if black_box else 0, evaluator=None))
        res = next(iter(inv.artifacts["results"].values()))
        summary = {"variant": res.details["variant"], "queries": res.queries,
                   "iterations": res.iterations.tolist(), "seconds": round(res.seconds, 3)}
        if out is not None and len(ctx.card.input_shape) == 3:  # the writers create the dir
            grid = inv.figures["reconstructions"]
            fig = image_grid(grid["images"], grid["labels"], title="MI-Face",
                             bounds=grid["bounds"], ncols=grid["ncols"])
            atomic_write_bytes(out / "inversion.png", base64.b64decode(fig.png_base64))
        _emit(summary, None if out is None else out / "summary.json")

    @privacy_app.command("budget")
    def budget(
        model_dir: Annotated[Path, typer.Option("--model-dir", help="Saved model to read")],
    ) -> None:
        """The privacy budget a model was trained under (its card's DP-SGD record)."""
        from dlsec.models import read_card
        from dlsec.scenarios.dp import dp_record_lines

        card = read_card(model_dir)
        lines = dp_record_lines(card.training)
        if lines is None:
            typer.echo(f"{model_dir}: not trained with differential privacy (no DP record "
                       "on its card)")
            return
        typer.echo(f"{model_dir}: trained with DP-SGD")
        for line in lines:
            typer.echo(f"  {line}")

    @privacy_app.command("audit-dp")
    def audit_dp(
        dataset: Annotated[str, typer.Option(help="Dataset to train on")] = "digits",
        model: Annotated[str, typer.Option(help="Architecture")] = "simplenet",
        epsilon: Annotated[float | None, number(
            "DP target epsilon (PRV accountant); omit for the undefended model", low=0.0,
            low_open=True)] = None,
        canaries: Annotated[str, typer.Option(help="Canary kinds: input, gradient or both")] = "input,gradient",
        m: Annotated[int, typer.Option("--m", help="Canaries of each kind (at least 2)")] = 1000,
        k: Annotated[int | None, typer.Option("--k", help="Guesses per kind (default: m/10 input, m/5 gradient)")] = None,
        epochs: Annotated[int, count("Training epochs")] = 15,
        lr: Annotated[float, number("Learning rate", low=0.0, low_open=True)] = 0.05,
        delta: Annotated[float, number("Delta of the DP target and the bound", low=0.0, high=1.0,
                                       low_open=True, high_open=True)] = 1e-5,
        seed: SeedOpt = 0,
        json_out: Annotated[Path | None, typer.Option("--json", help="Write the JSON summary here")] = None,
        threads: ThreadsOpt = 0,
        quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    ) -> None:
        """One-run empirical privacy audit (Steinke et al. 2023): train once with canaries,
        print the accountant's epsilon beside the lower bound of each canary kind."""
        from dlsec.commands.options import set_threads
        from dlsec.data import load_dataset
        from dlsec.scenarios.dp_audit import one_run_audit
        from dlsec.training import TrainConfig

        kinds = tuple(c.strip() for c in canaries.split(",") if c.strip())
        _check_out(json_out, option="--json")
        ds = load_dataset(dataset, seed=seed)
        set_threads(threads, device="auto", architecture=model, dataset=ds)
        config = TrainConfig(epochs=epochs, lr=lr, seed=seed, measure_train_accuracy=False)
        res = one_run_audit(ds, model, config, epsilon=epsilon, canaries=kinds, m=m, k=k,
                            delta=delta, progress=not quiet)
        acc = "undefended" if epsilon is None else f"epsilon {res.epsilon_accountant:.3f} (PRV)"
        typer.echo(f"{model} on {dataset}, {acc}, test accuracy {res.test_accuracy:.3f}")
        for kind, a in res.audits.items():
            typer.echo(f"  {kind} canaries: lower bound {a.epsilon_lower_bound:.3f} "
                       f"({a.correct}/{a.guesses} correct of m={a.canaries}, "
                       f"{a.confidence:.0%} confidence)")
        if json_out is not None:
            from dlsec.files import atomic_write_text

            summary = {"dataset": dataset, "model": model, "test_accuracy": res.test_accuracy,
                       "epsilon_accountant": res.epsilon_accountant,
                       "audits": {kind: {"epsilon_lower_bound": a.epsilon_lower_bound,
                                         "correct": a.correct, "guesses": a.guesses,
                                         "canaries": a.canaries, "included": a.included}
                                  for kind, a in res.audits.items()},
                       "details": res.details}
            atomic_write_text(json_out, json.dumps(summary, indent=2) + "\n")

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
        from dlsec.models import save
        from dlsec.scenarios.extraction import ExtractionOptions, run_extraction

        _check_out(save_to, kind="dir", option="--save-to")
        _check_out(out)
        try:
            options = ExtractionOptions(runs=((strategy, "label" if labels_only else "scores"),),
                                        budget=budget, epochs=None, rounds=None, max_eval=None)
        except DlsecError as e:
            raise DlsecError(f"--strategy: {e}") from None
        ctx = _context(model_dir, dataset, seed, test_size, threads=threads,
                       trust_code=trust_code, progress=not quiet)
        res = run_extraction(ctx, options).artifacts["results"][0]
        if save_to is not None:
            save(res.substitute, ctx.card, save_to)
        _emit({**res.summary(), "curve": res.curve}, out)
