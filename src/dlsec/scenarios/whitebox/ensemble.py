"""A robustness evaluation in the manner of AutoAttack (Croce & Hein 2020, "Reliable
evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks").

Threat model: white-box (plus the black-box Square stage), Linf or L2 ball of each
epsilon, inside the card's input bounds; untargeted.

Stages run one after another, each only on the points still robust: by default APGD-CE,
then APGD-T, then boundary restarts (:mod:`.restarts`, on the tenth of the survivors that
came nearest the decision boundary), then the black-box Square attack (Linf; through a
:class:`dlsec.threat.LocalOracle`).
Each stage's candidates are scored by how near the boundary they brought each point (the
untargeted DLR loss, from the forward pass that checks them); a stage registered with
``nearest`` runs only on that share of the survivors, the nearest first.
Epsilons run in increasing order and an adversarial found at a smaller epsilon is kept
for the larger ones (the balls are nested), so each stage attacks only what is left.

The result is robust accuracy per epsilon, overall and after each stage, the
adversarials, and the evaluation's sanity warnings (:mod:`.checks`). With ``state_path``
the evaluation is resumable: after each (epsilon, stage) the per-point state is written
atomically (safetensors: tensors only, never a pickle) and a rerun with the same model,
points and settings continues where it stopped, with the same result.

Sharded (``shard=``, :mod:`dlsec.scenarios.sharding`, under ``torchrun``): each rank takes
a contiguous run of blocks of points, attacks each block with a generator seeded from the
stage's seed and the block's global index, joins the others before a stage that picks its
points among all of them (the boundary restarts' nearest share, Square's query budget)
and at the end gathers one report, the same on every rank and the same as the one-process
run with the same ``block_size``. Each rank resumes from its own state file
(``<state>.rank<k>-of-<n>``).

Mixed precision (``amp="bf16"``, or ``"fp16"`` on CUDA) applies to the *search* only: the
white-box stages attack the model through :class:`dlsec.training.AutocastModel` (half
precision matmuls, float32 logits and losses). The *verdict* never uses it: the clean pass,
the check of every stage's candidates and the sanity checks run the model in float32 with
autocast off, so a candidate counts as adversarial only if the float32 model misclassifies
it; half precision can make the evaluation weaker, never report a false break. The
black-box Square stage also queries the float32 model: its acceptance rule compares small
differences of scores that bfloat16 rounds away.

Example:
    >>> rep = evaluate_robustness(model, x, y, eps=[0.05, 0.1], card=card)   # doctest: +SKIP
    >>> rep.robust_accuracy, rep.stage_accuracy["apgd-ce"], rep.warnings     # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from dlsec.attacks.blackbox import SquareAttack
from dlsec.attacks.core import AttackError, Norm, card_bounds, module_mode, project
from dlsec.attacks.evasion import APGD, APGDT, PGD, EvasionAttack
from dlsec.attacks.evasion.apgd import nearness
from dlsec.files import atomic_write_bytes
from dlsec.models import CardLike
from dlsec.scenarios.sharding import Shard, block_seed
from dlsec.scenarios.whitebox import checks as sanity
from dlsec.scenarios.whitebox.restarts import boundary_restarts
from dlsec.threat import LocalOracle
from dlsec.training import AutocastModel

STATE_VERSION = "3"
# the share of the points still robust that the boundary restarts attack
RESTART_SHARE = 0.1


# One ensemble stage: ``run(model, x, y, *, norm, eps, bounds, generator)`` returns candidate
# adversarials for ``x`` (same shape); the ensemble projects them onto the ball and the
# bounds and checks them itself.
StageFn = Callable[..., Tensor]


@dataclass(frozen=True)
class Stage:
    """``nearest`` > 0: the stage runs only on that share of the points still robust
    (rounded up), those the earlier stages brought nearest the decision boundary.
    ``pooled``: the stage spreads a budget over all the points it attacks; ``run`` gets
    ``points=`` their number (over every block and rank), not just ``len(x)``."""

    name: str
    run: StageFn
    white_box: bool = True
    nearest: float = 0.0
    pooled: bool = False


_STAGES: dict[str, Stage] = {}


def register_stage(
    name: str, *, white_box: bool = True, nearest: float = 0.0, pooled: bool = False
) -> Callable[[StageFn], StageFn]:
    """Register an ensemble stage under ``name`` (``nearest``: see :class:`Stage`); a
    black-box stage registers with ``white_box=False`` (see :func:`_square_stage`)."""

    def deco(fn: StageFn) -> StageFn:
        if name in _STAGES:
            raise ValueError(f"ensemble stage {name!r} is already registered")
        if not 0 <= nearest <= 1:
            raise ValueError(f"ensemble stage {name!r}: nearest must be in [0, 1]")
        _STAGES[name] = Stage(name, fn, white_box, nearest, pooled)
        return fn

    return deco


def get_stage(name: str) -> Stage:
    if name not in _STAGES:
        raise AttackError(f"unknown ensemble attack {name!r} (known: {', '.join(sorted(_STAGES))})")
    return _STAGES[name]


def default_attacks() -> tuple[str, ...]:
    """AutoAttack's order: APGD-CE, APGD-T, boundary restarts, then Square."""
    return ("apgd-ce", "apgd-t", "apgd-restarts", "square")


