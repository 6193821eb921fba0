"""Client-level differential privacy in a federation (DP-FedAvg, McMahan et al. 2018),
through Flower's own fixed-clipping DP wrappers, with the epsilon reported.

Each round, every client's update (its weights minus the global weights) is clipped to
L2 norm ``C``, the strategy aggregates, and Gaussian noise of std ``z * C / m`` (``m`` the
clients sampled) is added to each coordinate of the aggregate: Flower's
:class:`~flwr.serverapp.strategy.DifferentialPrivacyServerSideFixedClipping` (the server
clips) or :class:`~flwr.serverapp.strategy.DifferentialPrivacyClientSideFixedClipping`
with :func:`~flwr.clientapp.mod.fixedclipping_mod` on the clients (each client clips its
own update; the server only adds the noise). :func:`dp_strategy` wraps any strategy;
:func:`clipping_mod` is the client side.

Flower adds the noise but (without Google's ``dp_accounting``, and only for an unmodified
FedAvg) reports no epsilon: :func:`client_epsilon` computes it with Opacus's accountants
for the Gaussian mechanism at sample rate ``q`` (sampled / all clients; 1 when every
client trains every round), noise multiplier ``z`` and one step per round. The guarantee
is client-level: it covers everything one client contributes, all rounds together.

Example:
    >>> client_epsilon(noise_multiplier=1.0, sample_rate=1.0, rounds=20,
    ...                delta=default_delta(10))                     # doctest: +SKIP
    18.16

Notes:
    The noise std divides by the clients sampled: with 10 clients, z = 1 already costs a
    tenth of the clipping norm in noise per coordinate per round, and the epsilon stays
    large (about 18 after 20 rounds at delta = 1/10^1.1). DP-FedAvg is made for
    thousands of clients per round.

    The accounting assumes the aggregate is a mean of the clipped updates (FedAvg,
    FedProx, norm clipping): one client then moves it by at most ``C * w_k / W`` (its
    weight ``w_k`` of the total ``W``), so the effective noise multiplier is
    ``z * W / (m * max_k w_k)`` (:func:`effective_noise`; ``z`` itself for equal
    partitions). A median, Krum or FLTrust aggregate has another sensitivity; the
    epsilon is then reported under the mean assumption and flagged
    (:data:`MEAN_AGGREGATES`).

    Flower's clipping divides by the update's norm: a reply equal to the global weights
    (a zero update, e.g. a free rider) raises ZeroDivisionError in Flower 1.42's
    ``clip_inputs_inplace``. Every client here trains or perturbs, so none sends one.

    Flower draws the noise from numpy's global generator; :func:`dp_strategy` gives each
    wrapper its own seeded stream (swapped in around Flower's own noise call) so that
    the same seed gives the same global weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.serverapp import strategy as flower
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from dlsec.errors import DlsecError

SIDES = ("server", "client")
ACCOUNTANTS = ("rdp", "prv")
MEAN_AGGREGATES = ("fedavg", "fedprox", "clipping", "fedavg-clip")
"""The strategies whose aggregate is a (weighted) mean: the epsilon holds as computed."""


class ClientDPError(DlsecError):
    """Client-level DP settings that cannot be used (noise, clipping norm, delta, side)."""


@dataclass(frozen=True)
class ClientDP:
    """The DP settings of a federation: noise multiplier ``z``, clipping norm ``C`` and
    who clips (``server``: the server clips every reply, malicious ones too; ``client``:
    each client clips its own update with Flower's mod, which a malicious client skips)."""

    noise_multiplier: float
    clipping_norm: float = 1.0
    side: str = "server"

    def __post_init__(self) -> None:
        check_client_dp(self.noise_multiplier, self.clipping_norm, self.side)


def check_client_dp(noise_multiplier: float | None, clipping_norm: float, side: str,
                    delta: float | None = None) -> None:
    """One-line errors for DP settings: ``z`` and ``C`` positive and finite, ``side`` in
    :data:`SIDES`, ``delta`` in (0, 1)."""
    if noise_multiplier is not None and not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
        raise ClientDPError(f"--dp-noise (the noise multiplier z) must be positive, got {noise_multiplier:g}")
    if not (clipping_norm > 0 and math.isfinite(clipping_norm)):
        raise ClientDPError(f"--dp-clip (the clipping norm C) must be positive, got {clipping_norm:g}")
    if side not in SIDES:
        raise ClientDPError(f"--dp-side must be one of {', '.join(SIDES)}, got {side!r}")
    if delta is not None and not 0 < delta < 1:
        raise ClientDPError(f"--dp-delta must be in (0, 1), got {delta:g}")


def default_delta(clients: int) -> float:
    """``1 / clients^1.1`` (McMahan et al. 2018: delta below one over the number of
    users). Weak for a handful of clients: 0.079 for 10."""
    return 1.0 / clients ** 1.1


def effective_noise(noise_multiplier: float, weights: Sequence[float]) -> float:
    """The noise multiplier relative to one client's largest move of a weighted mean:
    the noise std ``z C / m`` over the sensitivity ``C max_k w_k / W`` (``m`` clients of
    weights ``w_k`` summing to ``W``). Equal weights: ``z``."""
    if not weights or min(weights) <= 0:
        raise ClientDPError("effective_noise needs positive client weights")
    return noise_multiplier * sum(weights) / (len(weights) * max(weights))


def client_epsilon(*, noise_multiplier: float, sample_rate: float, rounds: int, delta: float,
                   accountant: str = "rdp") -> float:
    """The client-level epsilon at ``delta`` after ``rounds`` releases of the Gaussian
    mechanism with ``noise_multiplier`` (std over sensitivity), each client sampled with
    probability ``sample_rate``: Opacus's RDP accountant (Mironov 2017, its default
    orders 1.1 to 63) or its PRV accountant (Gopi et al. 2021, tighter)."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    check_client_dp(noise_multiplier, 1.0, "server", delta)
    if not 0 < sample_rate <= 1:
        raise ClientDPError(f"the sample rate must be in (0, 1], got {sample_rate:g}")
    if rounds < 1:
        raise ClientDPError(f"the rounds must be at least 1, got {rounds}")
    if accountant not in ACCOUNTANTS:
        raise ClientDPError(f"unknown accountant {accountant!r} (choose from {', '.join(ACCOUNTANTS)})")
    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = [(noise_multiplier, sample_rate, rounds)]
    with np.errstate(divide="ignore"):  # PRV at q = 1 takes log(0) on a masked branch
        return float(acc.get_epsilon(delta))


# -- the server side: Flower's wrappers, seeded ---------------------------------------------------
class _SeededNoise:
    """Flower's noise (numpy's global generator) from this wrapper's own seeded stream;
    counts the noisy releases and exposes the wrapped strategy's failed replies."""

    noise_state: dict[str, Any]
    releases: int = 0
    strategy: flower.Strategy

    def _add_noise_to_aggregated_arrays(self, aggregated_arrays: ArrayRecord) -> ArrayRecord:
        outside = np.random.get_state()
        np.random.set_state(cast(Any, self.noise_state))
        try:
            noisy = super()._add_noise_to_aggregated_arrays(aggregated_arrays)  # type: ignore[misc]
        finally:
            self.noise_state = cast(Any, np.random.get_state(legacy=False))
            np.random.set_state(outside)
        self.releases += 1
        return cast(ArrayRecord, noisy)

    @property
    def failures(self) -> int:
        return int(getattr(self.strategy, "failures", 0))


