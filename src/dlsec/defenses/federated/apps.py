"""A federation on Flower 1.42: the ClientApp, the ServerApp, the strategies, the simulation.

Flower drives the rounds: the ServerApp hands the global weights to
``strategy.start`` (one of Flower's own strategies in :mod:`flwr.serverapp.strategy`, or
norm clipping and FLTrust, FedAvg subclasses in :mod:`.strategies`), which sends them to
every client, aggregates the replies and calls the server-side evaluation after each
round. The ClientApp's local training is one call of
:func:`dlsec.training.fit` on the client's partition (FedProx adds its proximal term
through ``fit``'s ``batch_loss`` seam); a malicious client (:mod:`.clients`) sends its
attack's weights instead (ALIE and IPM colluders recompute each other's honest updates;
the ``scale`` attackers train on a backdoored copy, whose success the server measures
each round). :func:`simulate` runs the two apps on Flower's simulation
engine (Ray); the same apps run in Flower's deployment engine.

Notes:
    Flower's strategies sample nodes with Python's global ``random`` and aggregate the
    replies in arrival order. Every strategy here sorts the replies by partition id
    first, so the same seed gives bit-identical global weights on the same machine.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp import strategy as flower
from torch import Tensor, nn

from dlsec.defenses.federated.client_dp import ClientDP, clipping_mod, dp_strategy
from dlsec.defenses.federated.clients import (
    COLLUDING,
    add_trigger,
    backdoor_data,
    colluding_update,
    flip_labels,
    poison_update,
)
from dlsec.defenses.federated.strategies import FLTrust, NormClipping, RootTrainer
from dlsec.errors import DlsecError
from dlsec.models import ModelCard, build_model
from dlsec.training import SEED_MAX, BatchLoss, TrainConfig, cross_entropy_loss, evaluate, fit

STRATEGIES = ("fedavg", "fedprox", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan",
              "clipping", "fedavg-clip", "fltrust")


class FederationError(DlsecError):
    """A federation that cannot run as asked (strategy, tolerance, settings)."""


# -- strategies ---------------------------------------------------------------------------------
class _OrderedReplies:
    """Sort the training replies by partition id before the Flower strategy aggregates
    them (arrival order would change the last bits of a sum); count failed replies."""

    failures: int = 0

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Any:
        replies = list(replies)
        self.failures += sum(1 for m in replies if m.has_error())
        ordered = sorted(replies, key=lambda m: -1 if m.has_error()
                         else int(cast(Any, m.content["metrics"]["partition-id"])))
        return super().aggregate_train(server_round, ordered)  # type: ignore[misc]


def _ordered(cls: type) -> type:
    return type(cls.__name__, (_OrderedReplies, cls), {"__doc__": cls.__doc__})


_FLOWER = {"fedavg": _ordered(flower.FedAvg), "fedprox": _ordered(flower.FedProx),
           "fedmedian": _ordered(flower.FedMedian), "fedtrimmedavg": _ordered(flower.FedTrimmedAvg),
           "krum": _ordered(flower.Krum), "multikrum": _ordered(flower.MultiKrum),
           "bulyan": _ordered(flower.Bulyan), "clipping": _ordered(NormClipping),
           "fedavg-clip": _ordered(NormClipping), "fltrust": _ordered(FLTrust)}


def tolerance_error(strategy: str, clients: int, malicious: int) -> str | None:
    """Why ``strategy`` cannot tolerate ``malicious`` of ``clients`` clients (None if it can).

    Krum and MultiKrum need n > 2f + 2 (Blanchard et al. 2017), Bulyan n >= 4f + 3
    (El Mhamdi et al. 2018), the median and the trimmed mean f < n / 2.
    """
    n, f = clients, malicious
    rules: dict[str, tuple[bool, str, int]] = {
        "krum": (n > 2 * f + 2, "n > 2f + 2", max(0, math.ceil((n - 2) / 2) - 1)),
        "multikrum": (n > 2 * f + 2, "n > 2f + 2", max(0, math.ceil((n - 2) / 2) - 1)),
        "bulyan": (n >= 4 * f + 3, "n >= 4f + 3", max(0, (n - 3) // 4)),
        "fedmedian": (2 * f < n, "f < n/2", (n - 1) // 2),
        "fedtrimmedavg": (2 * f < n, "f < n/2", (n - 1) // 2),
    }
    if strategy not in rules or rules[strategy][0]:
        return None
    _, rule, most = rules[strategy]
    if strategy == "bulyan" and n < 3:
        return f"bulyan needs at least 3 clients (n >= 4f + 3), got {n}"
    return (f"{strategy} tolerates f malicious of n clients only when {rule}: {f} of {n} is "
            f"too many (at most {most} malicious for {n} clients)")


def make_strategy(name: str, *, clients: int, malicious: int, proximal_mu: float = 0.01,
                  trim_beta: float | None = None, clip_norm: float | None = None,
                  root_train: RootTrainer | None = None, dp: ClientDP | None = None,
                  dp_seed: int = 0) -> flower.Strategy:
    """Flower's strategy ``name`` for a federation where every one of ``clients`` clients
    trains every round and the server assumes up to ``malicious`` of them are attackers
    (Krum, MultiKrum and Bulyan take that f; the trimmed mean cuts at least f/n each
    side, 0.2 by default). Federated (client-side) evaluation is off: the server
    evaluates the global model itself. ``clipping`` (alias ``fedavg-clip``) clips each
    update to ``clip_norm`` (None: the round's median norm); ``fltrust`` needs
    ``root_train`` (:func:`root_trainer`). ``dp``: the strategy wrapped in Flower's
    fixed-clipping DP wrapper (:func:`.client_dp.dp_strategy`, noise seeded by
    ``dp_seed``)."""
    if name not in _FLOWER:
        raise FederationError(f"unknown strategy {name!r} (choose from {', '.join(STRATEGIES)})")
    reason = tolerance_error(name, clients, malicious)
    if reason:
        raise FederationError(reason)
    common: dict[str, Any] = {"fraction_train": 1.0, "fraction_evaluate": 0.0,
                              "min_train_nodes": clients, "min_available_nodes": clients}
    if name == "fedprox":
        common["proximal_mu"] = proximal_mu
    elif name == "fedtrimmedavg":
        beta = max(0.2, malicious / clients) if trim_beta is None else trim_beta
        if not 0.0 <= beta < 0.5:
            raise FederationError(f"trimmed mean: beta must be in [0, 0.5), got {beta:g}")
        common["beta"] = beta
    elif name in ("krum", "bulyan"):
        common["num_malicious_nodes"] = malicious
    elif name == "multikrum":
        common.update(num_malicious_nodes=malicious, num_nodes_to_select=clients - malicious)
    elif name in ("clipping", "fedavg-clip"):
        if clip_norm is not None and not clip_norm > 0:
            raise FederationError(f"clipping: --clip-norm must be positive, got {clip_norm:g}")
        common["clip_norm"] = clip_norm
    elif name == "fltrust":
        if root_train is None:
            raise FederationError("fltrust needs a root dataset on the server (--root-size > 0)")
        common["root_train"] = root_train
    with _quiet_flower():
        strategy: flower.Strategy = _FLOWER[name](**common)
    if dp is not None:
        strategy = dp_strategy(strategy, dp, sampled_clients=clients, seed=dp_seed)
    return strategy


# -- the plan both apps read ------------------------------------------------------------------
@dataclass(frozen=True)
class Threat:
    """The malicious clients of one federation: their ids, their attack (None: all
    honest) and its scale (see :mod:`.clients`)."""

    malicious: tuple[int, ...] = ()
    attack: str | None = None
    scale: float = 1.0

    @property
    def backdoor(self) -> bool:
        """Whether the malicious clients plant a backdoor (the ``scale`` attack)."""
        return self.attack == "scale" and bool(self.malicious)


@dataclass
class FederationPlan:
    """Everything the ClientApp and the ServerApp need (sent to Flower's workers).

    ``parts[k]`` are client k's training-set indices; ``local`` the settings of each
    client's :func:`fit` call (its seed is the base of every client's seed:
    ``local.seed + 7919 * round + client``); ``threats[i]`` who attacks, and how, in the
    i-th federation of a :func:`simulate` call (the server names it in each round's
    config, so several federations share one start of the simulation engine).
    """

    card: ModelCard
    x_train: Tensor
    y_train: Tensor
    parts: list[Tensor]
    local: TrainConfig
    threats: list[Threat] = field(default_factory=list)
    init_seed: int = 0
    backdoor_target: int = 0
    trigger: int = 2

    @property
    def trigger_value(self) -> float:
        return float(self.card.bounds[1])

    def client_seed(self, server_round: int, client: int) -> int:
        return (self.local.seed + 7919 * server_round + client) % SEED_MAX

    def new_model(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            return build_model(self.card, factory=self.card.architecture)


def _proximal_loss(global_params: list[Tensor], mu: float) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """FedProx's client loss (Li et al. 2020): cross-entropy + mu/2 ||w - w_global||^2."""

    def loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        prox = sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params, strict=True))
        return cross_entropy_loss(model, x, y) + 0.5 * mu * prox

    return loss


