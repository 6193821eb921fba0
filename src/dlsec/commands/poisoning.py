"""``dlsec poison ...`` (write a poisoned dataset) and ``dlsec sanitize`` (clean one).

The poisoned dataset is an ``.npz`` that ``--dataset npz:PATH`` loads as it is (``x``,
``y``, ``x_test``, ``y_test``, ``classes``, ``bounds``) plus ``poison_mask`` (the rows the
attack touched), ``y_clean`` and ``poison_info`` (the attack's settings as JSON), so
``dlsec sanitize`` can score its detection against the truth.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import torch
import typer

from dlsec.commands.options import (
    ThreadsOpt,
    TrustCodeOpt,
    count,
    ray_address_option,
    share,
    workers_option,
)
from dlsec.errors import DlsecError
from dlsec.training import SEED_MAX

if TYPE_CHECKING:
    from dlsec.data import Dataset
    from dlsec.scenarios.poisoning import PoisonResult

poison_app = typer.Typer(
    help="Poison a dataset's training split and write it as .npz (with the poison mask).",
)

DatasetOpt = Annotated[str, typer.Option(help="digits | fashion-mnist | mnist | idx:DIR | npz:PATH")]
OutOpt = Annotated[Path, typer.Option(help="Output .npz (loadable with --dataset npz:PATH)")]
SeedOpt = Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Seed for the choice of samples and the split")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output")]
ModelDirOpt = Annotated[str | None, typer.Option("--model-dir", help="Surrogate: a saved model (default: train one)")]
ModelOpt = Annotated[str, typer.Option(help="Architecture of the surrogate or of the sanitizer's models")]
EpochsOpt = Annotated[int, count("Training epochs of the surrogate / sanitizer models")]
RateOpt = Annotated[float, share("Share of labels to flip")]


def _check_out(out: Path, option: str = "--out") -> None:
    """Before any work: ``out`` is a file this process can write."""
    from dlsec.files import check_output

    check_output(out, kind="file", option=option)


def _save_npz(out: Path, ds: Dataset, x: torch.Tensor, y: torch.Tensor, **extra: Any) -> None:
    """Write training ``(x, y)`` with ``ds``'s test split, classes and bounds (atomically)."""
    from dlsec.files import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(
        buf, x=x.detach().cpu().numpy(), y=y.cpu().numpy(), x_test=ds.x_test.cpu().numpy(),
        y_test=ds.y_test.cpu().numpy(), classes=np.array(ds.classes),
        bounds=np.array(ds.bounds, dtype=np.float64), **extra,
    )
    atomic_write_bytes(out, buf.getvalue())


def _write(out: Path, ds: Dataset, result: PoisonResult) -> None:
    meta = {k: v for k, v in result.metadata.items() if not isinstance(v, torch.Tensor)}
    info = {"attack": result.attack, "source_dataset": ds.name, **meta}
    _save_npz(out, ds, result.x, result.y, poison_mask=result.mask.cpu().numpy(),
              y_clean=result.y_clean.cpu().numpy(), poison_info=np.array(json.dumps(info)))
    typer.echo(f"{result.attack}: {result.n_poisoned} of {result.mask.numel()} training samples "
               f"poisoned ({result.rate:.1%}); wrote {out}")


def _surrogate(ds: Dataset, model_dir: str | None, model: str, epochs: int, seed: int, quiet: bool,
               *, threads: int, trust_code: bool):
    from dlsec.commands.options import set_threads
    from dlsec.models import load
    from dlsec.training import TrainConfig, train_model

    if model_dir:
        # naming the card's own module:factory with --model is consent too
        net, _card = load(model_dir, trust_code=trust_code, factory=model)
        set_threads(threads, device="cpu", model=net)
        return net
    set_threads(threads, device="auto", architecture=model, dataset=ds)
    net, _card, _ = train_model(ds, model, TrainConfig(epochs=epochs, lr=3e-3, seed=seed),
                                progress=not quiet)
    return net


