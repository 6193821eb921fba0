"""``dlsec attack NAME`` and ``dlsec evaluate``: evasion attacks and the robustness ensemble on
a saved model (flags -> threat model + scenario context -> :mod:`dlsec.scenarios.whitebox`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dlsec.commands._target import (
    ApiKeyOpt,
    EvasionCommandError,
    ModelDirOpt,
    UrlOpt,
    check_target,
    load_model_data,
    parse_eps,
    save_npz,
)
from dlsec.commands.options import DeviceOpt, SeedOpt, ThreadsOpt, TrustCodeOpt, count
from dlsec.scenarios import ScenarioContext
from dlsec.threat import ThreatModel

AmpOpt = Annotated[str, typer.Option(help="Precision of the white-box search: off | bf16 | fp16 (CUDA only); every adversarial is checked in float32 before it counts")]


def register(app: typer.Typer) -> None:
    @app.command("attack")
    def attack(
        name: Annotated[str, typer.Argument(help="White-box: fgsm | bim | pgd | mifgsm | difgsm | apgd | apgd-t | cw | deepfool. Black-box: square | simba | nes (scores), hsja | boundary (labels), transfer")],
        model_dir: Annotated[Path | None, typer.Option("--model-dir", help="A saved model (card.json + weights)")] = None,
        url: UrlOpt = None,
        api_key: ApiKeyOpt = None,
        eps: Annotated[str | None, typer.Option(help="Comma-separated epsilons, e.g. 0.05,0.1,0.2 (optional for hsja and boundary)")] = None,
        out: Annotated[Path | None, typer.Option(help="Write adversarials to this .npz")] = None,
        dataset: Annotated[str | None, typer.Option(help="Default: the dataset named in the card (required with --url)")] = None,
        norm: Annotated[str | None, typer.Option(help="linf | l2 (default: linf; l2 for cw, deepfool and boundary)")] = None,
        steps: Annotated[int | None, count("Iterations (iterative attacks)")] = None,
        samples: Annotated[int | None, count("Attack the first N test points")] = None,
        targeted: Annotated[bool, typer.Option(help="Targeted attack")] = False,
        target: Annotated[str, typer.Option(help="random | least-likely | a class index")] = "random",
        seed: SeedOpt = 0,
        device: DeviceOpt = "auto",
        threads: ThreadsOpt = 0,
        trust_code: TrustCodeOpt = False,
        max_queries: Annotated[int | None, count("square, simba, nes, hsja, boundary: oracle queries per point (default 1000)")] = None,
        budget: Annotated[int | None, count("transfer: the oracle labels the surrogate trains on (default 1000); deprecated for the other black-box attacks (use --max-queries)")] = None,
        basis: Annotated[str, typer.Option(help="SimBA: pixel | dct")] = "pixel",
        surrogate: Annotated[str, typer.Option(help="transfer: jacobian | knockoff | graybox")] = "jacobian",
        craft: Annotated[str, typer.Option(help="transfer: white-box attacks run on the surrogate")] = "pgd,mifgsm,difgsm",
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Black-box attacks: no progress bar")] = False,
        block_size: Annotated[int | None, count("square, simba, nes, hsja, boundary: attack the points in blocks of N, each seeded from its index: a run sharded under torchrun with the same N gives the same result (sharded runs default to one block per process and print the N they used)")] = None,
        state: Annotated[Path | None, typer.Option(help="square, simba, nes, hsja, boundary: resume file, each finished block saved to it (needs --block-size in one process; under torchrun each rank its own <state>.rank<k>-of-<N>)")] = None,
        amp: AmpOpt = "off",
    ) -> None:
        """Run an evasion attack over a list of epsilons; print robust accuracy.

        White-box attacks use gradients. Black-box attacks see the model only through an
        oracle: ``square``, ``simba`` and ``nes`` read its scores and spend at most
        ``--max-queries`` queries per point; ``hsja`` and ``boundary`` read labels only,
        spend ``--max-queries`` queries per point and report the smallest adversarials
        found; ``transfer`` trains a ``--surrogate`` on at most ``--budget`` oracle labels,
        crafts adversarials on it with ``--craft`` and sends each once to the model.
        ``--url`` (with ``--api-key`` or ``DLSEC_API_KEY``, and ``--dataset``) runs a
        black-box attack against a model served by ``dlsec serve``. The query attacks
        shard their points under ``torchrun --nproc-per-node N`` (the result of one
        process with the same ``--block-size``) and resume block by block from ``--state``.
        """
        import numpy as np

        from dlsec.commands._blackbox import BLACK_BOX, DECISION_BASED, run_black_box
        from dlsec.files import check_output
        from dlsec.scenarios.whitebox import make_white_box, single_attack

        if target.startswith(("http://", "https://")):
            raise EvasionCommandError("--target is the class a targeted attack aims at; to "
                                      f"attack a served model pass --url {target}")
        check_target(model_dir, url)
        if url is not None and name not in BLACK_BOX:
            raise EvasionCommandError(f"--url: {name} is not a black-box attack (white-box attacks need the model's "
                                      f"weights); against a served model use {', '.join(BLACK_BOX)}")
        if out is not None:
            check_output(out, kind="file", option="--out")
        eps_list = parse_eps(eps) if eps is not None else None
        if name in BLACK_BOX and amp != "off":
            raise EvasionCommandError(f"--amp: half precision is for the white-box gradient "
                                      f"attacks; {name} queries the model in float32")
        if name not in BLACK_BOX and (block_size is not None or state is not None):
            raise EvasionCommandError(f"--block-size/--state: blocks and resume are for the "
                                      f"black-box query attacks, not {name}")
        if name in BLACK_BOX:
            if budget is not None and name != "transfer":
                typer.echo(f"warning: --budget for {name} is deprecated: use --max-queries "
                           "(queries per point); --budget is the oracle's total", err=True)
                max_queries, budget = budget if max_queries is None else max_queries, None
            run_black_box(name, model_dir, eps_list, out=out, dataset=dataset, samples=samples,
                          seed=seed, device=device,
                          max_queries=1000 if max_queries is None else max_queries,
                          budget=1000 if budget is None else budget, basis=basis,
                          norm=norm or ("l2" if name == "boundary" else "linf"),
                          surrogate=surrogate, craft=craft, threads=threads,
                          trust_code=trust_code, progress=not quiet, url=url, api_key=api_key,
                          block_size=block_size, state=state)
            return
        assert model_dir is not None
        if eps_list is None:
            raise EvasionCommandError(
                f"--eps: {name} needs epsilons (only {' and '.join(DECISION_BASED)} go without)"
            )
        norm = norm or ("l2" if name in ("cw", "deepfool") else "linf")
        if norm not in ("linf", "l2"):
            raise EvasionCommandError(f"--norm: norm must be linf or l2, got {norm!r}")
        tgt: str | int = int(target) if target.lstrip("-").isdigit() else target
        make_white_box(name, norm, steps=steps)  # a bad name or setting, before any work
        ctx = _context(model_dir, dataset, device, threads, trust_code, seed, quiet,
                       norm=norm, eps=tuple(eps_list), targeted=targeted)
        if isinstance(tgt, int) and not 0 <= tgt < ctx.card.num_classes:
            raise EvasionCommandError(
                f"--target: a class index must be in 0..{ctx.card.num_classes - 1}, got {target}"
            )
        result = single_attack(ctx, name, samples=samples, steps=steps, target=tgt,
                               amp=amp)
        res = result.artifacts["result"]
        typer.echo(result.summary)
        for e, ra, sr in zip(res.eps, res.robust_accuracy, res.success_rate, strict=True):
            typer.echo(f"  eps {e:g}: robust accuracy {ra:.4f}, success rate {sr:.4f}")
        if out is not None:
            x, y = result.artifacts["x"], result.artifacts["y"]
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
        block_size: Annotated[int | None, count("Attack the points in blocks of N, each seeded from its index: a run sharded under torchrun with the same N gives the same result (sharded runs default to one block per process and print the N they used)")] = None,
        amp: AmpOpt = "off",
    ) -> None:
        """Robust accuracy under the AutoAttack-style ensemble, with the sanity checks.

        Under ``torchrun --nproc-per-node N`` the points are shared out between the N
        processes (gloo on CPU, nccl on CUDA) and gathered into one result, the one of a
        single process run with the same ``--block-size``; rank 0 prints and writes
        ``--out``; each rank resumes from its own ``<state>.rank<k>-of-<N>``.
        """
        import dataclasses
        import json

        import torch

        from dlsec.files import atomic_write_text, check_output
        from dlsec.scenarios.sharding import current_shard, launched_shard
        from dlsec.scenarios.whitebox import check_state_file, ensemble_evaluation

        if out is not None:
            check_output(out, kind="file", option="--out")
        if state is not None:  # this rank's own file under torchrun, before any work
            launched = launched_shard()
            check_output(state, kind="file", option="--state")
            check_state_file(state if launched is None else launched.state_path(state))
        eps_list = parse_eps(eps)
        if norm not in ("linf", "l2"):
            raise EvasionCommandError(f"--norm: norm must be linf or l2, got {norm!r}")
        ctx = _context(model_dir, dataset, device, threads, trust_code, seed, quiet,
                       norm=norm, eps=tuple(eps_list))
        shard = current_shard(ctx.device, block_size)
        if shard is not None and ctx.device.type == "cuda":
            rank_device = torch.device("cuda", torch.cuda.current_device())
            ctx = dataclasses.replace(ctx, model=ctx.model.to(rank_device), device=rank_device)
        main = shard is None or shard.is_main
        stages = [a.strip() for a in attacks.split(",") if a.strip()] if attacks else None
        try:
            result = ensemble_evaluation(ctx, samples=samples, stages=stages, state_path=state,
                                         shard=shard, block_size=block_size, amp=amp)
        except KeyboardInterrupt:
            typer.echo("interrupted: rerun the same command to resume", err=True)
            raise typer.Exit(130) from None
        if not main:
            return
        report = result.artifacts["report"]
        typer.echo(f"{len(result.artifacts['y'])} points, clean accuracy "
                   f"{report.clean_accuracy:.4f} ({norm})")
        if report.block_size is not None:
            procs = 1 if shard is None else shard.world_size
            typer.echo(f"  {procs} process(es), blocks of {report.block_size} points "
                       f"(one process reproduces it with --block-size {report.block_size})")
        for k, e in enumerate(report.eps):
            stages_txt = ", ".join(f"{n} {acc[k]:.4f}" for n, acc in report.stage_accuracy.items())
            typer.echo(f"  eps {e:g}: robust accuracy {report.robust_accuracy[k]:.4f}  ({stages_txt})")
        for w in result.warnings:
            typer.echo(f"warning: {w}", err=True)
        if out is not None:
            atomic_write_text(out, json.dumps(result.details, indent=2) + "\n")


def _context(
    model_dir: Path, dataset: str | None, device: str, threads: int, trust_code: bool,
    seed: int, quiet: bool, **threat: Any,
) -> ScenarioContext:
    """The saved model, its data and the threat the flags describe, as a scenario context."""
    model, card, ds = load_model_data(model_dir, dataset, device, threads=threads,
                                      trust_code=trust_code)
    tm = ThreatModel.from_card(card, **threat)
    return ScenarioContext(model=model, card=card, dataset=ds, threat=tm, seed=seed,
                           device=next(model.parameters()).device, progress=not quiet)