def _white_box_stage(name: str, make: Callable[[Norm], EvasionAttack]) -> None:
    """Register an :class:`EvasionAttack` as a stage: its adversarial at the one epsilon."""

    def run(
        model: nn.Module, x: Tensor, y: Tensor, *, norm: Norm, eps: float,
        bounds: tuple[float, float], generator: torch.Generator,
    ) -> Tensor:
        return make(norm)(model, x, y, eps=eps, bounds=bounds, generator=generator).x_adv[0]

    register_stage(name)(run)


_white_box_stage("apgd-ce", lambda norm: APGD(norm=norm, loss="ce"))
_white_box_stage("apgd-dlr", lambda norm: APGD(norm=norm, loss="dlr"))
_white_box_stage("apgd-t", lambda norm: APGDT(norm=norm))
_white_box_stage("pgd", lambda norm: PGD(norm=norm, steps=40))


@register_stage("apgd-restarts", nearest=RESTART_SHARE)
def _restarts_stage(
    model: nn.Module, x: Tensor, y: Tensor, *, norm: Norm, eps: float,
    bounds: tuple[float, float], generator: torch.Generator,
) -> Tensor:
    return boundary_restarts(model, x, y, norm=norm, eps=eps, bounds=bounds, generator=generator)


# The Square stage's queries: SQUARE_TOTAL_QUERIES spread over the points it attacks, between
# SQUARE_MIN_QUERIES and SQUARE_MAX_QUERIES per point, so the default audit stays fast.
SQUARE_TOTAL_QUERIES = 20_000
SQUARE_MIN_QUERIES = 100
SQUARE_MAX_QUERIES = 1_000