def local_train(plan: FederationPlan, received: dict[str, Tensor], x: Tensor, y: Tensor, *,
                seed: int, mu: float = 0.0) -> dict[str, Tensor]:
    """The global weights ``received`` trained by :func:`fit` on ``(x, y)`` with the
    plan's local settings and ``seed`` (FedProx's term when ``mu`` > 0)."""
    model = plan.new_model()
    model.load_state_dict(received)
    batch_loss: BatchLoss = cross_entropy_loss
    if mu > 0:
        batch_loss = _proximal_loss([p.detach().clone() for p in model.parameters()], mu)
    local = TrainConfig(**{**plan.local.to_dict(), "seed": seed})
    fit(model, x, y, config=local, batch_loss=batch_loss, progress=False)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def root_trainer(plan: FederationPlan, x_root: Tensor, y_root: Tensor) -> RootTrainer:
    """FLTrust's server training: the plan's local settings on the root data, seeded by
    the round."""

    def train(global_w: dict[str, Tensor], server_round: int) -> dict[str, Tensor]:
        return local_train(plan, global_w, x_root, y_root,
                           seed=plan.client_seed(server_round, len(plan.parts)))

    return train


def client_update(plan: FederationPlan, client: int, content: RecordDict) -> RecordDict:
    """One client's round: load the global weights, train with :func:`fit` on the
    client's partition (a malicious client attacks), reply with the weights it sends.

    ALIE and IPM clients collude: each trains every colluder's partition honestly (the
    same seeds as the colluder's own, a simulation shortcut for exchanging updates) and
    sends the attack's statistic of those updates."""
    config = content["config"]
    server_round = int(cast(Any, config["server-round"]))
    received = {k: v.cpu() for k, v in content["arrays"].to_torch_state_dict().items()}  # type: ignore[union-attr]
    seed = plan.client_seed(server_round, client)
    threat = plan.threats[int(cast(Any, config.get("federation", 0)))]
    attacking = client in threat.malicious and threat.attack is not None
    idx = plan.parts[client]
    mu = float(config.get("proximal-mu", 0.0))  # type: ignore[arg-type]
    trained = received
    if attacking and threat.attack in COLLUDING:
        assert threat.attack is not None
        honest = [local_train(plan, received, plan.x_train[plan.parts[c]], plan.y_train[plan.parts[c]],
                              seed=plan.client_seed(server_round, c), mu=mu) for c in threat.malicious]
        sent = colluding_update(threat.attack, received, honest, scale=threat.scale)
        metrics = MetricRecord({"num-examples": int(idx.numel()), "partition-id": client,
                                "malicious": 1})
        return RecordDict({"arrays": ArrayRecord(sent), "metrics": metrics})
    if not (attacking and threat.attack == "gaussian"):  # the noise client does not train
        x, y = plan.x_train[idx], plan.y_train[idx]
        if attacking and threat.attack == "label-flip":
            y = flip_labels(y, plan.card.num_classes)
        if attacking and threat.backdoor:
            x, y = backdoor_data(x, y, target=plan.backdoor_target, size=plan.trigger,
                                 value=plan.trigger_value)
        trained = local_train(plan, received, x, y, seed=seed, mu=mu)
    sent = trained
    if attacking:
        assert threat.attack is not None
        sent = poison_update(threat.attack, received, trained, scale=threat.scale,
                             generator=torch.Generator().manual_seed(seed))
    metrics = MetricRecord({"num-examples": int(idx.numel()), "partition-id": client,
                            "malicious": int(attacking)})
    return RecordDict({"arrays": ArrayRecord(sent), "metrics": metrics})


