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

Decision-based attacks (labels only) start from a misclassified point and shrink the
perturbation; their results carry a *trace* (the best distance found after each
iteration and the queries spent by then) so that success at any smaller budget and
radius can be read off one run (:meth:`BlackBoxResult.success_at`).

Example:
    >>> oracle = LocalOracle(model, card=card, output="scores")        # doctest: +SKIP
    >>> res = SquareAttack(eps=0.2, max_queries=1000)(oracle, x, y)     # doctest: +SKIP
    >>> res.success_rate, res.median_queries                            # doctest: +SKIP
"""

from dlsec.attacks.blackbox._base import BlackBoxResult, median
from dlsec.attacks.blackbox.boundary import BoundaryAttack
from dlsec.attacks.blackbox.hsja import HopSkipJump
from dlsec.attacks.blackbox.nes import NESAttack
from dlsec.attacks.blackbox.simba import SimBA
from dlsec.attacks.blackbox.square import SquareAttack

__all__ = [
    "BlackBoxResult",
    "BoundaryAttack",
    "HopSkipJump",
    "NESAttack",
    "SimBA",
    "SquareAttack",
    "median",
]
