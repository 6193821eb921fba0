"""What every scenario starts from: the model, its card, the data, the threat model, a seed.

:class:`ScenarioContext` is built once by a front-end (an audit section, a CLI command, a
benchmark) and handed to a scenario function. Its seed streams are named by strings
(``ctx.generator("blackbox/square")``, seeded by a hash of the run's seed and the name):
two uses cannot collide by accident, and a reader sees what each stream is for.

A remote target (a model served by ``dlsec serve``, seen through ``--url``) is a context
built by :meth:`ScenarioContext.for_remote` from an oracle factory: there are no weights,
the card is what the server reports (input shape, classes, bounds) plus the attacker's
guess of an architecture for substitutes, and ``model`` is a :class:`RemoteModel`, which
answers with the target's labels (each call is charged by the server like any query) and
refuses gradients in one line. Scenarios that only query the oracle run unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlsec.data import Dataset, stratified_split
from dlsec.errors import DlsecError
from dlsec.executor import Executor, SequentialExecutor
from dlsec.models import ModelCard
from dlsec.output_policies import OutputPolicy
from dlsec.threat import BaseOracle, LocalOracle, Oracle, OracleWrapper, ThreatModel

# builds a fresh oracle of the remote target; takes budget= and per_sample_budget=
OracleFactory = Callable[..., BaseOracle]

SEED_BITS = 63


def stream_seed(seed: int, stream: str) -> int:
    """The seed of the stream named ``stream`` in a run seeded ``seed``: the first 63 bits of
    ``sha256("<seed>/<stream>")``. Example: ``stream_seed(0, "a") != stream_seed(0, "b")``."""
    digest = hashlib.sha256(f"{int(seed)}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)


class RemoteTargetError(DlsecError):
    """What a remote target cannot give (weights, gradients, an output its key is not
    allowed)."""


class _LabelView(OracleWrapper):
    """The label-only view of a scores oracle (counts and budget are the inner oracle's)."""

    def __init__(self, inner: Oracle) -> None:
        super().__init__(inner)
        self.output = "label"

    def query(self, x: Tensor, *, ids: Tensor | None = None) -> Tensor:
        return self.inner.query_labels(x, ids=ids)


def adapt_output(oracle: BaseOracle, output: str | OutputPolicy) -> Oracle:
    """``oracle`` (whose answers a server already degraded by its own policy) as the view a
    scenario asks for: ``label`` from any answers (the argmax of scores); ``scores`` from
    any non-label answers, as sent; the server's own policy as is. Anything else (scores
    from a label-only key, a policy other than the server's) is a one-line
    :class:`RemoteTargetError`."""
    want = output if isinstance(output, OutputPolicy) else OutputPolicy.parse(output)
    have = oracle.policy
    if want.kind == "label":
        return oracle if have.kind == "label" else _LabelView(oracle)
    if want == have or (want.kind == "scores" and have.kind != "label"):
        return oracle
    raise RemoteTargetError(f"the server answers this key with {have.spec()!r}; this run needs "
                            f"{want.spec()!r}")


class RemoteModel(nn.Module):
    """The model slot of a remote target: ``model(x)`` returns the target's labels as one-hot
    rows (so ``model(x).argmax(1)`` is what the server says; every row is a query the
    server charges), and refuses gradients: a white-box attack on a remote target is a
    one-line :class:`RemoteTargetError`, never a silent attack on zero gradients."""

    def __init__(self, factory: OracleFactory, num_classes: int) -> None:
        super().__init__()
        self.factory = factory
        self.num_classes = num_classes
        self._oracle: Oracle | None = None
        # no weights; an empty tensor tells code that asks for the model's device (cpu)
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RemoteTargetError("this needs the model's weights (gradients); a remote "
                                    "target (--url) only answers queries")
        if self._oracle is None:
            self._oracle = _LabelView(self.factory())
        labels = self._oracle.query_labels(x.detach())
        return F.one_hot(labels.to(torch.int64), self.num_classes).to(torch.float32)


@dataclass
class ScenarioContext:
    """Shared, read-only inputs of a scenario. Scenarios must not modify the model.

    ``threat`` carries what the attacker knows and may do (knowledge, norm, epsilons,
    targeted, bounds); its bounds are the card's unless the caller says otherwise.
    ``served``: the model is seen through this output policy (a defended serving variant,
    as ``dlsec serve`` would answer a key with it): every :meth:`oracle` answers in it,
    and a view it cannot give (scores from a label-only policy) is a one-line
    :class:`RemoteTargetError`, as for a remote target. White-box access (``model``) is
    unchanged. ``executor``: where the scenario's independent trainings run (shadow models,
    defended rows; :mod:`dlsec.executor`), one after another here by default.
    """

    model: nn.Module
    card: ModelCard
    dataset: Dataset
    threat: ThreatModel | None = None
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = False
    remote: OracleFactory | None = None
    served: OutputPolicy | None = None
    executor: Executor = field(default_factory=SequentialExecutor)

    def __post_init__(self) -> None:
        if self.threat is None:
            self.threat = ThreatModel.from_card(self.card)

    # -- randomness ------------------------------------------------------------------------
    def seed_for(self, stream: str) -> int:
        """The integer seed of the named stream (for APIs that take a seed, not a generator)."""
        return stream_seed(self.seed, stream)

    def generator(self, stream: str) -> torch.Generator:
        """A fresh CPU generator for the named stream; the same name gives the same numbers."""
        return torch.Generator().manual_seed(self.seed_for(stream))

    @classmethod
    def for_remote(cls, factory: OracleFactory, dataset: Dataset, *, architecture: str,
                   threat: ThreatModel | None = None, seed: int = 0, progress: bool = False,
                   **threat_settings: Any) -> ScenarioContext:
        """The context of a remote target: ``factory()`` builds its oracle (the server's
        input shape, classes and bounds are read from it and checked against
        ``dataset``); ``architecture`` is the attacker's guess for substitutes and
        surrogates. ``threat_settings`` go to :meth:`ThreatModel.from_card` when no
        ``threat`` is given."""
        probe = factory()
        if tuple(dataset.input_shape) != tuple(probe.input_shape):
            raise RemoteTargetError(
                f"--dataset: {dataset.name} inputs {tuple(dataset.input_shape)} do not fit the "
                f"served model's {tuple(probe.input_shape)}")
        if dataset.num_classes != probe.num_classes:
            raise RemoteTargetError(
                f"--dataset: {dataset.name} has {dataset.num_classes} classes, the served "
                f"model {probe.num_classes}")
        classes = list(getattr(probe, "classes", None) or dataset.classes)
        card = ModelCard(architecture=architecture, input_shape=list(probe.input_shape),
                         classes=[str(c) for c in classes], bounds=probe.bounds,
                         dataset=dataset.name)
        if threat is None:
            threat = ThreatModel.from_card(card, **threat_settings)
        return cls(model=RemoteModel(factory, probe.num_classes), card=card, dataset=dataset,
                   threat=threat, seed=seed, progress=progress, remote=factory)

    # -- the model's views ------------------------------------------------------------------
    def oracle(self, **kwargs: Any) -> Any:
        """A fresh black-box view of the model (see :class:`dlsec.threat.BaseOracle`); for
        a remote target, a fresh oracle of the server as the view ``output`` asks for
        (:func:`adapt_output`; the server's budget applies, ``budget`` on top); with
        ``served``, the local model answering in that policy, adapted the same way."""
        if self.remote is None and self.served is None:
            return LocalOracle(self.model, card=self.card, **kwargs)
        output = kwargs.pop("output", "scores")
        if self.remote is None:
            served = LocalOracle(self.model, card=self.card, output=self.served, **kwargs)
            return adapt_output(served, output)
        return adapt_output(self.remote(**kwargs), output)

    # -- data the threat needs ----------------------------------------------------------------
    def member_indices(self) -> Tensor:
        """Indices into the training split of the records the model trained on: the split
        minus the validation share the card's :class:`dlsec.models.TrainingRecord` states
        (the same stratified split, same seed, that :func:`dlsec.training.fit` took)."""
        record = self.card.training_record
        n = self.dataset.y_train.shape[0]
        if record.val_fraction <= 0 or n < 2:
            return torch.arange(n)
        idx, _ = stratified_split(
            self.dataset.y_train, test_size=record.val_fraction, seed=record.seed
        )
        return idx

    def attacker_split(self, n_attacked: int) -> tuple[Tensor, Tensor]:
        """The test split cut in two: the first ``n_attacked`` indices are the points under
        attack, the rest is data the attacker may hold (never the points it attacks)."""
        n = self.dataset.y_test.shape[0]
        k = max(0, min(int(n_attacked), n))
        return torch.arange(k), torch.arange(k, n)


__all__ = ["OracleFactory", "RemoteModel", "RemoteTargetError", "ScenarioContext",
           "adapt_output", "stream_seed"]
