"""dlsec: attack deep-learning models the way real adversaries do, harden them, audit them."""

__version__ = "0.1.0"

from dlsec.errors import DlsecError

__all__ = ["DlsecError", "__version__"]
