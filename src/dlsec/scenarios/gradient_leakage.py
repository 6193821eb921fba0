"""Gradient leakage: how much of a federated client's batch its update gives away.

Each :class:`LeakageSetting` (batch size, local steps, client DP) is run on ``trials``
batches drawn from the training split (a client's data): the client starts from the given
model (the global weights it received), takes ``local_steps`` SGD steps of ``client_lr`` on
its batch and sends ``after - before`` (FedAvg's update; one step is ``-client_lr`` times
its gradient), optionally through Flower's client-side DP mods, and a gradient-leakage
attack reconstructs the batch from what the server receives
(:mod:`dlsec.attacks.privacy.gradient_leakage`; several local steps are unrolled by
:func:`~dlsec.attacks.privacy.gradient_leakage.inverting_updates`). Reconstructions are
matched to the originals (best total PSNR) and scored: PSNR, SSIM, and the share an
*independent* model (trained separately on the dataset, stream ``leakage/evaluator``)
classifies as the original's label, with its Wilson 95% interval.

Client DP (``epsilon`` of a setting), with Flower's own mods applied to a real reply
``Message`` holding the client's weights:

* a finite ``epsilon``: ``flwr.clientapp.mod.LocalDpMod(clip_norm, sensitivity, epsilon,
  delta)``, which clips the update to L2 norm ``clip_norm`` and adds Gaussian noise of
  standard deviation ``sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon`` to *every*
  weight (:func:`flower_local_dp`);
* ``epsilon = inf``: Flower's ``fixedclipping_mod`` (clip only, :func:`flower_fixed_clipping`).
  This is all a server sees under Flower's *central* DP (client-side fixed clipping; the
  server adds the noise to the aggregate, after it has read each update): central DP does
  not stop a curious server from inverting an update, and clipping scales it without
  changing its direction, which is all the cosine objective reads.

flwr is an optional extra (``pip install dlsec[federated]``); only the DP settings need it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from dlsec.attacks.privacy.gradient_leakage import (
    ATTACKS,
    attack_update,
    local_update,
    match_reconstructions,
    psnr,
    ssim,
)
from dlsec.data import Dataset
from dlsec.errors import DlsecError
from dlsec.intervals import wilson_interval
from dlsec.models import CardLike
from dlsec.scenarios.result import ScenarioResult, Table
from dlsec.training import TrainConfig, predict_logits, train_model

_NO_FLWR = ("client DP uses Flower's mods, and flwr is not installed: install the "
            "federated extra (pip install 'dlsec[federated]')")


class LeakageSettingsError(DlsecError):
    """Gradient-leakage settings that cannot run (batch sizes, trials, attack name, DP)."""


@dataclass(frozen=True)
class LeakageSetting:
    """One row: the client's batch size, its local SGD steps, and its DP.

    ``epsilon``: None for no DP, ``math.inf`` for Flower's fixed clipping only (what a
    server reads under central DP), a finite value for Flower's ``LocalDpMod``.
    """

    batch_size: int
    local_steps: int = 1
    epsilon: float | None = None

    @property
    def key(self) -> str:
        """``b4``, ``b1_s5``, ``b1_clip``, ``b1_eps10``: the metric-name suffix."""
        k = f"b{self.batch_size}"
        if self.local_steps != 1:
            k += f"_s{self.local_steps}"
        if self.epsilon is not None:
            k += "_clip" if math.isinf(self.epsilon) else f"_eps{self.epsilon:g}"
        return k

    @property
    def dp_text(self) -> str:
        if self.epsilon is None:
            return "none"
        return "clip only" if math.isinf(self.epsilon) else f"local eps={self.epsilon:g}"


def local_dp_std(*, clip_norm: float, epsilon: float, delta: float,
                 sensitivity: float | None = None) -> float:
    """The noise standard deviation ``LocalDpMod`` adds to each weight (its own formula,
    the Gaussian mechanism): ``sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon``;
    ``sensitivity`` defaults to ``clip_norm``."""
    sens = clip_norm if sensitivity is None else sensitivity
    return float(sens * math.sqrt(2 * math.log(1.25 / delta)) / epsilon)


def _through_mod(mod: object, before: Sequence[Tensor], update: Sequence[Tensor],
                 config: dict[str, float], seed: int) -> list[Tensor]:
    """Send ``before`` to a client whose reply holds ``before + update``, through the
    client-side ``mod``; the weights of the reply minus ``before``. Flower's noise draws
    from numpy's global generator: it is seeded with ``seed`` for the call and restored."""
    try:
        from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict
    except ImportError:
        raise LeakageSettingsError(_NO_FLWR) from None
    sent = [b.detach().cpu().numpy().astype(np.float32) for b in before]
    back = [(b.detach().cpu() + u.detach().cpu()).numpy().astype(np.float32)
            for b, u in zip(before, update, strict=True)]
    content = RecordDict({"arrays": ArrayRecord(sent)})
    if config:
        content["config"] = ConfigRecord(dict(config))
    # Flower's public constructor reads the running task's identity (there is none outside
    # a run): the instruction message is built from its metadata, as Flower's runtime does
    msg = Message(content=content, metadata=Metadata(  # type: ignore[call-overload]
        run_id=0, message_id="", src_node_id=0, dst_node_id=1, reply_to_message_id="",
        group_id="", created_at=time.time(), ttl=3600.0, message_type="train"))
    ctx = Context(run_id=0, node_id=1, node_config={}, state=RecordDict(), run_config={})

    def call_next(m: Message, _c: Context) -> Message:
        return Message(content=RecordDict({"arrays": ArrayRecord(back)}), reply_to=m)

    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    flwr_log = logging.getLogger("flwr")  # the mods log an INFO line per call
    level = flwr_log.level
    flwr_log.setLevel(logging.WARNING)
    try:
        reply = mod(msg, ctx, call_next)  # type: ignore[operator]
    finally:
        np.random.set_state(state)
        flwr_log.setLevel(level)
    if reply.has_error():
        raise LeakageSettingsError(f"Flower's mod refused the update: {reply.error.reason}")
    arrays = reply.content["arrays"].to_numpy_ndarrays()
    return [torch.from_numpy(np.asarray(a, dtype=np.float32)).to(b.device) - b.detach()
            for a, b in zip(arrays, before, strict=True)]


