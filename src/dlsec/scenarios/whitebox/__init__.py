"""White-box evasion evaluation: the AutoAttack-style ensemble (:mod:`.ensemble`, with its
boundary restarts in :mod:`.restarts`), the gradient-masking checks (:mod:`.checks`) and
the scenario functions the front-ends call (:mod:`.robustness`).

Example:
    >>> from dlsec.scenarios.whitebox import evaluate_robustness
    >>> rep = evaluate_robustness(model, x, y, eps=[0.05, 0.1], card=card)   # doctest: +SKIP
"""

from dlsec.scenarios.whitebox.ensemble import (
    RobustnessReport,
    check_state_file,
    default_attacks,
    evaluate_robustness,
)
from dlsec.scenarios.whitebox.robustness import (
    WhiteBoxOptions,
    ensemble_evaluation,
    eps_grid,
    make_white_box,
    robustness,
    search_model,
    single_attack,
    verify_float32,
)

__all__ = [
    "RobustnessReport",
    "WhiteBoxOptions",
    "check_state_file",
    "default_attacks",
    "ensemble_evaluation",
    "eps_grid",
    "evaluate_robustness",
    "make_white_box",
    "robustness",
    "search_model",
    "single_attack",
    "verify_float32",
]