class ServerSideDP(_SeededNoise, flower.DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed-clipping DP wrapper with a seeded noise stream."""


class ClientSideDP(_SeededNoise, flower.DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed-clipping DP wrapper (the clients clip with
    :func:`clipping_mod`) with a seeded noise stream."""


def dp_strategy(strategy: flower.Strategy, dp: ClientDP, *, sampled_clients: int,
                seed: int) -> ServerSideDP | ClientSideDP:
    """``strategy`` wrapped in Flower's fixed-clipping DP wrapper of ``dp.side``: the
    updates clipped to ``dp.clipping_norm``, noise of std ``z C / sampled_clients`` added
    to the aggregate, drawn from a stream seeded by ``seed``."""
    cls = ServerSideDP if dp.side == "server" else ClientSideDP
    wrapped = cls(strategy, dp.noise_multiplier, dp.clipping_norm, sampled_clients)
    wrapped.noise_state = cast(Any, np.random.RandomState(seed % 2**32).get_state(legacy=False))
    return wrapped


# -- the client side: Flower's mod, where asked ---------------------------------------------------
def clipping_mod(clips: Callable[[Message, Context], bool] | None = None) -> Mod:
    """Flower's :func:`fixedclipping_mod` on the training messages whose config carries a
    clipping norm (those of :class:`ClientSideDP`; the others pass through, so DP and
    non-DP federations share one ClientApp), and only on the clients for which
    ``clips(msg, context)`` is true (None: all): a malicious client runs its own code, not
    the mod, so its update reaches the server unclipped."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        configs = list(msg.content.config_records.values())
        asked = len(configs) == 1 and KEY_CLIPPING_NORM in configs[0]
        if not asked or (clips is not None and not clips(msg, context)):
            return call_next(msg, context)
        return fixedclipping_mod(msg, context, call_next)

    return mod