def _poison(attack: str, out: Path, dataset: str, seed: int, surrogate: dict[str, Any] | None = None,
            **settings: Any) -> None:
    """Check ``out``, load the data, poison it with the scenario's ``attack``, write it."""
    from dlsec.data import load_dataset
    from dlsec.scenarios.poisoning import poison_dataset

    _check_out(out)
    ds = load_dataset(dataset, seed=seed)
    if not 0 <= settings.get("target_index", 0) < ds.y_test.numel():  # before any training
        raise DlsecError(f"--target-index must be in 0..{ds.y_test.numel() - 1}")
    net = None if surrogate is None else _surrogate(ds, seed=seed, **surrogate)
    _write(out, ds, poison_dataset(attack, ds, seed=seed, surrogate=net, **settings))


@poison_app.command("random-flip")
def random_flip_cmd(
    out: OutOpt, rate: RateOpt = 0.2, dataset: DatasetOpt = "digits", seed: SeedOpt = 0,
) -> None:
    """Flip a random share of the labels to random other classes."""
    _poison("random-flip", out, dataset, seed, rate=rate)


@poison_app.command("label-flip")
def label_flip_cmd(
    out: OutOpt, rate: RateOpt = 0.2, dataset: DatasetOpt = "digits", seed: SeedOpt = 0,
) -> None:
    """Label flipping (random; the same as random-flip)."""
    random_flip_cmd(out=out, rate=rate, dataset=dataset, seed=seed)


@poison_app.command("targeted-flip")
def targeted_flip_cmd(
    out: OutOpt,
    source: Annotated[int, typer.Option(help="Class whose labels are flipped")],
    target: Annotated[int, typer.Option(help="The label they get")],
    rate: Annotated[float, share("Share of the source class to flip")] = 1.0,
    dataset: DatasetOpt = "digits", seed: SeedOpt = 0,
) -> None:
    """Relabel (a share of) one class as another, e.g. every 7 becomes 1."""
    _poison("targeted-flip", out, dataset, seed, source=source, target=target, rate=rate)


@poison_app.command("optimized-flip")
def optimized_flip_cmd(
    out: OutOpt, rate: RateOpt = 0.2,
    dataset: DatasetOpt = "digits", model_dir: ModelDirOpt = None,
    model: ModelOpt = "simplenet", epochs: EpochsOpt = 30, seed: SeedOpt = 0,
    threads: ThreadsOpt = 0, trust_code: TrustCodeOpt = False, quiet: QuietOpt = False,
) -> None:
    """Flip the labels a surrogate says hurt most (pushes class boundaries)."""
    surrogate = {"model_dir": model_dir, "model": model, "epochs": epochs, "quiet": quiet,
                 "threads": threads, "trust_code": trust_code}
    _poison("optimized-flip", out, dataset, seed, surrogate, rate=rate)


@poison_app.command("inject")
def inject_cmd(
    out: OutOpt,
    rate: Annotated[float, share("Share of the resulting set that is injected")] = 0.2,
    label: Annotated[int | None, typer.Option(help="Give every injected row this label")] = None,
    dataset: DatasetOpt = "digits", seed: SeedOpt = 0,
) -> None:
    """Append mislabeled copies of training samples."""
    _poison("inject", out, dataset, seed, rate=rate, label=label)


@poison_app.command("backdoor")
def backdoor_cmd(
    out: OutOpt,
    target: Annotated[int, typer.Option(help="Class the trigger sends inputs to")] = 0,
    rate: Annotated[float, share("Share of the training set poisoned")] = 0.05,
    trigger_size: Annotated[int | None, count("Patch side in pixels", "--trigger-size")] = None,
    pattern: Annotated[str, typer.Option(help="checker | square")] = "checker",
    mode: Annotated[str, typer.Option(help="replace | inject")] = "replace",
    dataset: DatasetOpt = "digits", seed: SeedOpt = 0,
) -> None:
    """BadNets: stamp a trigger patch on samples and relabel them as the target."""
    _poison("backdoor", out, dataset, seed, target=target, rate=rate, trigger_size=trigger_size,
            pattern=pattern, mode=mode)


