"""``dlsec attack NAME`` (white-box evasion attacks on a saved model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dlsec.commands._target import (
    EvasionCommandError,
    ModelDirOpt,
    load_target,
    parse_eps,
    save_npz,
)
from dlsec.commands.options import DeviceOpt, SeedOpt, ThreadsOpt, TrustCodeOpt, count


def register(app: typer.Typer) -> None:
    @app.command("attack")
    def attack(
        name: Annotated[str, typer.Argument(help="White-box: fgsm | bim | pgd | mifgsm | difgsm | apgd | apgd-t | cw | deepfool. Black-box: square | simba | nes (scores), hsja | boundary (labels), transfer")],
        model_dir: ModelDirOpt,
        eps: Annotated[str | None, typer.Option(help="Comma-separated epsilons, e.g. 0.05,0.1,0.2 (optional for hsja and boundary)")] = None,
        out: Annotated[Path | None, typer.Option(help="Write adversarials to this .npz")] = None,
        dataset: Annotated[str | None, typer.Option(help="Default: the dataset named in the card")] = None,
        norm: Annotated[str | None, typer.Option(help="linf | l2 (default: linf; l2 for cw and boundary)")] = None,
        steps: Annotated[int | None, count("Iterations (iterative attacks)")] = None,
        samples: Annotated[int | None, count("Attack the first N test points")] = None,
        targeted: Annotated[bool, typer.Option(help="Targeted attack")] = False,
        target: Annotated[str, typer.Option(help="random | least-likely | a class index")] = "random",
        seed: SeedOpt = 0,
        device: DeviceOpt = "auto",
        threads: ThreadsOpt = 0,
        trust_code: TrustCodeOpt = False,
        budget: Annotated[int, count("Black-box attacks: oracle queries per point")] = 1000,
        basis: Annotated[str, typer.Option(help="SimBA: pixel | dct")] = "pixel",
        surrogate: Annotated[str, typer.Option(help="transfer: jacobian | knockoff | graybox")] = "jacobian",
        craft: Annotated[str, typer.Option(help="transfer: white-box attacks run on the surrogate")] = "pgd,mifgsm,difgsm",
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Black-box attacks: no progress bar")] = False,
    ) -> None:
        """Run an evasion attack over a list of epsilons; print robust accuracy.

        White-box attacks use gradients. Black-box attacks see the model only through an
        oracle: ``square``, ``simba`` and ``nes`` read its scores and spend at most
        ``--budget`` queries per point; ``hsja`` and ``boundary`` read labels only, spend
        ``--budget`` queries per point and report the smallest adversarials found;
        ``transfer`` trains a ``--surrogate`` on at most ``--budget`` oracle labels, crafts
        adversarials on it with ``--craft`` and sends each once to the model.
        """
        import numpy as np
        import torch

        from dlsec.attacks.evasion import make_attack
        from dlsec.commands._blackbox import BLACK_BOX, DECISION_BASED, run_black_box
        from dlsec.files import check_output

        if out is not None:
            check_output(out, kind="file", option="--out")
        eps_list = parse_eps(eps) if eps is not None else None
        if name in BLACK_BOX:
            run_black_box(name, model_dir, eps_list, out=out, dataset=dataset, samples=samples,
                          seed=seed, device=device, budget=budget, basis=basis,
                          norm=norm or ("l2" if name == "boundary" else "linf"),
                          surrogate=surrogate, craft=craft, threads=threads,
                          trust_code=trust_code, progress=not quiet)
            return
        if eps_list is None:
            raise EvasionCommandError(
                f"--eps: {name} needs epsilons (only {' and '.join(DECISION_BASED)} go without)"
            )
        kwargs: dict[str, Any] = {} if norm is None else {"norm": norm}
        if steps is not None:
            kwargs["steps"] = steps
        atk = make_attack(name, **kwargs)
        model, card, x, y = load_target(model_dir, dataset, device, samples, threads=threads,
                                        trust_code=trust_code)
        tgt: Any = int(target) if target.lstrip("-").isdigit() else target
        if isinstance(tgt, int) and not 0 <= tgt < card.num_classes:
            raise EvasionCommandError(
                f"--target: a class index must be in 0..{card.num_classes - 1}, got {target}"
            )
        res = atk(model, x, y, eps=eps_list, targeted=targeted, target=tgt, card=card,
                  generator=torch.Generator().manual_seed(seed))
        typer.echo(f"{name} ({atk.norm}) on {len(y)} points, clean accuracy "
                   f"{float(res.clean_correct.double().mean()):.4f}")
        for e, ra, sr in zip(res.eps, res.robust_accuracy, res.success_rate, strict=True):
            typer.echo(f"  eps {e:g}: robust accuracy {ra:.4f}, success rate {sr:.4f}")
        if out is not None:
            save_npz(out, {
                "x": x.cpu().numpy(), "y": y.cpu().numpy(), "eps": np.array(res.eps),
                "x_adv": res.x_adv.cpu().numpy(), "x_adv_raw": res.x_adv_raw.cpu().numpy(),
                "success": res.success.cpu().numpy(), "norms": res.norms.cpu().numpy(),
            })
            typer.echo(f"adversarials: {out}")

    @app.command("evaluate")
    def evaluate(
        model_dir: ModelDirOpt,
        eps: Annotated[str, typer.Option(help="Comma-separated epsilons, e.g. 0.05,0.1")],
        norm: Annotated[str, typer.Option(help="linf | l2")] = "linf",
        attacks: Annotated[str | None, typer.Option(help="Comma-separated stages (default: the standard ensemble)")] = None,
        dataset: Annotated[str | None, typer.Option(help="Default: the dataset named in the card")] = None,
        samples: Annotated[int | None, count("Evaluate on the first N test points")] = None,
        state: Annotated[Path | None, typer.Option(help="Resume file: an interrupted run continues from it")] = None,
        out: Annotated[Path | None, typer.Option(help="Write the summary as JSON")] = None,
        seed: SeedOpt = 0,
        device: DeviceOpt = "auto",
        threads: ThreadsOpt = 0,
        trust_code: TrustCodeOpt = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    ) -> None:
        """Robust accuracy under the AutoAttack-style ensemble, with the sanity checks."""
        import json

        import torch

        from dlsec.attacks.evasion.ensemble import check_state_file, evaluate_robustness
        from dlsec.files import atomic_write_text, check_output

        if out is not None:
            check_output(out, kind="file", option="--out")
        if state is not None:
            check_state_file(check_output(state, kind="file", option="--state"))
        eps_list = parse_eps(eps)
        model, card, x, y = load_target(model_dir, dataset, device, samples, threads=threads,
                                        trust_code=trust_code)
        stages = [a.strip() for a in attacks.split(",") if a.strip()] if attacks else None
        try:
            report = evaluate_robustness(
                model, x, y, norm=norm, eps=eps_list, card=card, attacks=stages,
                generator=torch.Generator().manual_seed(seed), state_path=state,
                progress=not quiet,
            )
        except KeyboardInterrupt:
            typer.echo("interrupted: rerun the same command to resume", err=True)
            raise typer.Exit(130) from None
        typer.echo(f"{len(y)} points, clean accuracy {report.clean_accuracy:.4f} ({norm})")
        for k, e in enumerate(report.eps):
            stages_txt = ", ".join(f"{n} {acc[k]:.4f}" for n, acc in report.stage_accuracy.items())
            typer.echo(f"  eps {e:g}: robust accuracy {report.robust_accuracy[k]:.4f}  ({stages_txt})")
        for w in report.warnings:
            typer.echo(f"warning: {w}", err=True)
        if out is not None:
            atomic_write_text(out, json.dumps(report.summary(), indent=2) + "\n")
