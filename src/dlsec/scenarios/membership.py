"""Membership inference: were these records in the model's training data?

The model's own training records (the card's training record says which: the training split
minus its validation share) against as many test records, so chance is AUC 0.5. Attacks by
name: :data:`MEMBERSHIP_ATTACKS` (:mod:`dlsec.attacks.privacy.membership`). Shadow models
follow the target's own recipe from its card; when the audit chose the target's epochs by its
training set's size (``epochs_rule``), the shadows' epochs follow the same rule for their half
of the records. A target trained with DP-SGD (its card's ``training["dp"]``) gets shadows
trained the same way: DP-SGD on Opacus (:func:`dlsec.defenses.dp.dp_train`) with the card's
noise multiplier, clipping norm and sample rate, one after another.

A remote target (``ctx.remote``) is asked once per record of the membership set, a member
and a non-member at a time (:func:`buy_answers`); the score attacks read those answers, so
the server charges exactly the records scored, and a budget that runs out leaves a smaller
balanced set (``details["partial"]``). Label-only's noisy views are asked as the attack goes.

Seed streams: ``membership/set`` (which records), ``membership/shadows`` (the shadows'
halves), ``membership/label-only`` (the label-only attack's noise).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dlsec.attacks.privacy.membership import (
    AttackClassifierConfig,
    MembershipResult,
    balanced_membership_set,
    label_only_attack,
    lira,
    shadow_attack,
    threshold_attack,
    train_shadow_models,
)
from dlsec.attacks.privacy.metrics import roc_points
from dlsec.attacks.surrogate import train_config_from_card
from dlsec.data import Dataset
from dlsec.errors import DlsecError
from dlsec.models import ModelCard
from dlsec.scenarios.context import ScenarioContext
from dlsec.scenarios.result import ScenarioResult, Table
from dlsec.threat import BudgetExhausted, Oracle, OracleWrapper
from dlsec.training import TrainConfig, scaled_epochs

MEMBERSHIP_ATTACKS = ("loss", "confidence", "entropy", "shadow", "lira", "lira-offline",
                      "label-only")
_SHADOW_ATTACKS = ("shadow", "lira", "lira-offline")


@dataclass
class MembershipOptions:
    """``attacks``: names from :data:`MEMBERSHIP_ATTACKS`; ``members``: members tested (as
    many non-members); ``shadows``: shadow models (shadow, LiRA); ``label_only_noise``: noisy
    views per record of the label-only attack; ``stacked``: train the shadows as one batched
    module (None: where the architecture allows)."""

    attacks: tuple[str, ...] = MEMBERSHIP_ATTACKS
    members: int = 200
    shadows: int = 8
    label_only_noise: int = 20
    stacked: bool | None = None

    def __post_init__(self) -> None:
        bad = [a for a in self.attacks if a not in MEMBERSHIP_ATTACKS]
        if bad or not self.attacks:
            raise DlsecError(f"unknown membership attack {', '.join(map(repr, bad)) or '(none)'} "
                             f"(choose from {', '.join(MEMBERSHIP_ATTACKS)})")
        if self.members < 1 or self.shadows < 2 or self.label_only_noise < 1:
            raise DlsecError("members and label-only noise must be >= 1, shadows >= 2")


def run_membership(ctx: ScenarioContext, options: MembershipOptions | None = None
                   ) -> ScenarioResult:
    """The named attacks on a balanced membership set; metrics, table and ROC data.

    ``artifacts["results"]``: one :class:`MembershipResult` per attack, in order;
    ``artifacts["records"]``: the records tested, ``(x, y, is_member)``.
    """
    opt = options or MembershipOptions()
    ds = ctx.dataset
    idx = ctx.member_indices()
    x, y, is_member = balanced_membership_set(
        ds.x_train[idx], ds.y_train[idx], ds.x_test, ds.y_test, n=opt.members,
        generator=ctx.generator("membership/set"),
    )
    details: dict = {"attacks": list(opt.attacks)}
    oracle: Oracle | None = None
    if any(a != "label-only" for a in opt.attacks):
        oracle = ctx.oracle(output="scores")
        if ctx.remote is not None:  # buy each record's answer once, in member/non-member pairs
            planned = len(y)
            x, y, is_member, oracle = buy_answers(oracle, x, y, is_member)
            if len(y) < planned:
                details["partial"] = {"records": len(y), "records_planned": planned}
    details["members"] = int(is_member.sum())
    shadows = None
    if any(a in _SHADOW_ATTACKS for a in opt.attacks):
        cfg = train_config_from_card(ctx.card, device=str(ctx.device),
                                     measure_train_accuracy=False)
        record = ctx.card.training_record
        if record.epochs_rule:  # each shadow trains on half the records
            cfg = dataclasses.replace(cfg, epochs=scaled_epochs(len(y) // 2))
        dp = DPShadowTrainer.from_card(ctx.card) or AdversarialShadowTrainer.from_card(ctx.card)
        shadows = train_shadow_models(x, y, card=ctx.card, n_models=opt.shadows, config=cfg,
                                      generator=ctx.generator("membership/shadows"),
                                      progress=ctx.progress,
                                      stacked=False if dp else opt.stacked, train_one=dp,
                                      executor=ctx.executor)
        details.update(shadows=opt.shadows, shadow_epochs=cfg.epochs, shadow_records=len(y) // 2,
                       shadow_epochs_scaled=bool(record.epochs_rule))
        if isinstance(dp, DPShadowTrainer):
            details["shadow_dp"] = dp.records
        elif dp is not None:
            details["shadow_adversarial"] = dp.settings
    results: list[MembershipResult] = []
    for name in opt.attacks:
        if name in ("loss", "confidence", "entropy"):
            assert oracle is not None
            results.append(threshold_attack(oracle, x, y, signal=name,  # type: ignore[arg-type]
                                            is_member=is_member))
        elif name == "shadow":
            assert shadows is not None and oracle is not None
            results.append(shadow_attack(
                oracle, x, y, shadows=shadows, is_member=is_member,
                config=AttackClassifierConfig(epochs=20, batch_size=256)))
        elif name in ("lira", "lira-offline"):
            assert shadows is not None and oracle is not None
            results.append(lira(oracle, shadows, is_member=is_member, online=name == "lira"))
        else:
            results.append(label_only_attack(
                ctx.oracle(output="label"), x, y, is_member=is_member,
                noise_samples=opt.label_only_noise,
                generator=ctx.generator("membership/label-only")))
    out = _result(results, is_member, details)
    if "partial" in details:
        p = details["partial"]
        out.warnings.append(f"the query budget ran out: {p['records']} of "
                            f"{p['records_planned']} records answered (partial result)")
    out.artifacts["records"] = (x, y, is_member)
    return out


class _Replay(OracleWrapper):
    """The answers already bought from ``inner``, by the bytes of each row; a row not yet
    bought is asked of ``inner`` (and kept). ``queries_total`` counts the rows answered here
    (cached or not), so an attack's query count is the same as on a local oracle."""

    def __init__(self, inner: Oracle) -> None:
        super().__init__(inner)
        self.answers: dict[bytes, Tensor] = {}
        self.answered = 0

    @staticmethod
    def _key(row: Tensor) -> bytes:
        return row.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()

    @property
    def queries_total(self) -> int:
        return self.answered

    def buy(self, x: Tensor) -> None:
        out = self.inner.query(x)
        for row, answer in zip(x, out, strict=True):
            self.answers[self._key(row)] = answer

    def query(self, x: Tensor, *, ids: Tensor | None = None) -> Tensor:
        missing = [i for i, row in enumerate(x) if self._key(row) not in self.answers]
        if missing:
            self.buy(x[missing])
        self.answered += int(x.shape[0])
        return torch.stack([self.answers[self._key(row)] for row in x])