def flower_local_dp(before: Sequence[Tensor], update: Sequence[Tensor], *, clip_norm: float,
                    epsilon: float, delta: float = 1e-5, sensitivity: float | None = None,
                    seed: int) -> list[Tensor]:
    """The update as the server receives it from a client running Flower's ``LocalDpMod``
    (clipped to ``clip_norm``, then Gaussian noise of :func:`local_dp_std` on every
    weight); ``seed`` drives the noise."""
    _check_dp(clip_norm, epsilon, delta)
    try:
        from flwr.clientapp.mod import LocalDpMod
    except ImportError:
        raise LeakageSettingsError(_NO_FLWR) from None
    sens = clip_norm if sensitivity is None else sensitivity
    return _through_mod(LocalDpMod(clip_norm, sens, epsilon, delta), before, update, {}, seed)


def flower_fixed_clipping(before: Sequence[Tensor], update: Sequence[Tensor], *,
                          clip_norm: float) -> list[Tensor]:
    """The update through Flower's ``fixedclipping_mod`` (client-side clipping for central
    DP): scaled to L2 norm at most ``clip_norm``, no noise (the server adds it later)."""
    _check_dp(clip_norm, math.inf, 0.5)
    try:
        from flwr.clientapp.mod import fixedclipping_mod
    except ImportError:
        raise LeakageSettingsError(_NO_FLWR) from None
    return _through_mod(fixedclipping_mod, before, update, {"clipping_norm": float(clip_norm)}, 0)


def _check_dp(clip_norm: float, epsilon: float, delta: float) -> None:
    if not (clip_norm > 0 and math.isfinite(clip_norm)):
        raise LeakageSettingsError(f"the clipping norm must be > 0, got {clip_norm}")
    if not epsilon > 0:
        raise LeakageSettingsError(f"client DP epsilon must be > 0, got {epsilon}")
    if not 0 < delta < 1:
        raise LeakageSettingsError(f"client DP delta must be in (0, 1), got {delta}")


