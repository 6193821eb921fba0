"""The audit: a list of sections run over a model and its data, written as one report.

Example:
    >>> from dlsec.audit import AuditConfig, run_audit
    >>> outcome = run_audit(AuditConfig(out="runs/demo"))       # doctest: +SKIP
    >>> outcome.report["metrics"]["accuracy.clean_accuracy"]    # doctest: +SKIP
"""

from dlsec.audit.config import AuditConfig, ConfigError, load_config
from dlsec.audit.result import Figure, SectionResult, Table
from dlsec.audit.runner import AuditOutcome, run_audit
from dlsec.audit.sections import register_section

__all__ = [
    "AuditConfig",
    "AuditOutcome",
    "ConfigError",
    "Figure",
    "SectionResult",
    "Table",
    "load_config",
    "register_section",
    "run_audit",
]
