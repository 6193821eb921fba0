"""The threat model and the Oracle: the black-box view of a model.

Every black-box, extraction and inversion attack talks to a model only through an
:class:`Oracle`. ``LocalOracle`` wraps an ``nn.Module``; an HTTP oracle for a served
model subclasses :class:`BaseOracle` the same way, so attacks cannot tell them apart.

Example:
    >>> oracle = LocalOracle(model, output="label", budget=10_000)   # doctest: +SKIP
    >>> labels = oracle.query(x, ids=torch.arange(len(x)))             # doctest: +SKIP
    >>> oracle.queries_total, oracle.remaining                         # doctest: +SKIP
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast, runtime_checkable

import torch
from torch import Tensor, nn

from dlsec.errors import DlsecError
from dlsec.models import CardLike
from dlsec.output_policies import POLICY_KINDS, OutputPolicy, PolicyError
from dlsec.training import predict_logits

Knowledge = Literal["white-box", "gray-box", "black-box"]
Norm = Literal["linf", "l2", "l1", "l0"]
OutputKind = Literal["scores", "topk", "rounded", "label", "noise", "reverse-sigmoid"]

KNOWLEDGE: tuple[str, ...] = ("white-box", "gray-box", "black-box")
NORMS: tuple[str, ...] = ("linf", "l2", "l1", "l0")
OUTPUTS: tuple[str, ...] = POLICY_KINDS


class ThreatModelError(DlsecError):
    """An inconsistent threat model."""


class OracleError(DlsecError):
    """A query the oracle refuses (wrong shape, outside the input bounds)."""


class BudgetExhausted(OracleError):
    """The query budget is spent; the oracle answers nothing more."""


@dataclass(frozen=True)
class ThreatModel:
    """What the attacker knows and may do: the one object that carries the threat from a
    config file or the command line into a scenario (``ScenarioContext.threat``).

    ``knowledge`` is ``white-box`` (weights and gradients), ``gray-box`` (the architecture
    and training recipe, not the weights) or ``black-box`` (queries through an
    :class:`Oracle`); ``eps`` is one or more perturbation radii measured in ``norm`` in
    input units, a tuple (one number is taken as a tuple of one); ``targeted`` asks for a
    chosen wrong class instead of any; ``bounds`` is the valid input range, the model
    card's (:meth:`from_card`), never assumed. A wrong value is a
    :class:`ThreatModelError` naming the field.

    Example:
        >>> tm = ThreatModel.from_card(card, knowledge="black-box", eps=[0.05, 0.1])  # doctest: +SKIP
        >>> tm.eps, tm.largest_eps, tm.with_eps(0.2).eps                               # doctest: +SKIP
        ((0.05, 0.1), 0.1, (0.2,))
    """

    knowledge: Knowledge = "white-box"
    norm: Norm = "linf"
    eps: tuple[float, ...] = (0.1,)
    targeted: bool = False
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.knowledge not in KNOWLEDGE:
            raise ThreatModelError(f"knowledge must be one of {', '.join(KNOWLEDGE)}, got {self.knowledge!r}")
        if self.norm not in NORMS:
            raise ThreatModelError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        raw = self.eps if isinstance(self.eps, Sequence) else [self.eps]
        try:
            eps = tuple(float(e) for e in raw)
        except (TypeError, ValueError):
            raise ThreatModelError(f"eps must be numbers, got {raw!r}") from None
        if not eps or any(not math.isfinite(e) or e < 0 for e in eps):
            raise ThreatModelError(f"eps must be finite and >= 0, got {list(eps)}")
        object.__setattr__(self, "eps", eps)
        if not isinstance(self.targeted, bool):
            raise ThreatModelError(f"targeted must be true or false, got {self.targeted!r}")
        lo, hi = (float(b) for b in self.bounds)
        if not lo < hi:
            raise ThreatModelError(f"bounds must satisfy low < high, got {[lo, hi]}")
        object.__setattr__(self, "bounds", (lo, hi))

    @classmethod
    def from_card(
        cls,
        card: CardLike,
        *,
        knowledge: Knowledge | str = "white-box",
        norm: Norm | str = "linf",
        eps: float | Sequence[float] = (0.1,),
        targeted: bool = False,
    ) -> ThreatModel:
        """A threat model whose bounds are the model card's; the other fields as given
        (strings from a config file or a flag are checked, not trusted)."""
        return cls(
            knowledge=cast(Knowledge, knowledge),
            norm=cast(Norm, norm),
            eps=cast(tuple[float, ...], eps),
            targeted=targeted,
            bounds=(float(card.bounds[0]), float(card.bounds[1])),
        )

    @property
    def largest_eps(self) -> float:
        """The largest radius (the one a single-radius evaluation reports)."""
        return max(self.eps)

    def with_eps(self, eps: float | Sequence[float]) -> ThreatModel:
        """The same threat at other radii (e.g. one radius of a sweep)."""
        return dataclasses.replace(self, eps=cast(tuple[float, ...], eps))


@runtime_checkable
class Oracle(Protocol):
    """The black-box view of a model: inputs in, (possibly degraded) outputs out, counted."""

    output: OutputKind
    num_classes: int
    input_shape: tuple[int, ...]
    bounds: tuple[float, float]

    @property
    def queries_total(self) -> int: ...

    @property
    def remaining(self) -> int | None: ...

    def query(self, x: Tensor, *, ids: Tensor | None = None) -> Tensor: ...

    def query_labels(self, x: Tensor, *, ids: Tensor | None = None) -> Tensor: ...

    def queries_for(self, ids: Tensor) -> Tensor: ...


@dataclass
class _Counter:
    total: int = 0
    per_sample: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))


class BaseOracle(abc.ABC):
    """Counting, budgets, input checks and output degradation; subclasses only score inputs.

    Output kinds (``output``), applied by one :class:`dlsec.output_policies.OutputPolicy`
    (the same code the model server runs for a key's policy):
      * ``scores``: class probabilities, ``N x K``;
      * ``topk``: probabilities of the ``top_k`` most likely classes, the rest zero;
      * ``rounded``: probabilities rounded to ``decimals`` places;
      * ``label``: the predicted class only, an ``N`` int64 tensor;
      * ``noise``, ``reverse-sigmoid``: perturbed scores; pass a policy with its
        parameters, ``output=OutputPolicy.parse("noise:0.05")`` (``output="noise"`` alone
        is refused: it has no sigma). ``output`` may be any :class:`OutputPolicy`; the
        attribute ``output`` is then its kind and ``policy`` the policy itself.

    ``seed`` seeds the oracle's own generator for the ``noise`` kind (answers are then
    reproducible; its state is in :meth:`state_dict`); ``None`` uses torch's global one.

    Every row sent counts as one query, whether or not ``ids`` are given; ``ids``
    (one int per row) attribute queries to samples for per-sample counts and
    per-sample budgets. A query that would exceed a budget raises
    :class:`BudgetExhausted` before anything is evaluated, so budgets are exact.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: Sequence[int],
        bounds: tuple[float, float],
        output: OutputKind | OutputPolicy = "scores",
        top_k: int = 1,
        decimals: int = 2,
        budget: int | None = None,
        per_sample_budget: int | None = None,
        seed: int | None = 0,
    ) -> None:
        if isinstance(output, OutputPolicy):
            top_k, decimals = output.k, output.decimals
        elif output not in OUTPUTS:
            raise OracleError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        if top_k < 1 or top_k > num_classes:
            raise OracleError(f"top_k must be in 1..{num_classes}, got {top_k}")
        if isinstance(output, OutputPolicy):
            policy = output
        else:
            try:
                policy = OutputPolicy(kind=output, k=top_k, decimals=decimals)
            except PolicyError as e:
                raise OracleError(f"output {output!r}: {e}; pass output=OutputPolicy.parse(...)") from None
        if budget is not None and budget < 0:
            raise OracleError(f"budget must be >= 0, got {budget}")
        self.policy = policy
        self.output: OutputKind = cast(OutputKind, policy.kind)
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self.top_k = top_k
        self.decimals = decimals
        self.budget = budget
        self.per_sample_budget = per_sample_budget
        self._count = _Counter()
        self._generator = None if seed is None else torch.Generator().manual_seed(int(seed))
        # called with the number of rows after each charged query (progress bars, logs)
        self.on_query: Callable[[int], None] | None = None

    # -- counting ---------------------------------------------------------------------------
    @property
    def queries_total(self) -> int:
        return self._count.total

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self._count.total

    def queries_for(self, ids: Tensor) -> Tensor:
        """Queries spent so far on each sample id (0 for ids never seen)."""
        ids = torch.as_tensor(ids, dtype=torch.int64).cpu()
        per = self._count.per_sample
        out = torch.zeros_like(ids)
        known = ids < per.numel()
        out[known] = per[ids[known]]
        return out

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"total": self._count.total,
                                 "per_sample": self._count.per_sample.clone()}
        if self._generator is not None:
            state["generator"] = self._generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._count = _Counter(int(state["total"]), state["per_sample"].clone())
        if self._generator is not None and "generator" in state:
            self._generator.set_state(state["generator"])

    def _charge(self, n: int, ids: Tensor | None) -> None:
        if self.budget is not None and self._count.total + n > self.budget:
            raise BudgetExhausted(
                f"query budget exhausted: {self._count.total} of {self.budget} spent, "
                f"{n} more asked"
            )
        if ids is not None:
            ids = torch.as_tensor(ids, dtype=torch.int64).flatten().cpu()
            if ids.numel() != n:
                raise OracleError(f"got {ids.numel()} ids for {n} inputs")
            if ids.numel() and int(ids.min()) < 0:
                raise OracleError("sample ids must be >= 0")
            size = int(ids.max()) + 1 if ids.numel() else 0
            per = self._count.per_sample
            if size > per.numel():
                per = torch.cat([per, torch.zeros(size - per.numel(), dtype=torch.int64)])
            add = torch.bincount(ids, minlength=per.numel())
            if self.per_sample_budget is not None and bool(
                ((per + add) > self.per_sample_budget).any()
            ):
                raise BudgetExhausted(f"per-sample query budget of {self.per_sample_budget} exhausted")
            self._count.per_sample = per + add
        self._count.total += n

    # -- answering --------------------------------------------------------------------------
    def _check(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.input_shape:
            raise OracleError(
                f"query shape {tuple(x.shape[1:])} does not match the model input {self.input_shape}"
            )
        if x.numel() and not bool(torch.isfinite(x).all()):
            raise OracleError("query contains NaN or inf")
        lo, hi = self.bounds
        tol = 1e-5 * (hi - lo)
        if x.numel() and (float(x.min()) < lo - tol or float(x.max()) > hi + tol):
            raise OracleError(f"query values outside the input bounds [{lo}, {hi}]")

    @abc.abstractmethod
    def _probabilities(self, x: Tensor) -> Tensor:
        """Class probabilities ``N x K`` for valid inputs (not yet degraded)."""

    def _degrade(self, probs: Tensor) -> Tensor:
        return self.policy.apply(probs, generator=self._generator)

    def query(self, x: Tensor, *, ids: Tensor | None = None) -> Tensor:
        """Answer a batch of queries; each row costs one query."""
        if x.dim() == len(self.input_shape):
            raise OracleError("query expects a batch: add a leading batch dimension")
        self._check(x)
        self._charge(int(x.shape[0]), ids)
        if self.on_query is not None:
            self.on_query(int(x.shape[0]))
        if x.shape[0] == 0:
            shape = (0,) if self.output == "label" else (0, self.num_classes)
            return torch.zeros(shape, dtype=torch.int64 if self.output == "label" else x.dtype)
        return self._degrade(self._probabilities(x))

    def query_labels(self, x: Tensor, *, ids: Tensor | None = None) -> Tensor:
        """Predicted labels whatever the output kind (costs the same queries as :meth:`query`)."""
        out = self.query(x, ids=ids)
        return out if self.output == "label" else out.argmax(1)


class LocalOracle(BaseOracle):
    """An oracle over a local ``nn.Module`` returning logits."""

    def __init__(
        self,
        model: nn.Module,
        *,
        num_classes: int | None = None,
        input_shape: Sequence[int] | None = None,
        bounds: tuple[float, float] | None = None,
        card: CardLike | None = None,
        batch_size: int = 1024,
        **kwargs: Any,
    ) -> None:
        if card is not None:
            num_classes = num_classes or card.num_classes
            input_shape = input_shape or card.input_shape
            bounds = bounds or (float(card.bounds[0]), float(card.bounds[1]))
        if num_classes is None or input_shape is None:
            raise OracleError("LocalOracle needs a card, or num_classes and input_shape")
        super().__init__(num_classes=num_classes, input_shape=input_shape,
                         bounds=bounds or (0.0, 1.0), **kwargs)
        self.model = model
        self.batch_size = batch_size

    def _probabilities(self, x: Tensor) -> Tensor:
        logits = predict_logits(self.model, x, batch_size=self.batch_size)
        return torch.softmax(logits.float(), dim=1).to(x.device)


class OracleWrapper:
    """An :class:`Oracle` in front of another one (``inner``): the same output kind, input
    shape, bounds, counts and budget. Subclasses override :meth:`query` to watch or change
    what goes through (a label-only view, an independent counter, a recorder);
    :meth:`query_labels` goes through :meth:`query`.
    """

    def __init__(self, inner: Oracle) -> None:
        self.inner = inner
        self.output: OutputKind = inner.output
        self.num_classes = inner.num_classes
        self.input_shape = inner.input_shape
        self.bounds = inner.bounds

    @property
    def queries_total(self) -> int:
        return self.inner.queries_total

    @property
    def remaining(self) -> int | None:
        return self.inner.remaining

    def queries_for(self, ids: Tensor) -> Tensor:
        return self.inner.queries_for(ids)

    def query(self, x: Tensor, *, ids: Tensor | None = None) -> Tensor:
        return self.inner.query(x, ids=ids)

    def query_labels(self, x: Tensor, *, ids: Tensor | None = None) -> Tensor:
        out = self.query(x, ids=ids)
        return out if self.output == "label" else out.argmax(1)
