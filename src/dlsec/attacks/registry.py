"""Evasion attacks by name, white- and black-box alike, for the scenarios, the CLI and the
audit. Attack files register themselves with :func:`register_attack`; importing
:mod:`dlsec.attacks` imports both families, so every name is known.

Each class says its kind: ``"white-box"`` (an :class:`~dlsec.attacks.evasion.EvasionAttack`,
the model's gradients), ``"score"`` or ``"decision"`` (a
:class:`~dlsec.attacks.blackbox.BlackBoxAttack` that sees an oracle's scores or labels).

Example:
    >>> make_attack("pgd", steps=40)                 # doctest: +SKIP
    >>> make_attack("square", max_queries=1000)      # doctest: +SKIP
    >>> attack_names("decision")                     # doctest: +SKIP
    ['boundary', 'hsja']
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from dlsec.attacks.core import AttackError

if TYPE_CHECKING:
    from dlsec.attacks.blackbox._base import BlackBoxAttack
    from dlsec.attacks.evasion._base import EvasionAttack

Kind = Literal["white-box", "score", "decision"]
KINDS: tuple[Kind, ...] = ("white-box", "score", "decision")
_ATTACKS: dict[str, type] = {}


def register_attack(name: str) -> Callable[[type], type]:
    """Class decorator: make an evasion attack (either family) constructible by ``name``."""

    def deco(cls: type) -> type:
        if name in _ATTACKS and _ATTACKS[name] is not cls:
            raise ValueError(f"evasion attack {name!r} is already registered")
        _ATTACKS[name] = cls
        return cls

    return deco


def attack_kind(name: str) -> Kind:
    """``"white-box"``, ``"score"`` or ``"decision"`` (a black-box class's ``kind``)."""
    _known(name)
    return getattr(_ATTACKS[name], "kind", "white-box")


def attack_names(kind: Kind | None = None) -> list[str]:
    """Registered names, sorted; ``kind`` keeps one family."""
    if kind is not None and kind not in KINDS:
        raise AttackError(f"unknown attack kind {kind!r} (choose from {', '.join(KINDS)})")
    return sorted(n for n, cls in _ATTACKS.items()
                  if kind is None or getattr(cls, "kind", "white-box") == kind)


def make_attack(name: str, **settings: Any) -> EvasionAttack | BlackBoxAttack:
    """Build a registered attack from its settings; unknown names and settings are user
    errors (:class:`AttackError`). A ``norm`` an attack cannot take is refused by name."""
    factory = _known(name)
    params = inspect.signature(factory).parameters
    if "norm" in settings and "norm" not in params:  # e.g. C&W is an L2 attack
        fixed = getattr(factory, "norm", None)
        if settings["norm"] != fixed:
            what = f"an {fixed} attack" if fixed else "an attack without a norm setting"
            raise AttackError(f"{name} is {what}; it does not support norm {settings['norm']!r}")
        settings = {k: v for k, v in settings.items() if k != "norm"}
    try:
        return factory(**settings)
    except TypeError as exc:
        raise AttackError(f"{name}: {exc}") from exc


def _known(name: str) -> type:
    if name not in _ATTACKS:
        raise AttackError(f"unknown attack {name!r} (choose from {', '.join(attack_names())})")
    return _ATTACKS[name]


__all__ = ["KINDS", "attack_kind", "attack_names", "make_attack", "register_attack"]
