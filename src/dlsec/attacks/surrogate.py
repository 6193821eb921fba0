"""Surrogate training: models an attacker builds to stand in for the target.

One module for what model extraction (a privacy attack: steal the model through its API)
and transfer attacks (craft adversarials on a stand-in) share. :func:`extract` trains a
substitute on the oracle's answers under a query strategy; :func:`train_surrogate` builds
a transfer attack's surrogate (Jacobian augmentation, knockoff, or gray-box on labelled
data) on top of it; :func:`fresh_model` builds an untrained model of the card's
architecture.

Tramèr, Zhang, Juels, Reiter, Ristenpart, "Stealing Machine Learning Models via
Prediction APIs" (USENIX Security 2016) stole models hosted by commercial APIs from
their answers alone. The attacker sends queries, keeps the answers (probability
vectors, or labels only) and trains a substitute of a guessed architecture on them.
How the queries are chosen is the *strategy*:

* ``random`` — uniform noise inside the input bounds (no data needed);
* ``natural`` — unlabeled natural data the attacker has (``x_pool``: in- or
  out-of-distribution, e.g. image patches, as Orekondy et al.'s Knockoff Nets, CVPR
  2019); once the pool is used up, random mixtures of two pool records (mixup);
* ``jacobian`` — Papernot et al.'s Jacobian-based augmentation (AsiaCCS 2017): from a
  small seed set, each round adds ``x + lam * sign(d substitute_label(x) / dx)`` for
  every point, with the victim's label, doubling the set (``lam`` flips sign every
  ``tau`` rounds); a random subset when the doubling would exceed the budget;
* ``active`` — uncertainty-based active learning (Pal et al., ActiveThief, AAAI 2020):
  each round draws ``candidates_factor`` times more candidates than it may query from
  the ``natural`` proposal and queries those the current substitute is least sure about
  (highest predictive entropy).

With full scores the substitute is trained on the victim's probabilities (soft
cross-entropy), with labels only on the labels. The substitute is retrained (warm
start, :func:`dlsec.training.fit`) at every checkpoint of the query schedule, and its
**fidelity** (agreement with the victim's labels on held-out data) and accuracy are
recorded against the number of queries spent.

Threat model: black-box; the attacker knows the input shape and bounds and guesses the
architecture (``card``). Evaluation labels of the victim (``eval_victim_labels``) are
computed by the evaluator, not charged to the attacker's budget.

Example:
    >>> oracle = LocalOracle(victim, card=card, output="scores", budget=10_000)   # doctest: +SKIP
    >>> res = extract(oracle, card=card, strategy="active", budget=10_000, x_pool=pool,
    ...               eval_x=x_test, eval_victim_labels=victim_labels)              # doctest: +SKIP
    >>> res.fidelity, res.queries                                                 # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlsec.attacks.core import AttackError
from dlsec.models import ModelCard
from dlsec.threat import Oracle, OracleWrapper
from dlsec.training import TrainConfig, fit, predict_logits, resolve_device

Strategy = Literal["random", "natural", "jacobian", "active"]
STRATEGIES: tuple[str, ...] = ("random", "natural", "jacobian", "active")
SURROGATE_STRATEGIES: tuple[str, ...] = ("jacobian", "knockoff", "graybox")


@dataclass
class ExtractionResult:
    """The stolen substitute and how close it came, per checkpoint of the query schedule."""

    substitute: nn.Module
    strategy: str
    output: str
    queries: int
    curve: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def fidelity(self) -> float:
        return self.curve[-1]["fidelity"] if self.curve else float("nan")

    @property
    def accuracy(self) -> float:
        return self.curve[-1].get("accuracy", float("nan")) if self.curve else float("nan")

    def summary(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "output": self.output, "queries": self.queries,
                "fidelity": self.fidelity, "accuracy": self.accuracy,
                "seconds": round(self.seconds, 3)}


class _Indexed(nn.Module):
    """``forward(idx) = net(inputs[idx])``: lets ``fit`` train on per-record soft targets."""

    inputs: Tensor

    def __init__(self, net: nn.Module, inputs: Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("inputs", inputs, persistent=False)

    def forward(self, idx: Tensor) -> Tensor:
        return self.net(self.inputs[idx])


def default_schedule(budget: int, *, rounds: int = 5) -> list[int]:
    """Query counts at which the substitute is retrained: budget / 2^k, smallest first."""
    if budget < 1:
        raise AttackError(f"the query budget must be >= 1, got {budget}")
    return sorted({max(1, budget >> k) for k in range(rounds)})


def mixup_candidates(x_pool: Tensor, n: int, *, generator: torch.Generator) -> Tensor:
    """``n`` random convex mixtures of two pool records (weights uniform in [0, 1])."""
    i = torch.randint(len(x_pool), (n,), generator=generator)
    j = torch.randint(len(x_pool), (n,), generator=generator)
    lam = torch.rand(n, generator=generator).to(x_pool.device, x_pool.dtype)
    lam = lam.view(-1, *([1] * (x_pool.dim() - 1)))
    return lam * x_pool[i.to(x_pool.device)] + (1 - lam) * x_pool[j.to(x_pool.device)]


class _NaturalProposal:
    """The pool in a random order, then mixup of pool records once it is used up."""

    def __init__(self, x_pool: Tensor, generator: torch.Generator) -> None:
        self.x_pool = x_pool
        self.g = generator
        self.order = torch.randperm(len(x_pool), generator=generator)
        self.pos = 0

    def draw(self, n: int) -> Tensor:
        take = self.order[self.pos : self.pos + n]
        self.pos += take.numel()
        out = self.x_pool[take.to(self.x_pool.device)]
        if take.numel() < n:
            out = torch.cat([out, mixup_candidates(self.x_pool, n - take.numel(),
                                                   generator=self.g)])
        return out


def _entropy(logits: Tensor) -> Tensor:
    logp = F.log_softmax(logits.double(), 1)
    return -(logp.exp() * logp).sum(1)


def _jacobian_step(sub: nn.Module, x: Tensor, labels: Tensor, lam: float,
                   bounds: tuple[float, float]) -> Tensor:
    """``x + lam * sign(d logit_label / dx)`` clipped to bounds (Papernot et al.)."""
    sub.eval()
    xg = x.detach().clone().requires_grad_(True)
    out = sub(xg).gather(1, labels.view(-1, 1)).sum()
    (grad,) = torch.autograd.grad(out, xg)
    return (x + lam * grad.sign()).clamp(*bounds).detach()


def extract(oracle: Oracle, *, card: ModelCard, strategy: Strategy = "natural",
            budget: int = 10_000, x_pool: Tensor | None = None, eval_x: Tensor | None = None,
            eval_victim_labels: Tensor | None = None, eval_y: Tensor | None = None,
            schedule: Sequence[int] | None = None, config: TrainConfig | None = None,
            seed_size: int = 100, lam: float = 0.1, tau: int = 3, candidates_factor: int = 10,
            generator: torch.Generator | None = None, progress: bool = False) -> ExtractionResult:
    """Steal a substitute of ``card``'s architecture from ``oracle`` within ``budget`` queries.

    Args:
        oracle: the victim; ``output="label"`` trains on labels, anything else on scores.
        card: the attacker's guess of the architecture, input shape, bounds and classes.
        strategy: ``random``, ``natural``, ``jacobian`` or ``active`` (see the module).
        budget: queries the attack may spend (it never spends more).
        x_pool: the attacker's unlabeled data (``natural``, ``active``; the seed set of
            ``jacobian`` is its first ``seed_size`` records).
        eval_x, eval_victim_labels, eval_y: held-out inputs, the victim's labels on them
            (for fidelity) and optionally the true labels (for accuracy).
        schedule: query counts at which to retrain and evaluate (default: budget/16,
            /8, /4, /2, budget).
        config: substitute training per checkpoint (default 30 epochs of Adam, lr 3e-3,
            batch 128, warm-started from the previous checkpoint).
        lam, tau: Jacobian augmentation step (fraction of the bounds' range) and the
            number of rounds after which its sign flips.
        candidates_factor: candidates drawn per query slot by ``active``.
        generator: randomness of the proposal and of subsets.
    """
    if strategy not in STRATEGIES:
        raise AttackError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy != "random" and (x_pool is None or len(x_pool) == 0):
        raise AttackError(f"the {strategy} strategy needs attacker data (x_pool)")
    if oracle.remaining is not None and oracle.remaining < budget:
        raise AttackError(f"the oracle allows only {oracle.remaining} more queries, "
                          f"budget is {budget}")
    t0 = time.perf_counter()
    g = generator or torch.Generator().manual_seed(0)
    cfg = config or TrainConfig(epochs=30, lr=3e-3, batch_size=128, val_fraction=0.0)
    cfg = dataclasses.replace(cfg, val_fraction=0.0)
    device = resolve_device(cfg.device)
    sched = sorted({min(int(s), budget) for s in (schedule or default_schedule(budget))})
    lo, hi = oracle.bounds
    shape = tuple(oracle.input_shape)
    soft = oracle.output != "label"
    sub = fresh_model(card, cfg.seed).to(device)
    pool = x_pool.to(device) if x_pool is not None else None
    proposal = _NaturalProposal(pool, g) if pool is not None else None
    xs: list[Tensor] = []
    answers: list[Tensor] = []
    spent_before = oracle.queries_total
    curve: list[dict[str, float]] = []

    def spent() -> int:
        return oracle.queries_total - spent_before

    def ask(x: Tensor) -> None:
        if x.shape[0] == 0:
            return
        out = oracle.query(x.to(device)).to(device)
        xs.append(x.to(device))
        answers.append(out.float() if soft else out.long())

    def train() -> None:
        x_all = torch.cat(xs)
        a_all = torch.cat(answers)
        hard = a_all.argmax(1) if soft else a_all
        wrapped = _Indexed(sub, x_all)
        if soft:
            def loss(model: nn.Module, idx: Tensor, y: Tensor) -> Tensor:
                return -(a_all[idx] * F.log_softmax(model(idx), 1)).sum(1).mean()
        else:
            def loss(model: nn.Module, idx: Tensor, y: Tensor) -> Tensor:
                return F.cross_entropy(model(idx), y)
        fit(wrapped, torch.arange(len(hard), device=device), hard, config=cfg,
            batch_loss=loss, progress=False)

    def record() -> None:
        row: dict[str, float] = {"queries": float(spent())}
        if eval_x is not None and eval_victim_labels is not None:
            pred = predict_logits(sub, eval_x).argmax(1)
            row["fidelity"] = float((pred == eval_victim_labels.to(pred.device)).double().mean())
            if eval_y is not None:
                row["accuracy"] = float((pred == eval_y.to(pred.device)).double().mean())
        curve.append(row)

    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"extraction ({strategy})", total=len(sched))
        jac_round = 0
        for target in sched:
            need = target - spent()
            if strategy == "random":
                ask(torch.rand((need, *shape), generator=g).to(device) * (hi - lo) + lo)
            elif strategy == "natural":
                assert proposal is not None
                ask(proposal.draw(need))
            elif strategy == "active":
                assert proposal is not None
                if not xs:
                    ask(proposal.draw(need))
                else:
                    cand = proposal.draw(need * candidates_factor)
                    ent = _entropy(predict_logits(sub, cand))
                    ask(cand[ent.argsort(descending=True, stable=True)[:need]])
            else:  # jacobian
                assert pool is not None
                if not xs:
                    ask(pool[: min(seed_size, need)])
                while spent() < target:
                    x_all = torch.cat(xs)
                    labels = torch.cat(answers)
                    labels = labels.argmax(1) if soft else labels
                    train()  # the substitute whose Jacobian guides this round
                    step = lam * (hi - lo) * (-1.0 if (jac_round // tau) % 2 else 1.0)
                    new = _jacobian_step(sub, x_all, labels, step, (lo, hi))
                    room = target - spent()
                    if len(new) > room:
                        new = new[torch.randperm(len(new), generator=g)[:room].to(device)]
                    ask(new)
                    jac_round += 1
            train()
            record()
            bar.update(task, advance=1)
    sub.eval()
    return ExtractionResult(substitute=sub, strategy=strategy,
                            output="scores" if soft else "label", queries=spent(), curve=curve,
                            seconds=time.perf_counter() - t0)


def natural_image_patches(n: int, *, shape: Sequence[int], bounds: tuple[float, float] = (0.0, 1.0),
                          generator: torch.Generator | None = None) -> Tensor:
    """``n`` out-of-distribution natural images: random grey patches of scikit-learn's two
    sample photographs (``load_sample_images``), resized to ``shape`` (``C x H x W``).

    Needs Pillow (scikit-learn reads the photographs with it).
    """
    from sklearn.datasets import load_sample_images

    g = generator or torch.Generator().manual_seed(0)
    c, h, w = (int(s) for s in shape)
    photos = [torch.tensor(im, dtype=torch.float32).mean(2) / 255.0
              for im in load_sample_images().images]
    out = torch.empty(n, c, h, w)
    which = torch.randint(len(photos), (n,), generator=g)
    sizes = torch.randint(h * 2, h * 8 + 1, (n,), generator=g)
    for k, (p_idx, size) in enumerate(zip(which.tolist(), sizes.tolist(), strict=True)):
        photo = photos[p_idx]
        top = int(torch.randint(photo.shape[0] - size + 1, (1,), generator=g))
        left = int(torch.randint(photo.shape[1] - int(size * w / h) + 1, (1,), generator=g))
        crop = photo[top : top + size, left : left + int(size * w / h)][None, None]
        out[k] = F.interpolate(crop, size=(h, w), mode="area")[0].expand(c, h, w)
    lo, hi = bounds
    return out * (hi - lo) + lo


__all__ = [
    "STRATEGIES",
    "ExtractionResult",
    "default_schedule",
    "extract",
    "mixup_candidates",
    "natural_image_patches",
]


# -- models like the card's ----------------------------------------------------------------------
def fresh_model(card: ModelCard, seed: int) -> nn.Module:
    """An untrained network of ``card``'s architecture, initial weights drawn under ``seed``.

    The global RNG is left untouched (as in :func:`dlsec.training.train_model`).
    """
    from dlsec.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(card)


def train_config_from_card(card: ModelCard, **overrides: Any) -> TrainConfig:
    """The target's own training recipe as recorded in its card (the attacker's best guess)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    known = {k: v for k, v in (card.training or {}).items() if k in names}
    known.update(overrides)
    return TrainConfig(**known)