def buy_answers(oracle: Oracle, x: Tensor, y: Tensor, is_member: Tensor, *,
                batch_size: int = 256) -> tuple[Tensor, Tensor, Tensor, Oracle]:
    """Ask ``oracle`` (a remote target's) for every record of the membership set ``x`` (its
    members first, as many non-members after) once, a member and a non-member at a time,
    in even batches no larger than what the server has left (a refused batch is asked
    again at the size the refusal says is left); the attacks then read these
    answers (a :class:`_Replay`), so the server charges each record once. If the budget
    runs out, the records answered (still half members) are the set: ``(x, y, is_member,
    replay)``; none answered is a one-line :class:`BudgetExhausted`."""
    n = int(is_member.sum())
    order = torch.stack([torch.arange(n), torch.arange(n, 2 * n)], 1).reshape(-1)
    replay = _Replay(oracle)
    step = max(2, min(batch_size, int(getattr(oracle, "max_rows", batch_size))) // 2 * 2)
    done = 0
    while done < 2 * n:
        left = oracle.remaining
        size = min(step, 2 * n - done) if left is None else min(step, 2 * n - done, left // 2 * 2)
        if size < 2:
            break
        try:
            replay.buy(x[order[done:done + size]])
        except BudgetExhausted:
            left = oracle.remaining  # the refusal says what is left: ask for that much
            if left is not None and 2 <= left < size:
                continue
            break
        done += size
    if done == 2 * n:
        return x, y, is_member, replay
    if done == 0:
        raise BudgetExhausted("the query budget ran out before the first membership record "
                              "was answered")
    k = done // 2
    keep = torch.cat([torch.arange(k), torch.arange(n, n + k)])
    return x[keep], y[keep], is_member[keep], replay


@dataclass
class AdversarialShadowTrainer:
    """Trains one shadow model as an adversarially trained target was trained: the card's
    ``training["adversarial"]`` method (PGD-AT, FGSM-RS, TRADES) at its radius, norm, steps
    and step size, on the shadow's half (no robustness monitor: the shadows keep their last
    epoch). The attack's random starts are seeded by the shadow's own seed."""

    settings: dict[str, Any]
    bounds: tuple[float, float]

    @classmethod
    def from_card(cls, card: ModelCard) -> AdversarialShadowTrainer | None:
        adv = (card.training or {}).get("adversarial")
        if not isinstance(adv, dict) or "method" not in adv:
            return None
        return cls(settings=dict(adv), bounds=(float(card.bounds[0]), float(card.bounds[1])))

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, config: TrainConfig) -> nn.Module:
        from dlsec.defenses.adversarial import make_adversarial_loss
        from dlsec.training import fit

        s = self.settings
        extra: dict[str, Any] = {"alpha": s["alpha"]} if s.get("alpha") is not None else {}
        if s["method"] == "trades" and "beta" in s:
            extra["beta"] = s["beta"]
        loss = make_adversarial_loss(
            s["method"], eps=float(s["eps"]), bounds=self.bounds, norm=s.get("norm", "linf"),
            steps=s.get("steps"), generator=torch.Generator().manual_seed(config.seed), **extra)
        fit(model, x, y, config=config, batch_loss=loss, progress=False)
        return model


@dataclass
class DPShadowTrainer:
    """Trains one shadow model as a DP target was trained: DP-SGD on Opacus with the
    target card's noise multiplier and clipping norm, and its sample rate (the expected
    batch is ``sample_rate`` times the shadow's records), so a shadow takes as many noised
    steps of the same kind as the target did. ``records`` keeps each shadow's
    ``training["dp"]`` record (what the shadows really were)."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    card: ModelCard
    fix: bool = False
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @classmethod
    def from_card(cls, card: ModelCard) -> DPShadowTrainer | None:
        dp = (card.training or {}).get("dp")
        if not isinstance(dp, dict):
            return None
        return cls(noise_multiplier=float(dp["noise_multiplier"]),
                   max_grad_norm=float(dp["max_grad_norm"]),
                   sample_rate=float(dp["sample_rate"]), card=card,
                   fix=bool(dp.get("fixed_layers")))

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, config: TrainConfig) -> nn.Module:
        from dlsec.defenses.dp import dp_train

        n = int(y.shape[0])
        # Opacus's rate is 1 / ceil(n / batch): the batch whose rate comes nearest the target's
        near = max(1, math.ceil(n * self.sample_rate))
        batch = min((b for b in (near - 1, near, near + 1) if 1 <= b <= n),
                    key=lambda b: abs(1.0 / math.ceil(n / b) - self.sample_rate))
        part = Dataset(name=f"{self.card.dataset or 'shadow'}-shadow", x_train=x, y_train=y,
                       x_test=x, y_test=y, classes=tuple(self.card.classes),
                       bounds=tuple(self.card.bounds))  # type: ignore[arg-type]
        cfg = dataclasses.replace(config, batch_size=batch)
        res = dp_train(part, self.card.architecture, cfg, model=model, progress=False,
                       noise_multiplier=self.noise_multiplier,
                       max_grad_norm=self.max_grad_norm, fix=self.fix)
        self.records.append(dict(res.card.training["dp"]))
        return res.model


def _result(results: list[MembershipResult], is_member, details: dict) -> ScenarioResult:
    curves, rows, metrics = {}, [], {}
    for r in results:
        assert r.metrics is not None
        fpr, tpr, _ = roc_points(r.scores, is_member)
        curves[r.attack] = (fpr.tolist(), tpr.tolist())
        m = r.metrics
        for k in ("auc", "tpr_at_0_1_fpr", "tpr_at_1_fpr"):
            metrics[f"{r.attack.replace('-', '_')}_{k}"] = round(getattr(m, k), 6)
        rows.append([r.attack, round(m.auc, 4), round(m.tpr_at_0_1_fpr, 4),
                     round(m.tpr_at_1_fpr, 4), round(m.advantage, 4), r.queries])
    best = max(results, key=lambda r: r.metrics.auc if r.metrics else 0.0)
    assert best.metrics is not None
    metrics["membership_auc"] = round(best.metrics.auc, 6)
    metrics["membership_advantage"] = round(max(r.metrics.advantage for r in results
                                                if r.metrics), 6)
    details.update(best=best.attack, best_auc=best.metrics.auc,
                   best_tpr_at_1_fpr=best.metrics.tpr_at_1_fpr)
    summary = (f"best attack {best.attack}: AUC {best.metrics.auc:.3f}, "
               f"TPR {best.metrics.tpr_at_1_fpr:.1%} at 1% FPR")
    warnings = ([f"membership leaks: {best.attack} reaches AUC {best.metrics.auc:.3f}"]
                if best.metrics.auc > 0.6 else [])
    table = Table("Membership inference",
                  ["attack", "AUC", "TPR @ 0.1% FPR", "TPR @ 1% FPR", "advantage", "queries"],
                  rows, caption=f"{details['members']} members and as many non-members "
                  "(chance: AUC 0.5).")
    return ScenarioResult(name="membership", summary=summary, metrics=metrics, tables=[table],
                          figures={"roc": curves}, warnings=warnings, details=details,
                          artifacts={"results": results})


__all__ = ["MEMBERSHIP_ATTACKS", "MembershipOptions", "buy_answers", "run_membership"]
