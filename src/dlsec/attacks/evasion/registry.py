"""Evasion attacks by name, for the CLI and the audit. Attack files register themselves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dlsec.attacks.core import AttackError
from dlsec.attacks.evasion._base import EvasionAttack

_ATTACKS: dict[str, Callable[..., EvasionAttack]] = {}


def register_attack(name: str) -> Callable[[type], type]:
    """Class decorator: make an :class:`EvasionAttack` constructible by ``name``."""

    def deco(cls: type) -> type:
        if name in _ATTACKS and _ATTACKS[name] is not cls:
            raise ValueError(f"evasion attack {name!r} is already registered")
        _ATTACKS[name] = cls
        return cls

    return deco


def attack_names() -> list[str]:
    import dlsec.attacks.evasion  # noqa: F401  (importing the package registers every attack)

    return sorted(_ATTACKS)


def make_attack(name: str, **kwargs: Any) -> EvasionAttack:
    """Build a registered attack; unknown names and settings are user errors."""
    names = attack_names()
    if name not in _ATTACKS:
        raise AttackError(f"unknown attack {name!r} (choose from {', '.join(names)})")
    factory = _ATTACKS[name]
    fixed = getattr(factory, "norm", None)
    if "norm" in kwargs and isinstance(factory, type) and _fixed_norm(factory):
        if kwargs["norm"] != fixed:  # e.g. C&W is an L2 attack
            raise AttackError(f"{name} is an {fixed} attack; it does not support norm {kwargs['norm']!r}")
        kwargs = {k: v for k, v in kwargs.items() if k != "norm"}
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise AttackError(f"{name}: {exc}") from exc


def _fixed_norm(cls: type) -> bool:
    """True when the attack's norm is its class's own (its constructor takes no ``norm``)."""
    import inspect

    return "norm" not in inspect.signature(cls).parameters