def make_client_app(plan: FederationPlan, *, threads: int = 1) -> ClientApp:
    """The ClientApp: its partition id (Flower's ``node_config["partition-id"]``) picks
    its data in ``plan``. Under client-side DP the honest clients clip their update with
    Flower's ``fixedclipping_mod`` (:func:`.client_dp.clipping_mod`); malicious ones do not."""

    def honest(msg: Message, context: Context) -> bool:
        threat = plan.threats[int(cast(Any, msg.content["config"].get("federation", 0)))]
        return not (threat.attack is not None
                    and int(cast(Any, context.node_config["partition-id"])) in threat.malicious)

    app = ClientApp(mods=[clipping_mod(honest)])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(threads)
        client = int(cast(Any, context.node_config["partition-id"]))
        return Message(content=client_update(plan, client, msg.content), reply_to=msg)

    return app


# -- server ---------------------------------------------------------------------------------------
@dataclass
class FederationRun:
    """What the ServerApp leaves behind: the global model's test accuracy and loss after
    each round (round 0: the initial model), the final weights, failed client replies."""

    accuracy: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    backdoor_asr: list[float] = field(default_factory=list)
    weights: dict[str, Tensor] = field(default_factory=dict)
    failures: int = 0
    seconds: float = 0.0


def make_server_app(plan: FederationPlan, strategies: list[flower.Strategy], *, rounds: int,
                    x_test: Tensor, y_test: Tensor, runs: list[FederationRun],
                    on_round: Callable[[int, int, float], None] | None = None) -> ServerApp:
    """The ServerApp: for each strategy in turn (federation ``i`` under
    ``plan.threats[i]``), initial weights from ``plan`` and ``rounds`` rounds of
    ``strategy.start``; the global model is evaluated on ``(x_test, y_test)`` after each
    round (into ``runs[i]``; ``on_round(i, round, accuracy)``), and so is the backdoor's
    success rate: the share of test images not of ``plan.backdoor_target``, with the
    trigger, that the model classifies as the target."""
    app = ServerApp()
    keep = y_test != plan.backdoor_target
    x_trig = add_trigger(x_test[keep], size=plan.trigger, value=plan.trigger_value)
    y_trig = torch.full_like(y_test[keep], plan.backdoor_target)

    def evaluate_on_test(i: int) -> Callable[[int, ArrayRecord], MetricRecord]:
        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model = plan.new_model()
            model.load_state_dict(arrays.to_torch_state_dict())
            m = evaluate(model, x_test, y_test)
            runs[i].accuracy.append(m["accuracy"])
            runs[i].loss.append(m["loss"])
            asr = evaluate(model, x_trig, y_trig)["accuracy"] if len(y_trig) else 0.0
            runs[i].backdoor_asr.append(asr)
            if on_round is not None:
                on_round(i, server_round, m["accuracy"])
            return MetricRecord({"accuracy": m["accuracy"], "loss": m["loss"], "backdoor_asr": asr})

        return evaluate_fn

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        for i, strategy in enumerate(strategies):
            t0 = time.perf_counter()
            initial = {k: v.detach().cpu() for k, v in plan.new_model().state_dict().items()}
            result = strategy.start(grid=grid, initial_arrays=ArrayRecord(initial),
                                    num_rounds=rounds, train_config=ConfigRecord({"federation": i}),
                                    evaluate_fn=evaluate_on_test(i))
            runs[i].weights = {k: v.detach().cpu()
                               for k, v in result.arrays.to_torch_state_dict().items()}
            runs[i].failures = getattr(strategy, "failures", 0)
            runs[i].seconds = time.perf_counter() - t0

    return app