def _check(settings: Sequence[LeakageSetting], attack: str, iterations: int, trials: int,
           n_train: int, client_lr: float, clip_norm: float, delta: float
           ) -> list[LeakageSetting]:
    out = list(settings)
    if not out or any(s.batch_size < 1 for s in out):
        raise LeakageSettingsError(
            f"batch sizes must be >= 1, got {[s.batch_size for s in out]}")
    if max(s.batch_size for s in out) > n_train:
        raise LeakageSettingsError(f"batch size {max(s.batch_size for s in out)} exceeds the "
                                   f"{n_train} training examples")
    if attack not in ATTACKS:
        raise LeakageSettingsError(f"unknown gradient-leakage attack {attack!r} "
                                   f"(choose from {', '.join(ATTACKS)})")
    if attack == "idlg" and any(s.batch_size != 1 for s in out):
        raise LeakageSettingsError("idlg reconstructs batches of one only")
    if any(s.local_steps < 1 for s in out):
        raise LeakageSettingsError(
            f"local steps must be >= 1, got {[s.local_steps for s in out]}")
    if attack != "inverting-gradients" and any(s.local_steps > 1 for s in out):
        raise LeakageSettingsError(f"{attack} matches one gradient; several local steps "
                                   "need inverting-gradients")
    if iterations < 1 or trials < 1:
        raise LeakageSettingsError("iterations and trials must be >= 1")
    if not (client_lr > 0 and math.isfinite(client_lr)):
        raise LeakageSettingsError(f"the client's learning rate must be > 0, got {client_lr}")
    for s in out:
        if s.epsilon is not None:
            _check_dp(clip_norm, s.epsilon, delta)
    if len({s.key for s in out}) != len(out):
        raise LeakageSettingsError("the same setting is listed twice")
    return out


def _received(model: nn.Module, update: list[Tensor], setting: LeakageSetting, *,
              clip_norm: float, delta: float, gen: torch.Generator) -> list[Tensor]:
    """What the server receives: the update, through Flower's client-side DP if any."""
    if setting.epsilon is None:
        return update
    before = [p.detach() for p in model.parameters() if p.requires_grad]
    if math.isinf(setting.epsilon):
        return flower_fixed_clipping(before, update, clip_norm=clip_norm)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    return flower_local_dp(before, update, clip_norm=clip_norm, epsilon=setting.epsilon,
                           delta=delta, seed=seed)


