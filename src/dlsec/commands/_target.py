"""What the evasion commands share: the saved model and the test points it is attacked on,
the ``--eps`` list, and the ``.npz`` the adversarials are written to."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dlsec.errors import DlsecError

if TYPE_CHECKING:
    from dlsec.data import Dataset
    from dlsec.models import ModelCard

ModelDirOpt = Annotated[Path, typer.Option("--model-dir", help="A saved model (card.json + weights)")]


class EvasionCommandError(DlsecError):
    """Bad flags for an evasion command."""


def parse_eps(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EvasionCommandError(f"--eps: expected comma-separated numbers, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise EvasionCommandError(f"--eps: expected finite numbers >= 0, got {text!r}")
    return values


def load_model_data(
    model_dir: Path, dataset: str | None, device: str, *, threads: int = 0,
    trust_code: bool = False,
) -> tuple[Any, ModelCard, Dataset]:
    """The saved model, its card and the dataset it is attacked on (split with the seed it
    trained with); sets the CPU threads for that model
    (:func:`dlsec.commands.options.set_threads`)."""
    from dlsec.commands.options import set_threads
    from dlsec.data import load_dataset
    from dlsec.models import load
    from dlsec.training import resolve_device

    model, card = load(model_dir, device=resolve_device(device), trust_code=trust_code)
    set_threads(threads, device=device, model=model)
    spec = dataset or card.dataset
    if not spec:
        raise EvasionCommandError("--dataset: the model card names no dataset; pass one")
    ds = load_dataset(spec, seed=card.training_record.seed)
    if tuple(ds.input_shape) != tuple(card.input_shape):
        raise EvasionCommandError(
            f"--dataset: {spec} inputs {tuple(ds.input_shape)} do not fit the model "
            f"{tuple(card.input_shape)}"
        )
    return model, card, ds


def check_samples(samples: int | None) -> None:
    if samples is not None and samples < 1:
        raise EvasionCommandError(f"--samples: must be >= 1, got {samples}")


def save_npz(path: Path, arrays: dict[str, Any]) -> None:
    import numpy as np

    from dlsec.files import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
