"""Black-box evasion attacks that see the model only through a :class:`dlsec.threat.Oracle`.

Threat model: black-box, score-based (the oracle returns class scores), untargeted. Every
candidate sent to the oracle costs one query for its point; a point is never queried
again once it is fooled, and the queries each attack reports equal the oracle's count.

* :class:`SquareAttack` (Andriushchenko et al. 2020), Linf and L2, random square updates.
* :class:`SimBA` (Guo et al. 2019), pixel or DCT basis.
* :class:`NESAttack` (Ilyas et al. 2018), NES gradient estimates driving PGD.
* :class:`HopSkipJump` (Chen et al. 2020), labels only, L2 and Linf.
* :class:`BoundaryAttack` (Brendel et al. 2018), labels only, L2.
* :mod:`~dlsec.attacks.blackbox.transfer`: surrogates (Jacobian augmentation, knockoff,
  gray-box) and adversarials crafted on them, sent once to the model.

The calling convention (settings on the object; ``eps``, one value or a list, at the call)
and the decision-based traces are :class:`BlackBoxAttack`'s.

Example:
    >>> oracle = LocalOracle(model, card=card, output="scores")             # doctest: +SKIP
    >>> res = SquareAttack(max_queries=1000)(oracle, x, y, eps=0.2)          # doctest: +SKIP
    >>> res.success_rate, res.median_queries                                 # doctest: +SKIP
    >>> SquareAttack(max_queries=1000)(oracle, x, y, eps=[0.1, 0.2]).success_rate  # doctest: +SKIP
"""

from dlsec.attacks.blackbox._base import BlackBoxAttack, BlackBoxResult, BlackBoxSweep, median
from dlsec.attacks.blackbox.boundary import BoundaryAttack
from dlsec.attacks.blackbox.hsja import HopSkipJump
from dlsec.attacks.blackbox.nes import NESAttack
from dlsec.attacks.blackbox.simba import SimBA
from dlsec.attacks.blackbox.square import SquareAttack

__all__ = [
    "BlackBoxAttack",
    "BlackBoxResult",
    "BlackBoxSweep",
    "BoundaryAttack",
    "HopSkipJump",
    "NESAttack",
    "SimBA",
    "SquareAttack",
    "median",
]