def gradient_leakage(dataset: Dataset, model: nn.Module, card: CardLike, *,
                     batch_sizes: Sequence[int] = (1, 2, 4),
                     settings: Sequence[LeakageSetting] | None = None,
                     attack: str = "inverting-gradients", iterations: int = 300,
                     trials: int = 4, seed: int = 0, client_lr: float = 0.1,
                     clip_norm: float = 1.0, delta: float = 1e-5,
                     evaluator: str = "simplenet", evaluator_epochs: int = 10,
                     evaluator_model: nn.Module | None = None) -> ScenarioResult:
    """Reconstruct client batches for each setting from their updates and score them.

    ``settings`` (default: one per batch size, one local step, no DP) are the rows.
    ``metrics`` per setting key ``k`` (:attr:`LeakageSetting.key`, ``b<size>`` for the
    default ones): ``psnr_k``, ``ssim_k``, ``recognised_k`` (means over all reconstructed
    images), ``recognised_low_k`` / ``recognised_high_k`` (Wilson 95%),
    ``originals_recognised_k`` (the evaluator on the originals, the ceiling) and
    ``seconds_k`` (mean attack time per batch); one table row per setting (batch size
    first); ``figures["gallery"]``: for the first batch of each setting, originals beside
    their matched reconstructions. ``client_lr``: the client's SGD step size;
    ``clip_norm``, ``delta``: Flower's DP mods (the sensitivity is ``clip_norm``).
    ``evaluator_model`` replaces the independently trained evaluator (it must not be
    ``model``).
    """
    if settings is None:
        settings = [LeakageSetting(int(b)) for b in batch_sizes]
    rows_settings = _check(settings, attack, iterations, trials, len(dataset.y_train),
                           client_lr, clip_norm, delta)
    if evaluator_model is model:
        raise LeakageSettingsError("the evaluator must be a model other than the attacked one")
    device = next(model.parameters()).device
    if evaluator_model is None:
        evaluator_model, _, _ = train_model(
            dataset, evaluator,
            TrainConfig(epochs=evaluator_epochs, lr=3e-3, seed=seed + 7919,
                        measure_train_accuracy=False, device=str(device)),
            progress=False)
    gen = torch.Generator().manual_seed(seed)
    lo, hi = float(card.bounds[0]), float(card.bounds[1])
    metrics: dict[str, float] = {}
    rows: list[list] = []
    gallery_images: list[torch.Tensor] = []
    gallery_labels: list[str] = []
    label_hits: dict[str, float] = {}
    for st in rows_settings:
        b, key = st.batch_size, st.key
        tag = key.replace("b", "b=", 1) if st == LeakageSetting(b) else key
        ps: list[float] = []
        ss: list[float] = []
        hits: list[bool] = []
        base: list[bool] = []
        labels_right: list[bool] = []
        seconds: list[float] = []
        for trial in range(trials):
            idx = torch.randperm(len(dataset.y_train), generator=gen)[:b]
            x, y = dataset.x_train[idx].to(device), dataset.y_train[idx].to(device)
            update = local_update(model, x, y, local_steps=st.local_steps, lr=client_lr)
            received = _received(model, update, st, clip_norm=clip_norm, delta=delta, gen=gen)
            res = attack_update(attack, model, received, card=card, batch_size=b,
                                local_steps=st.local_steps, lr=client_lr,
                                iterations=iterations, generator=gen)
            seconds.append(res.seconds)
            perm = match_reconstructions(res.inputs, x.cpu(), data_range=hi - lo)
            rec = res.inputs[perm]
            ps += psnr(rec, x.cpu(), data_range=hi - lo).clamp(max=100.0).tolist()
            if rec.dim() == 4:
                ss += ssim(rec, x.cpu(), data_range=hi - lo).tolist()
            pred = predict_logits(evaluator_model, rec.to(device)).argmax(1).cpu()
            hits += (pred == y.cpu()).tolist()
            base += (predict_logits(evaluator_model, x).argmax(1).cpu() == y.cpu()).tolist()
            labels_right.append(bool((res.labels.sort().values == y.cpu().sort().values).all()))
            if trial == 0:
                gallery_images += [x.cpu(), rec]
                gallery_labels += [f"{card.classes[int(c)]} ({tag}, original)" for c in y]
                gallery_labels += [f"{card.classes[int(c)]} ({tag}, reconstructed)" for c in y]
        low, high = wilson_interval(sum(hits), len(hits))
        metrics[f"psnr_{key}"] = round(sum(ps) / len(ps), 4)
        metrics[f"ssim_{key}"] = round(sum(ss) / len(ss), 4) if ss else float("nan")
        metrics[f"recognised_{key}"] = round(sum(hits) / len(hits), 4)
        metrics[f"recognised_low_{key}"] = round(low, 4)
        metrics[f"recognised_high_{key}"] = round(high, 4)
        metrics[f"originals_recognised_{key}"] = round(sum(base) / len(base), 4)
        metrics[f"seconds_{key}"] = round(sum(seconds) / len(seconds), 4)
        label_hits[key] = sum(labels_right) / len(labels_right)
        rows.append([b, st.local_steps, st.dp_text, len(hits), metrics[f"psnr_{key}"],
                     metrics[f"ssim_{key}"], metrics[f"recognised_{key}"],
                     f"[{low:.3f}, {high:.3f}]", metrics[f"originals_recognised_{key}"],
                     round(label_hits[key], 4), metrics[f"seconds_{key}"]])
    first = rows_settings[0].key
    summary = (f"{attack}: at {first}, {metrics[f'recognised_{first}']:.0%} of "
               f"reconstructions are recognised by an independent model "
               f"(PSNR {metrics[f'psnr_{first}']:.1f} dB)")
    table = Table(f"Gradient leakage ({attack}, {iterations} iterations)",
                  ["batch size", "local steps", "client DP", "images", "PSNR (dB)", "SSIM",
                   "recognised", "recognised 95% (Wilson)", "originals recognised",
                   "labels right", "seconds"],
                  rows, caption="recognised: share of reconstructions an independently trained "
                                "model classifies as the original's label; the client sends "
                                f"its update after local SGD steps of lr {client_lr:g}; "
                                f"client DP: Flower's mods, clipping norm {clip_norm:g}, "
                                f"delta {delta:g}")
    return ScenarioResult(
        name="gradient-leakage", summary=summary, metrics=metrics, tables=[table],
        figures={"gallery": {"images": torch.cat(gallery_images), "labels": gallery_labels,
                             "bounds": (lo, hi)}},
        details={"attack": attack, "iterations": iterations, "trials": trials,
                 "batch_sizes": [s.batch_size for s in rows_settings],
                 "settings": [{"key": s.key, "batch_size": s.batch_size,
                               "local_steps": s.local_steps,
                               "epsilon": None if s.epsilon is None else
                               ("inf" if math.isinf(s.epsilon) else s.epsilon)}
                              for s in rows_settings],
                 "seed": seed, "client_lr": client_lr, "clip_norm": clip_norm,
                 "delta": delta, "labels_right": label_hits},
        artifacts={"evaluator": evaluator_model})


__all__ = ["LeakageSetting", "LeakageSettingsError", "flower_fixed_clipping",
           "flower_local_dp", "gradient_leakage", "local_dp_std", "wilson_interval"]