# -- surrogates for transfer attacks --------------------------------------------------------------
@dataclass
class Surrogate:
    """A model the attacker trained to stand in for the target.

    ``queries``: oracle queries spent on training it; ``output``: what it learned from
    (``"label"`` or ``"scores"`` of the oracle, or ``"ground-truth"`` labels for gray-box);
    ``training_size``: records it was trained on; ``seconds``: wall time of training.
    """

    model: nn.Module
    strategy: str
    queries: int
    seconds: float
    output: str = "label"
    training_size: int = 0


class _LabelsOnly(OracleWrapper):
    """A label-only view of an oracle (queries and budget are the oracle's own)."""

    def __init__(self, inner: Oracle) -> None:
        super().__init__(inner)
        self.output = "label"

    def query(self, x: Tensor, *, ids: Tensor | None = None) -> Tensor:
        return self.inner.query_labels(x, ids=ids)


def _check_inputs(x: Tensor | None, oracle: Oracle, what: str) -> Tensor:
    if x is None or x.shape[0] == 0:
        raise AttackError(f"{what} needs attacker data (x_attacker)")
    if tuple(x.shape[1:]) != tuple(oracle.input_shape):
        raise AttackError(f"attacker data of shape {tuple(x.shape[1:])} does not match the "
                          f"target's input {tuple(oracle.input_shape)}")
    return x


