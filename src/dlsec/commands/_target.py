"""What the evasion commands share: the saved model (or a served one, ``--url``) and the
test points it is attacked on, the ``--eps`` list, and the ``.npz`` the adversarials are
written to.

A served model (``dlsec serve``) is attacked through :class:`dlsec.serve.HttpOracle`:
``--url URL`` with ``--api-key KEY`` or the ``DLSEC_API_KEY`` variable (the key is never
printed), and ``--dataset`` (required: the server does not say which data it learned
from; a dataset without a test split is split with ``--seed``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dlsec.errors import DlsecError

if TYPE_CHECKING:
    from dlsec.data import Dataset
    from dlsec.models import ModelCard
    from dlsec.scenarios import ScenarioContext
    from dlsec.scenarios.context import OracleFactory

ModelDirOpt = Annotated[Path, typer.Option("--model-dir", help="A saved model (card.json + weights)")]
UrlOpt = Annotated[str | None, typer.Option(
    "--url", help="A model served by dlsec serve, e.g. http://127.0.0.1:8000 (black-box only)")]
ApiKeyOpt = Annotated[str | None, typer.Option(
    "--api-key", help="The key for --url (default: the DLSEC_API_KEY variable)",
    show_default=False)]

# the attacker's guess of the served model's architecture, for substitutes and surrogates
REMOTE_ARCHITECTURE = "simplenet"
CONNECT_TIMEOUT = 5.0  # seconds: an unreachable server is an error well within 10 s
REQUEST_TIMEOUT = 60.0


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


def check_target(model_dir: Path | None, url: str | None) -> None:
    """Exactly one of ``--model-dir`` and ``--url`` (else a usage error: one line that ends
    with the command's ``--help``)."""
    if (model_dir is None) == (url is None):
        raise typer.BadParameter("name the target: --model-dir DIR (a saved model) or --url "
                                 "URL (a served one), not both")


class RemoteOracles:
    """A factory of :class:`dlsec.serve.HttpOracle` s of one URL over one HTTP client; it
    remembers the oracles it made, to tell afterwards whether the server's budget ran out."""

    def __init__(self, url: str, api_key: str | None, client: Any) -> None:
        self.url, self._key, self._client = url, api_key, client
        self.made: list[Any] = []
        # set by a command that knows its result is whole although the budget reached 0
        # with its last query (membership buys exactly the records it scores)
        self.whole = False

    def __call__(self, **kwargs: Any) -> Any:
        from dlsec.serve.http_oracle import HttpOracle

        oracle = HttpOracle(self.url, self._key, client=self._client, **kwargs)
        self.made.append(oracle)
        return oracle

    @property
    def budget_spent(self) -> bool:
        """Whether the server said this key has no rows left (the latest answer of any
        oracle made here): the results are then partial."""
        return any(o.server_remaining == 0 for o in self.made)


@contextmanager
def remote_oracles(url: str, api_key: str | None) -> Iterator[RemoteOracles]:
    """:class:`RemoteOracles` of ``url`` sharing one HTTP client (closed on exit); each
    oracle takes ``budget=`` and ``per_sample_budget=``. A spent server budget is told
    on stderr in one line when the block ends."""
    import httpx

    client = httpx.Client(timeout=httpx.Timeout(REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT),
                          follow_redirects=False)
    factory = RemoteOracles(url, api_key, client)
    try:
        yield factory
    finally:
        client.close()
    if factory.budget_spent and not factory.whole:
        typer.echo("warning: the server's query budget for this key ran out: the results "
                   "above are partial", err=True)


def remote_context(factory: OracleFactory, dataset: str | None, *, seed: int, progress: bool,
                   test_size: float = 0.2, **threat: Any) -> ScenarioContext:
    """The scenario context of a served model: the server's input contract, ``dataset``
    (required) split with ``seed`` (``test_size``: the test share of a dataset that ships
    none); ``threat`` settings for the threat model."""
    from dlsec.data import load_dataset
    from dlsec.scenarios import ScenarioContext

    if not dataset:
        raise EvasionCommandError("--dataset: required with --url (the server does not say "
                                  "which data its model learned from)")
    ds = load_dataset(dataset, seed=seed, test_size=test_size)
    return ScenarioContext.for_remote(factory, ds, architecture=REMOTE_ARCHITECTURE, seed=seed,
                                      progress=progress, **threat)