class _quiet_flower:
    """Flower's INFO lines (and run_simulation's deprecation warning) stay out of the
    console while a federation runs; errors still show."""

    def __enter__(self) -> None:
        self._logger = logging.getLogger("flwr")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self._logger.setLevel(self._level)


def simulate(plan: FederationPlan, strategies: list[flower.Strategy], *, rounds: int,
             x_test: Tensor, y_test: Tensor, workers: int = 1, gpus_per_client: float = 0.0,
             on_round: Callable[[int, int, float], None] | None = None) -> list[FederationRun]:
    """Run one federation per strategy (federation ``i`` under ``plan.threats[i]``), one
    after another, in one start of Flower's simulation engine (``run_simulation``, Ray
    backend: its start-up dominates a small federation's time) with ``workers`` clients
    training at a time; return what the server saw in each."""
    from flwr.simulation import run_simulation

    if len(plan.threats) != len(strategies):
        raise ValueError("one threat per strategy")
    runs = [FederationRun() for _ in strategies]
    server = make_server_app(plan, strategies, rounds=rounds, x_test=x_test, y_test=y_test,
                             runs=runs, on_round=on_round)
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": gpus_per_client},
               "init_args": {"num_cpus": workers, "num_gpus": 1 if gpus_per_client else 0,
                             "include_dashboard": False, "logging_level": logging.ERROR,
                             "log_to_driver": False}}
    with _quiet_flower():
        run_simulation(server_app=server, client_app=make_client_app(plan),
                       num_supernodes=len(plan.parts), backend_config=backend)  # type: ignore[arg-type]
    for i, run in enumerate(runs):
        if len(run.accuracy) != rounds + 1:
            raise RuntimeError(f"federation {i} stopped after {max(0, len(run.accuracy) - 1)} "
                               f"of {rounds} rounds")
    return runs
