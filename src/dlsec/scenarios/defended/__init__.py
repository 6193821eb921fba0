"""Defended variants of a model: the rows of the defense x attack matrix.

A defense registers itself here by adding one module to this package that decorates a
recipe function with :func:`register_defense` (as audit sections do): the matrix
(:mod:`dlsec.scenarios.matrix`), the audit's ``--defenses`` flag and its ``[defenses]``
table find it by name, and a defense that is not in the codebase simply has no row.

A defense is named by a spec, ``NAME`` or ``NAME:PARAMETER`` (``pgd-at``, ``dp:3``,
``sanitize:cleanlab``, ``policy:label-only``). Its recipe says how the defended model is
obtained (:class:`Recipe`): trained (``train``: the defense's training on any dataset, also
used to retrain it on poisoned data for the poisoning columns) or the audited model itself
seen through a serving policy (``policy``; a serving policy changes no training).

Example:
    >>> spec = parse_defense("dp:3")
    >>> spec.family.name, spec.parameter                      # doctest: +SKIP
    ('dp', '3')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from dlsec.data import Dataset
from dlsec.errors import DlsecError
from dlsec.models import ModelCard
from dlsec.output_policies import OutputPolicy
from dlsec.plugins import Registry
from dlsec.scenarios.context import ScenarioContext
from dlsec.training import TrainConfig

KINDS = ("reference", "training", "serving")


class DefenseError(DlsecError):
    """An unknown defense or a bad parameter; the message names it and lists the known ones."""


@dataclass
class BuildSettings:
    """What every recipe builds from: the audited model's training recipe (``train``: epochs,
    learning rate, batch size, seed, device), the evasion radius the matrix attacks at and
    adversarial training trains at (``eps``, input units) and its ``norm``."""

    train: TrainConfig
    eps: float
    norm: str = "linf"
    progress: bool = False


Trainer = Callable[[Dataset, int], tuple[nn.Module, ModelCard]]
"""``train(dataset, seed) -> (model, card)``: the defense's training on ``dataset``."""


@dataclass
class Recipe:
    """How a defended variant is obtained.

    ``train`` trains it (None: it is the audited model itself); ``retrain`` trains the same
    defense on other data (the poisoned sets of the poisoning columns; None: the defense
    does not touch training, so those columns do not apply); ``policy`` is what its API
    answers (scores unless a serving policy); ``describe`` says what the row is, for the
    table's caption."""

    kind: str
    describe: str
    train: Trainer | None = None
    retrain: Trainer | None = None
    policy: OutputPolicy = field(default_factory=OutputPolicy)
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")


RecipeFn = Callable[[ScenarioContext, str, BuildSettings], Recipe]


@dataclass(frozen=True)
class DefenseFamily:
    """A registered defense: ``name``, ``kind`` (``reference``, ``training``, ``serving``),
    ``parameter`` (what follows ``NAME:``, e.g. ``EPSILON``; empty: takes none),
    ``default`` (the parameter when none is given; empty: required), ``summary`` and the
    recipe function."""

    name: str
    kind: str
    recipe: RecipeFn
    parameter: str = ""
    default: str = ""
    summary: str = ""

    def usage(self) -> str:
        return f"{self.name}:{self.parameter}" if self.parameter else self.name


@dataclass(frozen=True)
class DefenseSpec:
    """A parsed defense spec: its family and parameter (``""`` when it takes none)."""

    text: str
    family: DefenseFamily
    parameter: str

    def recipe(self, ctx: ScenarioContext, settings: BuildSettings) -> Recipe:
        return self.family.recipe(ctx, self.parameter, settings)


_REGISTRY: Registry[DefenseFamily] = Registry(__name__, __path__, "defense")


def register_defense(name: str, *, kind: str, parameter: str = "", default: str = "",
                     summary: str = "") -> Callable[[RecipeFn], RecipeFn]:
    """Register the recipe function of defense ``name`` (see :class:`DefenseFamily`)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def deco(fn: RecipeFn) -> RecipeFn:
        _REGISTRY.add(name, DefenseFamily(name, kind, fn, parameter, default, summary),
                      same=lambda old, new: old.recipe is new.recipe)
        return fn

    return deco


def registry() -> dict[str, DefenseFamily]:
    """Every registered defense, importing each module of this package once."""
    return _REGISTRY.entries()


def known() -> str:
    """The registered defenses as a user reads them: ``none, pgd-at, dp:EPSILON, ...``."""
    order = sorted(registry().values(), key=lambda f: (KINDS.index(f.kind), f.name))
    return ", ".join(f.usage() for f in order)


def parse_defense(text: str) -> DefenseSpec:
    """The spec ``NAME`` or ``NAME:PARAMETER``; an unknown name or a parameter where none is
    taken (or none where one is needed) is a one-line :class:`DefenseError`."""
    raw = str(text).strip()
    name, sep, parameter = raw.partition(":")
    families = registry()
    family = families.get(name.strip().lower())
    if family is None:
        raise DefenseError(f"unknown defense {raw!r} (known: {known()})")
    parameter = parameter.strip()
    if family.parameter:
        parameter = parameter or family.default
        if not parameter:
            raise DefenseError(f"defense {family.name} needs a parameter: {family.usage()}")
    elif sep:
        raise DefenseError(f"defense {family.name} takes no parameter, got {raw!r}")
    return DefenseSpec(raw, family, parameter)


def parse_defenses(texts: list[str] | tuple[str, ...]) -> list[DefenseSpec]:
    """Each spec parsed (:func:`parse_defense`); a name given twice is a :class:`DefenseError`."""
    specs = [parse_defense(t) for t in texts]
    seen: set[str] = set()
    for s in specs:
        key = s.family.name + (":" + s.parameter if s.parameter else "")
        if key in seen:
            raise DefenseError(f"defense {s.text!r} is named twice")
        seen.add(key)
    if not specs:
        raise DefenseError(f"name one or more defenses (known: {known()})")
    return specs


__all__ = ["KINDS", "BuildSettings", "DefenseError", "DefenseFamily", "DefenseSpec", "Recipe",
           "Trainer", "known", "parse_defense", "parse_defenses", "register_defense",
           "registry"]
