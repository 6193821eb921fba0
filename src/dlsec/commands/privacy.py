"""``dlsec privacy membership|invert|leakage`` and ``dlsec extract``: the privacy attacks from
the shell.

Each command loads a saved model (``--model-dir``), attacks it through an Oracle (or, for
white-box inversion, directly) and prints a JSON summary; ``--out`` also writes it.
``membership``, black-box ``invert`` and ``extract`` also take a served model (``--url``,
:mod:`dlsec.commands._target`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dlsec.commands._target import ApiKeyOpt, UrlOpt
from dlsec.commands.options import (
    SeedOpt,
    TestSizeOpt,
    ThreadsOpt,
    TrustCodeOpt,
    count,
    number,
    ray_address_option,
    workers_option,
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


def _remote_members(ctx: ScenarioContext, training_record: Path | None,
                    val_fraction: float | None, seed: int) -> ScenarioContext:
    """``ctx`` (a served model's) with the training record that says who its members are:
    ``training_record``'s card (checked against the server's input shape and classes; the
    shadows then follow its recipe and architecture), else ``val_fraction`` (default
    ``dlsec train``'s 0.1) held out with ``seed``."""
    import dataclasses

    from dlsec.models import read_card

    if training_record is None:
        vf = 0.1 if val_fraction is None else val_fraction
        card = dataclasses.replace(ctx.card, training={"seed": seed, "val_fraction": vf})
    else:
        path = training_record.parent if training_record.name == "card.json" else training_record
        card = read_card(path)
        if (tuple(card.input_shape) != tuple(ctx.card.input_shape)
                or len(card.classes) != len(ctx.card.classes)):
            raise DlsecError(f"--training-record: {training_record} is the card of a model of "
                             f"inputs {tuple(card.input_shape)} and {len(card.classes)} classes, "
                             f"the server's is {tuple(ctx.card.input_shape)}, "
                             f"{len(ctx.card.classes)}")
        card = dataclasses.replace(card, bounds=ctx.card.bounds)
    return dataclasses.replace(ctx, card=card)


def _remote_no_data(factory: Any, seed: int) -> ScenarioContext:
    """The context of a served model with no data (inversion needs none): its card is the
    server's input shape, classes and bounds."""
    from dlsec.commands._target import REMOTE_ARCHITECTURE
    from dlsec.models import ModelCard
    from dlsec.scenarios import ScenarioContext
    from dlsec.scenarios.inversion import no_data

    probe = factory()
    card = ModelCard(architecture=REMOTE_ARCHITECTURE, input_shape=list(probe.input_shape),
                     classes=[str(c) for c in probe.classes], bounds=probe.bounds)
    return ScenarioContext.for_remote(factory, no_data(card), architecture=REMOTE_ARCHITECTURE,
                                      seed=seed)


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
        help="Privacy attacks: membership inference, model inversion, gradient leakage from "
             "federated updates; a model's DP budget and its one-run audit.")
    app.add_typer(privacy_app, name="privacy")

    @privacy_app.command("membership")
    def membership(
        model_dir: Annotated[Path | None, typer.Option(
            "--model-dir", help="Saved model to attack")] = None,
        url: UrlOpt = None,
        api_key: ApiKeyOpt = None,
        attack: Annotated[str, typer.Option(
            help="loss | confidence | entropy | shadow | lira | lira-offline | label-only")] = "lira",
        shadows: Annotated[int, count("Shadow models (shadow, lira): at least 2", low=2)] = 16,
        members: Annotated[int, count("Members tested (as many non-members)")] = 500,
        dataset: Annotated[str | None, typer.Option(help="Dataset (default: the card's; required with --url)")] = None,
        val_fraction: Annotated[float | None, number(
            "With --url: the validation share dlsec train held out of the training split "
            "(split with --seed); the members are the rest (default 0.1, dlsec train's)",
            "--val-fraction", low=0.0, high=1.0, high_open=True)] = None,
        training_record: Annotated[Path | None, typer.Option(
            "--training-record", help="With --url: the served model's directory (or its "
            "card.json); its training record says who the members are, and the shadows "
            "follow its recipe and architecture")] = None,
        seed: SeedOpt = 0,
        test_size: TestSizeOpt = 0.2,
        out: JsonOutOpt = None,
        threads: ThreadsOpt = 0,
        workers: Annotated[int, workers_option("Shadow models trained one by one")] = 1,
        ray_address: Annotated[str | None, ray_address_option("the shadow models")] = None,
        separate_shadows: Annotated[bool, typer.Option(
            "--separate-shadows", help="Train the shadow models one by one (one task each, "
            "what --workers spreads) instead of stacked in one batched module")] = False,
        trust_code: TrustCodeOpt = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    ) -> None:
        """Membership inference on the model's training records vs its test records.

        ``--url`` (with ``--api-key`` or ``DLSEC_API_KEY``, and ``--dataset``) attacks a
        model served by ``dlsec serve``: every attack needs only its answers (label-only
        needs labels, the others scores). The server does not say who its members are:
        they are the dataset's training split minus ``--val-fraction`` (split with
        ``--seed``, as ``dlsec train`` held it out), or what ``--training-record`` states.
        Each record is bought once and charged to the key; if its budget runs out, the
        records answered so far (half members) are the result, with one warning line."""
        from contextlib import ExitStack

        from dlsec.commands._target import check_target, remote_context, remote_oracles
        from dlsec.executor import make_executor
        from dlsec.scenarios.membership import MEMBERSHIP_ATTACKS, MembershipOptions, run_membership

        check_target(model_dir, url)
        if attack not in MEMBERSHIP_ATTACKS:
            raise DlsecError(f"unknown attack {attack!r} (choose from {', '.join(MEMBERSHIP_ATTACKS)})")
        if url is None and (val_fraction is not None or training_record is not None):
            raise DlsecError("--val-fraction and --training-record: only with --url (a saved "
                             "model's card says who its members are)")
        if val_fraction is not None and training_record is not None:
            raise DlsecError("--val-fraction and --training-record disagree: give one of them")
        _check_out(out)
        factory = None
        executor = make_executor(workers, ray_address)
        with ExitStack() as stack:
            stack.enter_context(executor)
            if url is not None:
                factory = stack.enter_context(remote_oracles(url, api_key))
                ctx = remote_context(factory, dataset, seed=seed, progress=not quiet,
                                     test_size=test_size)
                ctx = _remote_members(ctx, training_record, val_fraction, seed)
            else:
                assert model_dir is not None
                ctx = _context(model_dir, dataset, seed, test_size, threads=threads,
                               trust_code=trust_code, progress=not quiet)
            ctx.executor = executor
            res = run_membership(ctx, MembershipOptions(
                attacks=(attack,), members=members, shadows=shadows,
                stacked=False if separate_shadows else None))
            partial = res.details.get("partial")
            if factory is not None and partial is None:
                factory.whole = True  # every answer bought: a budget ending at 0 cut nothing
            if partial is not None and factory is not None and not factory.budget_spent:  # else remote_oracles warns
                typer.echo("warning: the server's query budget for this key ran out: the "
                           "results above are partial", err=True)
        summary = res.artifacts["results"][0].summary()
        if partial is not None:
            summary["partial"] = partial
        _emit(summary, out)

    @privacy_app.command("invert")
    def invert(
        model_dir: Annotated[Path | None, typer.Option("--model-dir", help="Saved model to invert")] = None,
        url: UrlOpt = None,
        api_key: ApiKeyOpt = None,
        black_box: Annotated[bool, typer.Option("--black-box", help="Estimate gradients through the oracle (the only variant with --url)")] = False,
        max_iter: Annotated[int, count("Iterations per class", "--max-iter")] = 1000,
        out: Annotated[Path | None, typer.Option(help="Directory for inversion.png and summary.json")] = None,
        seed: SeedOpt = 0,
        threads: ThreadsOpt = 0,
        trust_code: TrustCodeOpt = False,
    ) -> None:
        """MI-Face: reconstruct one representative input per class. ``--url --black-box``
        inverts a model served by ``dlsec serve`` through its scores (a key whose policy
        is ``label`` cannot: the gradient estimate needs scores); every query is charged."""
        import base64
        from contextlib import ExitStack

        from dlsec.audit.report.plots import image_grid
        from dlsec.commands._target import check_target, remote_oracles
        from dlsec.files import atomic_write_bytes
        from dlsec.scenarios.inversion import InversionOptions, run_inversion

        check_target(model_dir, url)
        if url is not None and not black_box:
            raise DlsecError("--url: white-box inversion needs the model's weights; a served "
                             "model is inverted with --black-box")
        _check_out(out, kind="dir")
        with ExitStack() as stack:
            if url is not None:
                ctx = _remote_no_data(stack.enter_context(remote_oracles(url, api_key)), seed)
            else:
                assert model_dir is not None
                ctx = _context(model_dir, None, seed, 0.2, threads=threads,
                               trust_code=trust_code, with_data=False)
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

    @privacy_app.command("leakage")
    def leakage(
        model_dir: Annotated[Path | None, typer.Option(
            "--model-dir", help="Saved model: the global weights the client receives")] = None,
        model: Annotated[str | None, typer.Option(
            "--model", help="Or an architecture at its initialisation (seeded), on --dataset")] = None,
        attack: Annotated[str, typer.Option(help="ig (inverting gradients) | dlg | idlg")] = "ig",
        batch_sizes: Annotated[str, typer.Option(
            "--batch-sizes", help="Client batch sizes, comma-separated")] = "1,4",
        local_steps: Annotated[str, typer.Option(
            "--local-steps", help="Local SGD steps before the client sends its update, "
                                  "comma-separated")] = "1",
        client_lr: Annotated[float, number("The client's SGD step size", "--client-lr",
                                           low=0.0, low_open=True)] = 0.1,
        local_dp_epsilon: Annotated[str | None, typer.Option(
            "--local-dp-epsilon", help="Client DP through Flower's LocalDpMod at these "
                                       "epsilons (comma-separated; 'inf': fixed clipping only)")] = None,
        clip_norm: Annotated[float, number("Clipping norm of the client DP", "--clip-norm",
                                           low=0.0, low_open=True)] = 1.0,
        delta: Annotated[float, number("Delta of the client DP", low=0.0, high=1.0,
                                       low_open=True, high_open=True)] = 1e-5,
        iterations: Annotated[int, count("Attack iterations")] = 300,
        trials: Annotated[int, count("Client batches per setting")] = 4,
        dataset: Annotated[str | None, typer.Option(help="Dataset (default: the card's)")] = None,
        seed: SeedOpt = 0,
        gallery: Annotated[Path | None, typer.Option(
            help="Write originals beside reconstructions here (PNG)")] = None,
        json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here")] = None,
        threads: ThreadsOpt = 0,
        trust_code: TrustCodeOpt = False,
    ) -> None:
        """Gradient leakage: reconstruct a FedAvg client's batch from its update.

        Inverting Gradients, DLG or iDLG, per batch size, local steps and client DP (Flower's
        LocalDpMod); PSNR, SSIM and the share an independent model recognises (Wilson 95%
        interval)."""
        settings, names = _leakage_settings(attack, batch_sizes, local_steps, local_dp_epsilon)
        if (model_dir is None) == (model is None):
            raise DlsecError("give exactly one of --model-dir and --model")
        if model_dir is not None and not (model_dir / "card.json").is_file():
            raise DlsecError(f"--model-dir: {model_dir} is not a saved model (no card.json)")
        _check_out(json_out, option="--json")
        _check_out(gallery, option="--gallery")
        if gallery is not None and gallery.suffix.lower() != ".png":
            raise DlsecError(f"--gallery: {gallery} must end in .png")
        import base64

        from dlsec.audit.report.plots import image_grid
        from dlsec.files import atomic_write_bytes, atomic_write_text
        from dlsec.scenarios.gradient_leakage import gradient_leakage

        net, card, ds = _leakage_model(model_dir, model, dataset, seed, threads, trust_code)
        res = gradient_leakage(ds, net, card, settings=settings, attack=names, seed=seed,
                               iterations=iterations, trials=trials, client_lr=client_lr,
                               clip_norm=clip_norm, delta=delta)
        m = res.metrics
        typer.echo(f"{res.tables[0].title} on {ds.name}, {trials} batches per setting")
        for st in settings:
            k = st.key
            typer.echo(f"  batch {st.batch_size}, {st.local_steps} local step"
                       f"{'' if st.local_steps == 1 else 's'}, DP {st.dp_text}: PSNR "
                       f"{m[f'psnr_{k}']:.1f} dB, SSIM {m[f'ssim_{k}']:.3f}, recognised "
                       f"{m[f'recognised_{k}']:.1%} [{m[f'recognised_low_{k}']:.3f}, "
                       f"{m[f'recognised_high_{k}']:.3f}] (originals "
                       f"{m[f'originals_recognised_{k}']:.1%})")
        if gallery is not None:
            g = res.figures["gallery"]
            fig = image_grid(g["images"], g["labels"], title="Gradient leakage",
                             bounds=g["bounds"], ncols=max(st.batch_size for st in settings) * 2)
            atomic_write_bytes(gallery, base64.b64decode(fig.png_base64))
        if json_out is not None:
            atomic_write_text(json_out, json.dumps(
                {"dataset": ds.name, "metrics": m, "details": res.details,
                 "table": {"columns": res.tables[0].columns, "rows": res.tables[0].rows}},
                indent=2) + "\n")

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
        model_dir: Annotated[Path | None, typer.Option("--model-dir", help="Victim model")] = None,
        url: UrlOpt = None,
        api_key: ApiKeyOpt = None,
        budget: Annotated[int, count("Query budget")] = 10_000,
        strategy: Annotated[str, typer.Option(help="random | natural | jacobian | active")] = "active",
        labels_only: Annotated[bool, typer.Option("--labels-only", help="The oracle returns labels only (= --output label)")] = False,
        output: Annotated[str | None, typer.Option("--output", help="What the local oracle returns, an output policy: scores | label | topk:K | rounded:D | noise:SIGMA | reverse-sigmoid:BETA,GAMMA (default scores; with --url the key's policy on the server decides)")] = None,
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
        unlabeled data, the other half measures fidelity. ``--url`` (with ``--api-key`` or
        ``DLSEC_API_KEY``, and ``--dataset``) steals a model served by ``dlsec serve``:
        the substitute is a ``simplenet``, and the target's labels on the held-out half are
        bought from the server too (its budget pays for them)."""
        from contextlib import ExitStack

        from dlsec.commands._target import check_target, remote_context, remote_oracles
        from dlsec.models import save
        from dlsec.scenarios.extraction import ExtractionOptions, run_extraction

        check_target(model_dir, url)
        _check_out(save_to, kind="dir", option="--save-to")
        _check_out(out)
        if labels_only and output not in (None, "label"):
            raise DlsecError(f"--labels-only and --output {output} disagree: give one of them")
        if url is not None and output not in (None, "scores", "label"):
            raise DlsecError(f"--output {output}: against --url the server applies the key's "
                             "own output policy; only scores or label can be asked for")
        kind = "label" if labels_only else (output or "scores")
        try:
            options = ExtractionOptions(runs=((strategy, kind),), budget=budget, epochs=None,
                                        rounds=None, max_eval=None)
        except DlsecError as e:
            flag = "--strategy" if "strategy" in str(e) else "--output"
            raise DlsecError(f"{flag}: {e}") from None
        with ExitStack() as stack:
            if url is not None:
                factory = stack.enter_context(remote_oracles(url, api_key))
                ctx = remote_context(factory, dataset, seed=seed, progress=not quiet)
            else:
                assert model_dir is not None
                ctx = _context(model_dir, dataset, seed, test_size, threads=threads,
                               trust_code=trust_code, progress=not quiet)
            res = run_extraction(ctx, options).artifacts["results"][0]
        if save_to is not None:
            save(res.substitute, ctx.card, save_to)
        # the output policy asked for, not the attacker's view of it (topk:1 is seen as scores)
        _emit({**res.summary(), "output": kind, "curve": res.curve}, out)


LEAKAGE_ATTACKS = {"ig": "inverting-gradients", "inverting-gradients": "inverting-gradients",
                   "dlg": "dlg", "idlg": "idlg"}


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DlsecError(f"{option}: {text!r} is not a comma-separated list of integers") from None
    if not values or any(v < 1 for v in values):
        raise DlsecError(f"{option}: every value must be >= 1, got {text!r}")
    return values


def _leakage_settings(attack: str, batch_sizes: str, local_steps: str,
                      epsilons: str | None) -> tuple[list[Any], str]:
    """The settings grid (batch sizes x local steps, plus each DP epsilon at every batch
    size with the first step count) and the attack's name; one-line errors."""
    import math

    from dlsec.scenarios.gradient_leakage import LeakageSetting

    if attack not in LEAKAGE_ATTACKS:
        raise DlsecError(f"--attack: unknown attack {attack!r} (choose from ig, dlg, idlg)")
    sizes = _int_list(batch_sizes, "--batch-sizes")
    steps = _int_list(local_steps, "--local-steps")
    eps: list[float] = []
    for v in (epsilons or "").split(","):
        if not v.strip():
            continue
        try:
            e = float(v)
        except ValueError:
            raise DlsecError(f"--local-dp-epsilon: {v.strip()!r} is not a number") from None
        if not e > 0:
            raise DlsecError(f"--local-dp-epsilon: epsilon must be > 0, got {v.strip()}")
        eps.append(math.inf if math.isinf(e) else e)
    settings = [LeakageSetting(b, s) for b in dict.fromkeys(sizes) for s in dict.fromkeys(steps)]
    settings += [LeakageSetting(b, steps[0], e) for b in dict.fromkeys(sizes)
                 for e in dict.fromkeys(eps)]
    return settings, LEAKAGE_ATTACKS[attack]


def _leakage_model(model_dir: Path | None, arch: str | None, dataset: str | None, seed: int,
                   threads: int, trust_code: bool) -> tuple[Any, Any, Any]:
    """The attacked model, its card and the client's dataset: a saved model, or ``arch``
    at its seeded initialisation on ``dataset`` (default digits)."""
    import torch

    from dlsec.commands.options import set_threads
    from dlsec.data import load_dataset
    from dlsec.models import ModelCard, build_model, load, model_names

    if model_dir is not None:
        net, card = load(model_dir, trust_code=trust_code)
        ds = load_dataset(dataset or card.dataset or "digits", seed=seed)
    else:
        assert arch is not None
        if arch not in model_names():
            raise DlsecError(f"--model: unknown architecture {arch!r} "
                             f"(choose from {', '.join(model_names())})")
        ds = load_dataset(dataset or "digits", seed=seed)
        card = ModelCard(architecture=arch, input_shape=list(ds.input_shape),
                         classes=list(ds.classes),
                         bounds=(float(ds.bounds[0]), float(ds.bounds[1])), dataset=ds.name)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = build_model(card)
    set_threads(threads, device="cpu", model=net)
    net.eval()
    return net, card, ds
