"""Poisoning attacks: each transforms a training set and returns a :class:`PoisonResult`
(poisoned inputs and labels, a mask of the rows it touched, and the attack's own success
measure where it has one).

=========================== ================================================ ==============
function                    attack                                           touches
=========================== ================================================ ==============
:func:`random_flip`         uniform label noise at a rate                    labels
:func:`targeted_flip`       one class relabelled as another (7 -> 1)         labels
:func:`optimized_flip`      surrogate-chosen flips that move the boundary    labels
:func:`inject_mislabeled`   mislabeled samples appended                      new rows
:func:`backdoor`            BadNets trigger patch, dirty label               inputs+labels
:func:`feature_collision`   Poison Frogs clean-label collisions              new rows
=========================== ================================================ ==============

:mod:`dlsec.scenarios.poisoning` pits them against the sanitizers (poison, train,
measure; sanitize, retrain, measure again). Every attack takes the training set ``x, y``;
``num_classes`` defaults to ``y.max() + 1`` and ``generator`` (CPU, choosing the samples
and labels) to seed 0.

Example:
    >>> from dlsec.data import load_dataset
    >>> from dlsec.attacks.poisoning import random_flip
    >>> ds = load_dataset("digits")
    >>> res = random_flip(ds.x_train, ds.y_train, rate=0.2, generator=torch.Generator().manual_seed(0))
    ...                                                                   # doctest: +SKIP
"""

from __future__ import annotations

from dlsec.attacks.poisoning._base import PoisonError, PoisonResult
from dlsec.attacks.poisoning.backdoor import Trigger, apply_trigger, attack_success_rate, backdoor
from dlsec.attacks.poisoning.feature_collision import (
    craft_collisions,
    feature_collision,
    nearest_bases,
)
from dlsec.attacks.poisoning.injection import inject_mislabeled
from dlsec.attacks.poisoning.optimized_flip import flip_scores, optimized_flip
from dlsec.attacks.poisoning.random_flip import random_flip
from dlsec.attacks.poisoning.targeted_flip import targeted_flip

__all__ = ["PoisonError", "PoisonResult", "Trigger", "apply_trigger", "attack_success_rate",
           "backdoor", "craft_collisions", "feature_collision", "flip_scores", "inject_mislabeled",
           "nearest_bases", "optimized_flip", "random_flip", "targeted_flip"]