@poison_app.command("feature-collision")
def feature_collision_cmd(
    out: OutOpt,
    target_index: Annotated[int, typer.Option("--target-index", help="Test sample to attack")] = 0,
    base_label: Annotated[int | None, typer.Option("--base-label", help="Class to send it to (default: next class)")] = None,
    n_poisons: Annotated[int, count("Poisons to craft", "--n-poisons")] = 20,
    steps: Annotated[int, count("Optimization steps")] = 200,
    opacity: Annotated[float, share("Blend of the target into the bases")] = 0.0,
    dataset: DatasetOpt = "digits", model_dir: ModelDirOpt = None,
    model: ModelOpt = "simplenet", epochs: EpochsOpt = 30, seed: SeedOpt = 0,
    threads: ThreadsOpt = 0, trust_code: TrustCodeOpt = False, quiet: QuietOpt = False,
) -> None:
    """Clean-label Poison Frogs: poisons that collide with a test sample in feature space."""
    surrogate = {"model_dir": model_dir, "model": model, "epochs": epochs, "quiet": quiet,
                 "threads": threads, "trust_code": trust_code}
    _poison("feature-collision", out, dataset, seed, surrogate, target_index=target_index,
            base_label=base_label, n_poisons=n_poisons, steps=steps, opacity=opacity)


def sanitize_cmd(
    dataset: Annotated[str, typer.Option(help="The suspect data, e.g. npz:poisoned.npz")],
    out: Annotated[Path, typer.Option(help="Output .npz with the kept training samples")],
    method: Annotated[str, typer.Option(help="cleanlab | knn | loss | spectral | activation")] = "cleanlab",
    model: ModelOpt = "simplenet", epochs: EpochsOpt = 30,
    folds: Annotated[int, count("Cross-validation folds (cleanlab, loss): 2 .. training samples", low=2)] = 5,
    scores_out: Annotated[Path | None, typer.Option("--scores-out", help="Also write the per-sample scores and flags as JSON")] = None,
    seed: SeedOpt = 0, threads: ThreadsOpt = 0,
    workers: Annotated[int, workers_option(
        "The sanitizer's trainings (cleanlab, loss: one per fold)")] = 1,
    ray_address: Annotated[str | None, ray_address_option("the sanitizer's trainings")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Flag suspicious training samples, write the rest; score detection when the data
    carries a ``poison_mask`` (as ``dlsec poison`` writes)."""
    from dlsec.commands.options import set_threads
    from dlsec.data import load_dataset
    from dlsec.executor import make_executor
    from dlsec.files import atomic_write_text
    from dlsec.scenarios.poisoning import SANITIZERS, sanitize_dataset

    _check_out(out)
    if scores_out is not None:
        _check_out(scores_out, "--scores-out")
        if Path(scores_out).absolute() == Path(out).absolute():
            raise DlsecError("--scores-out: must differ from --out")
    if method not in SANITIZERS:
        raise DlsecError(f"--method: unknown sanitizer {method!r} (choose from "
                         f"{', '.join(SANITIZERS)})")
    executor = make_executor(workers, ray_address)  # no Ray, a bad address: now
    ds = load_dataset(dataset, seed=seed)
    if folds > ds.y_train.numel():
        raise DlsecError(
            f"--folds: must be 2..{ds.y_train.numel()} (the training samples), got {folds}"
        )
    truth = None
    if dataset.startswith("npz:") and ds.extra.get("split") == "file":
        with np.load(Path(dataset[4:]), allow_pickle=False) as arch:
            if "poison_mask" in arch.files and arch["poison_mask"].shape == (ds.y_train.numel(),):
                truth = torch.from_numpy(arch["poison_mask"].astype(bool))
    set_threads(threads, device="auto", architecture=model, dataset=ds)
    with executor:
        res, d = sanitize_dataset(ds, method, architecture=model, epochs=epochs, folds=folds,
                                  seed=seed, truth=truth, progress=not quiet, executor=executor)
    keep = res.keep()
    line = f"{method}: flagged {res.n_flagged} of {ds.y_train.numel()} training samples"
    if d is not None:
        line += f"; precision {d.precision:.3f}, recall {d.recall:.3f} against poison_mask"
    _save_npz(out, ds, ds.x_train[keep], ds.y_train[keep])
    if scores_out is not None:
        atomic_write_text(scores_out, json.dumps({
            "method": method, "scores": [round(float(s), 6) for s in res.scores],
            "flagged": res.mask.tolist(),
            "metadata": {k: v for k, v in res.metadata.items() if not isinstance(v, torch.Tensor)},
        }) + "\n")
    typer.echo(f"{line}; wrote {keep.numel()} kept samples to {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(poison_app, name="poison")
    app.command("sanitize")(sanitize_cmd)
