"""Attacks: evasion (white- and black-box), poisoning, and privacy.

Both evasion families register by name here (:mod:`dlsec.attacks.registry`):
``make_attack("pgd", steps=40)`` or ``make_attack("square", max_queries=1000)`` build
either, and both are called the same way, ``attack(target, x, y, eps=[...], generator=g)``.
"""

# importing the two families registers their attacks
import dlsec.attacks.blackbox
import dlsec.attacks.evasion  # noqa: F401
from dlsec.attacks.registry import attack_kind, attack_names, make_attack

__all__ = ["attack_kind", "attack_names", "make_attack"]