def train_surrogate(strategy: str, oracle: Oracle, *, card: ModelCard,
                    x_attacker: Tensor | None = None, y_attacker: Tensor | None = None,
                    budget: int = 6400, config: TrainConfig | None = None,
                    generator: torch.Generator | None = None, progress: bool = False,
                    architecture: str | None = None, seed_size: int = 150, lam: float = 0.1,
                    tau: int = 3, x_pool: Tensor | None = None) -> Surrogate:
    """Train a surrogate of the target behind ``oracle`` (see the module for the strategies).

    Args:
        strategy: ``"jacobian"``, ``"knockoff"`` or ``"graybox"``.
        oracle: the target; the black-box strategies spend at most ``budget`` of its queries.
        card: the attacker's guess of the target (architecture, input shape, classes).
        x_attacker: attacker-held in-distribution records (``jacobian``: the seed set is
            ``seed_size`` of them drawn at random; ``graybox``: the training inputs).
        y_attacker: their true labels (``graybox`` only).
        budget: oracle labels for ``jacobian`` / ``knockoff`` (default 6,400).
        config: surrogate training (default: 30 epochs of Adam, lr 3e-3; ``jacobian`` and
            ``knockoff`` retrain warm at each round with batch 128, ``graybox`` batch 64;
            the seed is drawn from ``generator``).
        generator: all randomness (seed subset, augmentation subsets, image patches,
            initial weights, shuffling); default seed 0.
        architecture: the surrogate's architecture if not the card's (e.g. ``"smallcnn"``).
        seed_size, lam, tau: Jacobian augmentation (the paper's 150, 0.1, 3).
        x_pool: ``knockoff``'s query images (default: ``budget`` natural image patches).
    """
    if strategy not in SURROGATE_STRATEGIES:
        raise AttackError(f"unknown surrogate strategy {strategy!r} (choose from "
                          f"{', '.join(SURROGATE_STRATEGIES)})")
    t0 = time.perf_counter()
    g = generator or torch.Generator().manual_seed(0)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g, device=g.device))
    if architecture is not None:
        card = card.with_architecture(architecture)  # the caller named it: consent
    batch = 64 if strategy == "graybox" else 128
    cfg = config or TrainConfig(epochs=30, lr=3e-3, batch_size=batch, val_fraction=0.0, seed=seed)
    if strategy == "graybox":
        x = _check_inputs(x_attacker, oracle, "the graybox strategy")
        if y_attacker is None or y_attacker.shape[0] != x.shape[0]:
            raise AttackError("the graybox strategy needs one label (y_attacker) per record")
        model = fresh_model(card, cfg.seed)
        fit(model, x, y_attacker, config=cfg, progress=progress, description="surrogate")
        return Surrogate(model.eval(), strategy, 0, time.perf_counter() - t0,
                         output="ground-truth", training_size=int(x.shape[0]))
    if budget < 1:
        raise AttackError(f"the query budget must be >= 1, got {budget}")
    if oracle.remaining is not None and oracle.remaining < budget:
        raise AttackError(f"the oracle allows only {oracle.remaining} more queries, "
                          f"the surrogate's budget is {budget}")
    if strategy == "jacobian":
        x = _check_inputs(x_attacker, oracle, "the jacobian strategy")
        if seed_size < 1:
            raise AttackError(f"seed_size must be >= 1, got {seed_size}")
        order = torch.randperm(x.shape[0], generator=g)[:seed_size].to(x.device)
        res = extract(_LabelsOnly(oracle), card=card, strategy="jacobian", budget=budget,
                      x_pool=x[order], schedule=[budget], config=cfg, seed_size=seed_size,
                      lam=lam, tau=tau, generator=g, progress=progress)
    else:
        if x_pool is None:
            if len(oracle.input_shape) != 3:
                raise AttackError("knockoff's natural images need C x H x W inputs; pass x_pool")
            x_pool = natural_image_patches(budget, shape=oracle.input_shape,
                                           bounds=oracle.bounds, generator=g)
        else:
            x_pool = _check_inputs(x_pool, oracle, "the knockoff strategy")
        res = extract(oracle, card=card, strategy="natural", budget=budget, x_pool=x_pool,
                      schedule=[budget], config=cfg, generator=g, progress=progress)
    return Surrogate(res.substitute.eval(), strategy, res.queries, time.perf_counter() - t0,
                     output=res.output, training_size=res.queries)