@register_stage("square", white_box=False, pooled=True)
def _square_stage(
    model: nn.Module, x: Tensor, y: Tensor, *, norm: Norm, eps: float,
    bounds: tuple[float, float], generator: torch.Generator, points: int | None = None,
) -> Tensor:
    """The black-box Square attack (Linf), through a :class:`LocalOracle`, on the points
    still robust after the white-box stages (``points`` of them in all, ``len(x)`` when not
    given); for other norms it returns ``x`` unchanged."""
    if norm != "linf" or x.shape[0] == 0 or x.dim() != 4:
        return x
    with torch.inference_mode():
        k = int(model(x[:1]).shape[1])
    oracle = LocalOracle(model, num_classes=k, input_shape=tuple(x.shape[1:]), bounds=bounds)
    total = len(x) if points is None else max(points, 1)
    q = min(SQUARE_MAX_QUERIES, max(SQUARE_MIN_QUERIES, SQUARE_TOTAL_QUERIES // total))
    attack = SquareAttack(max_queries=q, p_init=0.05, norm="linf")
    return attack(oracle, x, y, eps=eps, generator=generator).x_adv


# -- the report ---------------------------------------------------------------------------------
@dataclass
class RobustnessReport:
    """The result of :func:`evaluate_robustness`.

    ``robust[k, n]``: point n is classified correctly under every stage's attack at
    ``eps[k]``. ``fooled_by[k, n]``: the index in ``attacks`` of the stage that fooled it
    (-1 still robust, -2 misclassified without perturbation). ``x_adv[k]`` holds the
    adversarials (the clean input where none was found). ``stage_accuracy[name][k]`` is
    the robust accuracy after that stage and those before it. ``seconds`` is the whole
    evaluation's wall time, ``check_seconds`` the part spent in the sanity checks. ``amp``:
    the precision the white-box stages searched in (``"off"``: float32); the verdicts are
    float32 whatever it is.
    """

    norm: str
    eps: list[float]
    attacks: list[str]
    clean_accuracy: float
    robust_accuracy: list[float]
    stage_accuracy: dict[str, list[float]]
    robust: Tensor
    fooled_by: Tensor
    x_adv: Tensor
    clean_correct: Tensor
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    resumed: bool = False
    check_seconds: float = 0.0
    block_size: int | None = None
    amp: str = "off"

    def summary(self) -> dict[str, Any]:
        keys = ("norm", "eps", "attacks", "clean_accuracy", "robust_accuracy", "stage_accuracy",
                "warnings", "seconds", "check_seconds", "amp")
        out = {k: getattr(self, k) for k in keys}
        if self.block_size is not None:  # the per-block path (sharded, or --block-size)
            out["block_size"] = self.block_size
        return out


# -- the evaluation -----------------------------------------------------------------------------
def evaluate_robustness(
    model: nn.Module, x: Tensor, y: Tensor, *, norm: str = "linf",
    eps: float | Sequence[float] = (0.1,), card: CardLike | None = None,
    bounds: tuple[float, float] | None = None, attacks: Sequence[str] | None = None,
    generator: torch.Generator | None = None, state_path: str | Path | None = None,
    checks: bool = True, check_points: int = 32, batch_size: int = 1024, progress: bool = True,
    shard: Shard | None = None, block_size: int | None = None, amp: str = "off",
) -> RobustnessReport:
    """Robust accuracy of ``model`` on ``(x, y)`` per epsilon under an attack ensemble.

    Args:
        norm: ``"linf"`` or ``"l2"``.
        eps: one or more radii, in input units.
        card / bounds: the input bounds (from the model card, or given).
        attacks: stage names in order (default :func:`default_attacks`).
        generator: seeds every stage (each (eps, stage) draws its own seed from it once,
            so a resumed run reproduces a fresh one).
        state_path: a file to save progress to and resume from (sharded: each rank its
            own, :meth:`Shard.state_path`).
        checks: run the sanity checks (:mod:`.sanity`) on up to ``check_points`` points
            (the first ones, and per epsilon the first still robust), reusing the
            evaluation's clean pass and its adversarials: a few percent of its cost.
        progress: show a progress bar (rank 0 only when sharded).
        shard: this rank's share (:func:`dlsec.scenarios.sharding.current_shard`); every
            rank gets the whole report.
        block_size: attack the points in blocks of this many, each block seeded from its
            index (the per-block path a sharded run takes; default the shard's block, or
            one block per rank). The report's ``block_size`` says the one used.
        amp: ``"off"``, ``"bf16"`` or ``"fp16"`` (CUDA only): the white-box stages' forward
            and backward passes under autocast; every candidate is then checked by the
            float32 model (see the module's notes). A bad or unsupported setting is a
            :class:`dlsec.training.TrainingError`. It is part of the resume fingerprint.
    """
    start = time.perf_counter()
    bnd = card_bounds(bounds, card)
    if norm not in ("linf", "l2"):
        raise AttackError(f"norm must be linf or l2, got {norm!r}")
    eps_list = [float(e) for e in ([eps] if isinstance(eps, int | float) else eps)]
    if not eps_list or any(not math.isfinite(e) or e < 0 for e in eps_list):
        raise AttackError(f"eps must be one or more finite numbers >= 0, got {eps!r}")
    names = list(default_attacks() if attacks is None else attacks)
    if not names:
        raise AttackError("attacks must name at least one stage")
    stages = [get_stage(n) for n in names]
    if x.shape[0] != y.shape[0]:
        raise AttackError(f"got {x.shape[0]} inputs and {y.shape[0]} labels")
    if block_size is not None:
        shard = dataclasses.replace(shard or Shard(0, 1), block=block_size)

    search = model if amp == "off" else AutocastModel(model, amp)
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    n, k_eps, n_st = x.shape[0], len(eps_list), len(stages)
    if shard is not None:
        shard = shard.resolve(n)
    lo, hi = shard.bounds(n) if shard is not None else (0, n)
    xl, yl = x[lo:hi], y[lo:hi]
    order = sorted(range(k_eps), key=lambda i: eps_list[i])
    seeds = _stage_seeds(generator, k_eps, n_st)
    # the verdicts run in float32 even when the caller is inside an autocast region (the
    # search model turns autocast back on for itself)
    full_precision = torch.autocast(device_type=device.type, enabled=False)
    with module_mode(model, training=False), full_precision:
        step = shard.size if shard is not None else batch_size
        with torch.inference_mode():
            clean_logits = torch.cat(
                [model(xl[i : i + step]) for i in range(0, hi - lo, step)]
                or [model(x[:1])[:0]]
            )
        clean_correct = clean_logits.argmax(1) == yl
        if shard is not None:
            clean_logits = shard.gather(clean_logits)
        warnings: list[str] = []
        check_start = time.perf_counter()
        if checks:
            m = min(check_points, n)
            warnings += sanity.model_checks(model, x[:m], y[:m], logits=clean_logits[:m])
            if clean_logits.shape[1] < 4 and "apgd-t" in names:
                warnings.append("[classes] APGD-T needs at least 4 classes; it was skipped.")
        check_seconds = time.perf_counter() - check_start if checks else 0.0

        where = None if shard is None else (shard.rank, shard.world_size, shard.size)
        fingerprint = _fingerprint(model, xl, yl, norm, eps_list, names, bnd, seeds, where, amp)
        state = _State.fresh(xl, clean_correct, k_eps, n_st)
        resumed = False
        if state_path is not None and shard is not None and shard.world_size > 1:
            state_path = shard.state_path(state_path)
        if state_path is not None:
            loaded = _State.load(Path(state_path), fingerprint)
            if loaded is not None:
                state, resumed = loaded.to(device), True

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        columns = (TextColumn("evaluate {task.description}"), BarColumn(), MofNCompleteColumn())
        shown = progress and (shard is None or shard.is_main)
        with Progress(*columns, disable=not shown, transient=True) as bar:
            task = bar.add_task("", total=k_eps * n_st)
            prev: int | None = None
            for ki in order:
                e = eps_list[ki]
                if prev is not None and not bool(state.done[ki].any()):
                    carry = state.fooled_by[prev] >= 0
                    state.fooled_by[ki][carry] = state.fooled_by[prev][carry]
                    state.x_adv[ki][carry] = state.x_adv[prev][carry]
                for si, stage in enumerate(stages):
                    bar.update(task, description=f"{stage.name} eps={e:g}")
                    skip = stage.name == "apgd-t" and clean_logits.shape[1] < 4
                    if not bool(state.done[ki, si]):
                        state.pre_alive[ki, si] = state.fooled_by[ki] == -1
                        state.pre_near[ki, si] = state.nearness[ki]
                    if not skip and e > 0:
                        idx, total = _select(state, ki, si, stage, shard, lo)
                        if not bool(state.done[ki, si]):
                            attacker = search if stage.white_box else model
                            _run_stage(model, attacker, xl, yl, state, ki, si, stage, norm, e,
                                       bnd, seeds, idx, total, shard, lo)
                    if not bool(state.done[ki, si]):
                        state.done[ki, si] = True
                        if state_path is not None:
                            state.save(Path(state_path), fingerprint)
                    bar.advance(task)
                prev = ki

        if shard is not None:
            state = dataclasses.replace(
                state, fooled_by=shard.gather(state.fooled_by, dim=1),
                x_adv=shard.gather(state.x_adv, dim=1), nearness=shard.gather(state.nearness, dim=1),
            )
            clean_correct = shard.gather(clean_correct)
        robust = state.fooled_by == -1
        robust_acc = [float(r.double().mean()) for r in robust]
        stage_acc = {
            s.name: [
                float(((f == -1) | (f > si)).double().mean()) if n else 0.0 for f in state.fooled_by
            ]
            for si, s in enumerate(stages)
        }
        if checks:
            check_start = time.perf_counter()
            warnings += _after_checks(
                model, x, y, state, stages, eps_list, robust_acc, norm, bnd, seeds, check_points
            )
            check_seconds += time.perf_counter() - check_start
    return RobustnessReport(
        norm=norm, eps=eps_list, attacks=names,
        clean_accuracy=float(clean_correct.double().mean()) if n else 0.0,
        robust_accuracy=robust_acc, stage_accuracy=stage_acc, robust=robust,
        fooled_by=state.fooled_by, x_adv=state.x_adv, clean_correct=clean_correct,
        warnings=warnings, seconds=time.perf_counter() - start, resumed=resumed,
        check_seconds=check_seconds, block_size=None if shard is None else shard.size, amp=amp,
    )


def _select(
    state: _State, ki: int, si: int, stage: Stage, shard: Shard | None, lo: int
) -> tuple[Tensor, int]:
    """The (local) indices stage ``si`` attacks at epsilon ``ki``, and how many it attacks
    in all: the points still robust before it (or the ``nearest`` share of them, over all
    ranks: a stage that picks among all the points joins the other ranks here, from the
    state saved before it ran, so a rank that resumes after it still takes part)."""
    alive, near = state.pre_alive[ki, si], state.pre_near[ki, si]
    joint = shard is not None and shard.world_size > 1 and (stage.nearest > 0 or stage.pooled)
    if joint:
        assert shard is not None
        alive, near = shard.gather(alive), shard.gather(near)
    idx = torch.nonzero(alive).flatten()
    if stage.nearest > 0 and idx.numel():
        k = math.ceil(stage.nearest * idx.numel())
        idx = idx[near[idx].argsort(descending=True, stable=True)[:k]]
    total = int(idx.numel())
    if joint:
        hi = lo + state.fooled_by.shape[1]
        idx = idx[(idx >= lo) & (idx < hi)] - lo
    return idx, total


def _run_stage(
    model: nn.Module, attacker: nn.Module, x: Tensor, y: Tensor, state: _State, ki: int, si: int,
    stage: Stage, norm: str, eps: float, bounds: tuple[float, float], seeds: Tensor, idx: Tensor,
    total: int, shard: Shard | None, lo: int,
) -> None:
    """Stage ``si`` at epsilon ``ki`` on the points ``idx``: ``attacker`` searches (the
    model, or it under autocast), ``model`` (float32) decides what fooled it."""
    if idx.numel() == 0:
        return
    seed = int(seeds[ki, si])
    if shard is None:
        groups = [(idx, torch.Generator().manual_seed(seed))]
    else:  # one batch per block of the global indices, seeded from the block's index
        blocks = (idx + lo) // shard.size
        groups = [
            (idx[blocks == b], torch.Generator().manual_seed(block_seed(seed, int(b))))
            for b in torch.unique(blocks)
        ]
    for part, gen in groups:
        _attack_points(model, attacker, x, y, state, ki, si, stage, norm, eps, bounds, part, gen,
                       total)


def _attack_points(
    model: nn.Module, attacker: nn.Module, x: Tensor, y: Tensor, state: _State, ki: int, si: int,
    stage: Stage, norm: str, eps: float, bounds: tuple[float, float], idx: Tensor,
    gen: torch.Generator, total: int,
) -> None:
    xs, ys = x[idx], y[idx]
    extra: dict[str, Any] = {"points": total} if stage.pooled else {}
    cand = stage.run(attacker, xs, ys, norm=cast(Norm, norm), eps=eps, bounds=bounds, generator=gen,
                     **extra)
    cand = (xs + project(cand.to(xs.device, xs.dtype) - xs, norm, eps)).clamp(*bounds)
    with torch.inference_mode():  # the verdict: the float32 model, whatever searched
        logits = model(cand)
    fooled = logits.argmax(1) != ys
    near = nearness(logits, ys).to(state.nearness.dtype)
    state.nearness[ki][idx] = torch.maximum(state.nearness[ki][idx], near)
    hit = idx[fooled]
    state.fooled_by[ki][hit] = si
    state.x_adv[ki][hit] = cand[fooled]


def _after_checks(
    model: nn.Module, x: Tensor, y: Tensor, state: _State, stages: list[Stage],
    eps_list: list[float], robust_acc: list[float], norm: str, bounds: tuple[float, float],
    seeds: Tensor, check_points: int,
) -> list[str]:
    out = sanity.check_curve(eps_list, robust_acc)
    m = min(check_points, x.shape[0])
    big = sanity.large_eps(norm, bounds, x.shape[1:])
    known = torch.zeros(m, dtype=torch.bool, device=x.device)
    for ki, e in enumerate(eps_list):
        if e <= big:  # nested balls: fooled (or misclassified) here, fooled at big
            known |= state.fooled_by[ki][:m] != -1
    out += sanity.large_eps_check(
        model, x[:m], y[:m], norm=norm, bounds=bounds, known_fooled=known
    )
    white = [i for i, s in enumerate(stages) if s.white_box]
    white_names = ", ".join(stages[i].name for i in white) or "the ensemble"
    for ki, e in enumerate(eps_list):
        still = torch.nonzero(state.fooled_by[ki] == -1).flatten()[:check_points]
        gen = torch.Generator().manual_seed(int(seeds[ki, 0]) + 1)
        out += sanity.weaker_attack_check(
            model, x[still], y[still], eps=e, norm=norm, bounds=bounds, generator=gen,
            stronger=white_names,
        )
        for si, s in enumerate(stages):
            won = int((state.fooled_by[ki] == si).sum())
            if not s.white_box and won and white:
                out.append(
                    f"[black-box] at eps {e:g}, the black-box {s.name} attack fooled {won} "
                    f"points that the white-box stages ({white_names}) did not: a sign of "
                    "gradient masking."
                )
    return out


def _stage_seeds(generator: torch.Generator | None, k: int, s: int) -> Tensor:
    base = torch.randint(0, 2**62, (1,), generator=generator, device="cpu")
    return (base + torch.arange(k * s).view(k, s) * 1_000_003) % (2**62)


def _fingerprint(
    model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: list[float], names: list[str],
    bounds: tuple[float, float], seeds: Tensor, shard: tuple[int, int, int] | None = None,
    amp: str = "off",
) -> str:
    h = hashlib.sha256()
    meta = {"norm": norm, "eps": eps, "attacks": names, "bounds": bounds, "v": STATE_VERSION,
            "shard": shard, "amp": amp}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for t in (x, y, seeds, *(p for _, p in sorted(model.state_dict().items()))):
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_state_file(path: str | Path) -> bool:
    """True when ``path`` holds a saved evaluation state (of any evaluation), False when
    nothing is there; :class:`AttackError` when it is something else (not safetensors, or
    safetensors without the state's metadata), which ``state_path`` must never overwrite."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        return False
    why = "not a regular file"
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
            if "fingerprint" in meta and "version" in meta:
                return True
            why = "safetensors without an evaluation state's metadata"
        except (SafetensorError, OSError, ValueError) as exc:
            why = f"not a safetensors file: {' '.join(str(exc).split())[:80]}"
    raise AttackError(
        f"{path} is not a dlsec evaluation state ({why}); it is left as it is: remove it "
        f"or choose another state file"
    )


@dataclasses.dataclass
class _State:
    fooled_by: Tensor  # [K, N] int64
    x_adv: Tensor  # [K, N, ...]
    done: Tensor  # [K, S] bool
    nearness: Tensor  # [K, N] float32: the highest untargeted DLR loss of any candidate
    pre_alive: Tensor  # [K, S, N] bool: still robust before stage S ran
    pre_near: Tensor  # [K, S, N] float32: nearness before stage S ran

    @classmethod
    def fresh(cls, x: Tensor, clean_correct: Tensor, k: int, s: int) -> _State:
        fooled = torch.full((k, x.shape[0]), -1, dtype=torch.int64, device=x.device)
        fooled[:, ~clean_correct] = -2
        x_adv = x.unsqueeze(0).repeat(k, *([1] * x.dim()))
        near = torch.full((k, x.shape[0]), -math.inf, device=x.device)
        pre_alive = torch.zeros(k, s, x.shape[0], dtype=torch.bool, device=x.device)
        pre_near = torch.full((k, s, x.shape[0]), -math.inf, device=x.device)
        return cls(fooled, x_adv, torch.zeros(k, s, dtype=torch.bool), near, pre_alive, pre_near)

    def save(self, path: Path, fingerprint: str) -> None:
        from safetensors.torch import save

        tensors = {
            "fooled_by": self.fooled_by.detach().cpu().contiguous(),
            "x_adv": self.x_adv.detach().cpu().contiguous(),
            "done": self.done.to(torch.uint8).cpu().contiguous(),
            "nearness": self.nearness.detach().cpu().contiguous(),
            "pre_alive": self.pre_alive.to(torch.uint8).cpu().contiguous(),
            "pre_near": self.pre_near.detach().cpu().contiguous(),
        }
        data = save(tensors, metadata={"fingerprint": fingerprint, "version": STATE_VERSION})
        atomic_write_bytes(path, data)

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> _State | None:
        """The saved state, or ``None`` when there is none or it is for another evaluation
        (it is then replaced). A file that is no evaluation state at all is never
        overwritten: :class:`AttackError` (see :func:`check_state_file`)."""
        if not check_state_file(path):
            return None
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                if meta.get("fingerprint") != fingerprint:
                    return None
                names = ("fooled_by", "x_adv", "done", "nearness", "pre_alive", "pre_near")
                t = {name: fh.get_tensor(name) for name in names}
        except (SafetensorError, OSError, KeyError):
            return None
        return cls(t["fooled_by"], t["x_adv"], t["done"].bool(), t["nearness"],
                   t["pre_alive"].bool(), t["pre_near"])

    def to(self, device: torch.device) -> _State:
        return _State(
            self.fooled_by.to(device), self.x_adv.to(device), self.done, self.nearness.to(device),
            self.pre_alive.to(device), self.pre_near.to(device),
        )
