"""Scenarios: each threat wired once, for the audit, the CLI and the benchmarks.

A scenario is one function of a :class:`ScenarioContext` (model, card, data, threat model,
seed) and its options, returning a :class:`ScenarioResult` (metrics, tables, the data of
its figures, a one-line summary). Front-ends only translate: an audit section is options
-> scenario -> render; a CLI command is flags -> scenario -> print or write; a benchmark is
scenario + peer + timing. One module per threat.
"""

from dlsec.scenarios.context import ScenarioContext, stream_seed
from dlsec.scenarios.result import ScenarioResult, Table

__all__ = ["ScenarioContext", "ScenarioResult", "Table", "stream_seed"]
