"""Deprecated name of :mod:`dlsec.defenses.adversarial` (kept for one release).

Importing it warns (``DeprecationWarning``); every name resolves to the one in
:mod:`dlsec.defenses.adversarial`.
"""

import warnings
from typing import Any

import dlsec.defenses.adversarial as _adversarial

warnings.warn(
    "dlsec.defenses.adversarial_training is deprecated: import dlsec.defenses.adversarial",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = list(_adversarial.__all__)


def __getattr__(name: str) -> Any:
    return getattr(_adversarial, name)
