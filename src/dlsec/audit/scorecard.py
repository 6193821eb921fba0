"""The scorecard: one row per threat of the seed, a measured severity, and what helps most.

:func:`build_scorecard` reads a report dict (what ``report.json`` holds) and rates each
threat of :data:`dlsec.scenarios.matrix_columns.THREATS`. The evidence is the audit's own
section metric for that threat when the section ran (white-box robust accuracy at the
middle epsilon, the black-box sweep's worst robust accuracy, the best transfer attack, the
worst label-flip damage, the backdoor's success, the membership AUC with LiRA's TPR at 1%
FPR, inversion accuracy, extraction fidelity), else the undefended (``none``) row of the
defense x attack matrix (the ``defenses`` section). The severity compares that figure with
:class:`ScorecardThresholds` (the ``[scorecard]`` table of ``audit.toml``). The defense is
the matrix row whose value in the threat's primary column improves most on ``none``, with
both intervals, whether they overlap (``within_noise``), and its cost (clean accuracy
change, training time).

Example:
    >>> rows = build_scorecard({"metrics": {"privacy.extraction_fidelity": 0.95}})
    >>> [(r["threat"], r["severity"]) for r in rows if r["severity"] != "not measured"]
    [('extraction', 'high')]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dlsec.scenarios.matrix_columns import COLUMN, THREATS

__all__ = ["SEVERITIES", "ScorecardThresholds", "build_scorecard", "format_figure"]

SEVERITIES = ("high", "medium", "low", "not measured")


@dataclass(frozen=True)
class ScorecardThresholds:
    """Where each threat's severity turns from low to medium to high (``[scorecard]`` in
    audit.toml; keys with ``-``, e.g. ``whitebox-high = 0.5``).

    Robustness figures (higher is safer): white-box robust accuracy at the middle epsilon
    and black-box robust accuracy are **high** below ``*_high`` (0.3: most inputs can be
    flipped by a bounded perturbation) and **medium** below ``*_medium`` (0.7: roughly one
    input in three or more can).
    Risk figures (higher is worse), high at or above ``*_high``, medium at or above
    ``*_medium``:

    - ``transfer``: success of the best transfer attack, 0.5 / 0.2 (an attacker with no
      access beyond a few queries fools the model on half / a fifth of its inputs).
    - ``poisoning``: the worst label-flip attack's drop in test accuracy, 0.10 / 0.03 (ten
      points is a broken model; three is beyond the run-to-run noise of a small model).
    - ``backdoor``: the trigger's attack success rate, 0.5 / 0.1.
    - ``membership``: high when the AUC is at least ``membership_auc_high`` (0.7) or a
      *resolved* TPR at 1% FPR is at least ``membership_tpr_high`` (0.1, ten times
      chance); medium when the AUC's 95% interval lies above 0.5 (leakage is measurable),
      or, without an interval, the AUC is at least ``membership_auc_medium`` (0.55).
    - ``inversion``: the share of reconstructions an independent model recognises as their
      class, 0.8 / 0.3 (chance is one over the number of classes).
    - ``extraction``: a substitute's agreement with the model at the audit's query budget,
      0.9 / 0.7 (a near copy / a useful one).
    """

    whitebox_high: float = 0.3
    whitebox_medium: float = 0.7
    blackbox_high: float = 0.3
    blackbox_medium: float = 0.7
    transfer_high: float = 0.5
    transfer_medium: float = 0.2
    poisoning_high: float = 0.10
    poisoning_medium: float = 0.03
    backdoor_high: float = 0.5
    backdoor_medium: float = 0.1
    membership_auc_high: float = 0.7
    membership_tpr_high: float = 0.1
    membership_auc_medium: float = 0.55
    inversion_high: float = 0.8
    inversion_medium: float = 0.3
    extraction_high: float = 0.9
    extraction_medium: float = 0.7

    def __post_init__(self) -> None:
        for threat in ("whitebox", "blackbox", "transfer", "poisoning", "backdoor",
                       "inversion", "extraction"):
            high, medium = getattr(self, f"{threat}_high"), getattr(self, f"{threat}_medium")
            for name, v in ((f"{threat}-high", high), (f"{threat}-medium", medium)):
                if not 0.0 <= v <= 1.0:
                    raise ValueError(f"{name}: must be in [0, 1], got {v}")
            safer_is_higher = COLUMN[_PRIMARY[threat]].better == "higher"
            if (high > medium) if safer_is_higher else (high < medium):
                side = "<=" if safer_is_higher else ">="
                raise ValueError(f"{threat}-high must be {side} {threat}-medium, got "
                                 f"{high} and {medium}")
        for name in ("membership_auc_high", "membership_tpr_high", "membership_auc_medium"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name.replace('_', '-')}: must be in [0, 1], got "
                                 f"{getattr(self, name)}")


_PRIMARY = {t.key: t.primary for t in THREATS}


@dataclass
class _Evidence:
    metric: str
    value: float
    interval: dict[str, Any] | None
    text: str
    extra: dict[str, Any] | None = None  # membership: the TPR's value and record


# -- formatting ----------------------------------------------------------------------------
def format_figure(value: float, interval: Mapping[str, Any] | None, unit: str = "rate") -> str:
    """A figure with its interval: rates as ``44.0% [37.3, 50.9]``, AUCs as ``0.517 [0.465,
    0.575]``, accuracy differences in points (``15.9 points``), seconds as ``12 s``.

    Example:
        >>> format_figure(0.44, {"lower": 0.373, "upper": 0.509})
        '44.0% [37.3, 50.9]'
    """
    if unit == "auc":
        text = f"{value:.3f}"
        bounds = (f"{interval['lower']:.3f}", f"{interval['upper']:.3f}") if interval else None
    elif unit == "seconds":
        return f"{value:.0f} s"
    elif unit == "difference":
        text = f"{100 * value:.1f} points"
        bounds = None
    else:
        text = f"{100 * value:.1f}%"
        bounds = ((f"{100 * interval['lower']:.1f}", f"{100 * interval['upper']:.1f}")
                  if interval else None)
    if bounds is None or not interval or not {"lower", "upper"} <= set(interval):
        return text
    return f"{text} [{bounds[0]}, {bounds[1]}]"


def _points(interval: Mapping[str, Any] | None) -> str:
    return f", {interval['n']} points" if interval and "n" in interval else ""


# -- evidence from the audit's own sections ------------------------------------------------
def _number(report: Mapping[str, Any], key: str) -> float | None:
    value = (report.get("metrics") or {}).get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _interval(report: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    record = (report.get("intervals") or {}).get(key)
    return record if isinstance(record, dict) and {"lower", "upper"} <= set(record) else None


def _whitebox(report: Mapping[str, Any]) -> _Evidence | None:
    keys = []
    for key in report.get("metrics") or {}:
        if key.startswith("evasion.robust_accuracy@") and _number(report, key) is not None:
            try:
                keys.append((float(key.partition("@")[2]), key))
            except ValueError:
                continue
    if not keys:
        return None
    eps, key = sorted(keys)[len(keys) // 2]
    value, iv = _number(report, key), _interval(report, key)
    assert value is not None
    return _Evidence(key, value, iv, f"robust accuracy {format_figure(value, iv)} at eps {eps:g} "
                                     f"(white-box ensemble{_points(iv)})")


def _blackbox(report: Mapping[str, Any]) -> _Evidence | None:
    key = "blackbox.blackbox_robust_accuracy"
    value = _number(report, key)
    if value is None:
        return None
    iv, eps = _interval(report, key), _number(report, "blackbox.eps")
    at = f" at eps {eps:g}" if eps is not None else ""
    return _Evidence(key, value, iv, f"robust accuracy {format_figure(value, iv)}{at} (worst of "
                                     f"the query attacks per point{_points(iv)})")


def _transfer(report: Mapping[str, Any]) -> _Evidence | None:
    found = [(v, k) for k in report.get("metrics") or {}
             if k.startswith("blackbox.transfer_") and k.endswith("_success_rate")
             and (v := _number(report, k)) is not None]
    if not found:
        return None
    value, key = max(found)
    iv = _interval(report, key)
    name = key[len("blackbox.transfer_"):-len("_success_rate")]
    return _Evidence(key, value, iv, f"success {format_figure(value, iv)} (best transfer attack: "
                                     f"{name}{_points(iv)})")


def _poisoning(report: Mapping[str, Any]) -> _Evidence | None:
    found = [(v, k) for k in report.get("metrics") or {}
             if k.startswith("poisoning.") and "_flip_" in k and k.endswith("_accuracy_drop")
             and "cleanlab" not in k and (v := _number(report, k)) is not None]
    if not found:
        return None
    value, key = max(found)
    attack = key[len("poisoning."):-len("_accuracy_drop")]
    kind, _, share = attack.rpartition("_flip_")
    accuracy_key = key[: -len("_drop")]
    accuracy, iv = _number(report, accuracy_key), _interval(report, accuracy_key)
    after = (f": accuracy {format_figure(accuracy, iv)}{_points(iv)}"
             if accuracy is not None else "")
    return _Evidence(key, value, None,
                     f"accuracy drop {format_figure(value, None, 'difference')} ({kind} flips "
                     f"of {share}% of the labels{after})")


def _simple(key: str, describe: Callable[[str, str], str]
            ) -> Callable[[Mapping[str, Any]], _Evidence | None]:
    """The evidence of a threat read off one metric: ``describe(figure, points)`` says what
    the figure (with its interval) is."""

    def evidence(report: Mapping[str, Any]) -> _Evidence | None:
        value = _number(report, key)
        if value is None:
            return None
        iv = _interval(report, key)
        return _Evidence(key, value, iv, describe(format_figure(value, iv), _points(iv)))

    return evidence


_backdoor = _simple("poisoning.backdoor_asr",
                    lambda fig, pts: f"attack success {fig} (trigger backdoor{pts})")


def _membership(report: Mapping[str, Any]) -> _Evidence | None:
    key = "privacy.membership_auc"
    value = _number(report, key)
    if value is None:
        return None
    iv = _interval(report, key)
    text = f"AUC {format_figure(value, iv, 'auc')}"
    if iv and iv["lower"] <= 0.5 <= iv["upper"]:
        text += ": no measurable leakage"
    extra = None
    for tkey in ("privacy.lira_online_tpr_at_1_fpr", "privacy.lira_offline_tpr_at_1_fpr"):
        tpr = _number(report, tkey)
        if tpr is not None:
            tiv = _interval(report, tkey)
            flag = "unresolved: " if tiv and tiv.get("unresolved") else ""
            text += f"; LiRA TPR {flag}{format_figure(tpr, tiv)} at 1% FPR{_points(tiv)}"
            extra = {"metric": tkey, "value": tpr, "interval": tiv}
            break
    return _Evidence(key, value, iv, f"membership {text}", extra)


_inversion = _simple("privacy.inversion_eval_accuracy",
                     lambda fig, pts: f"reconstructions recognised as their class {fig} "
                     f"(white-box, by an independent model{pts})")
_extraction = _simple("privacy.extraction_fidelity",
                      lambda fig, pts: f"substitute fidelity {fig} on held-out inputs (score "
                      f"queries{pts})")


_FROM_SECTIONS: dict[str, Callable[[Mapping[str, Any]], _Evidence | None]] = {
    "whitebox": _whitebox, "blackbox": _blackbox, "transfer": _transfer,
    "poisoning": _poisoning, "backdoor": _backdoor, "membership": _membership,
    "inversion": _inversion, "extraction": _extraction,
}


# -- the matrix ------------------------------------------------------------------------------
def _matrix(report: Mapping[str, Any]) -> dict[str, Any] | None:
    for section in report.get("sections") or []:
        if isinstance(section, Mapping) and section.get("name") == "defenses":
            matrix = (section.get("details") or {}).get("matrix")
            if isinstance(matrix, Mapping) and matrix.get("rows"):
                return dict(matrix)
    return None


def _cell(report: Mapping[str, Any], row: Mapping[str, Any], column: str
          ) -> tuple[float | None, dict[str, Any] | None]:
    key = f"defenses.{column}@{row.get('defense')}"
    value = _number(report, key)
    if value is None:
        raw = (row.get("cells") or {}).get(column)
        value = float(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else None
    return value, _interval(report, key)


def _from_matrix(report: Mapping[str, Any], matrix: Mapping[str, Any], threat: str
                 ) -> _Evidence | None:
    none = next((r for r in matrix["rows"] if r.get("defense") == "none"), None)
    if none is None:
        return None
    column = COLUMN[_PRIMARY[threat]]
    value, iv = _cell(report, none, column.key)
    if value is None:
        return None
    return _Evidence(f"defenses.{column.key}@none", value, iv,
                     f"{column.label} {format_figure(value, iv, column.unit)} (the matrix's "
                     f"undefended row{_points(iv)})")


def _overlap(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool | None:
    if not a or not b:
        return None
    return bool(a["lower"] <= b["upper"] and b["lower"] <= a["upper"])


def _best_defense(report: Mapping[str, Any], matrix: dict[str, Any] | None, threat: str
                  ) -> tuple[dict[str, Any] | None, str]:
    """The matrix row that improves most on ``none`` in the threat's primary column."""
    if matrix is None:
        return None, "no matrix: run with --defenses"
    rows = list(matrix["rows"])
    none = next((r for r in rows if r.get("defense") == "none"), None)
    column = COLUMN[_PRIMARY[threat]]
    if none is None:
        return None, "the matrix has no undefended (none) row to compare with"
    reference, reference_iv = _cell(report, none, column.key)
    if reference is None:
        return None, f"the undefended row has no {column.label}"
    sign = 1.0 if column.better == "higher" else -1.0
    best: dict[str, Any] | None = None
    for row in rows:
        if row.get("defense") == "none" or row.get("kind") == "reference":
            continue
        value, iv = _cell(report, row, column.key)
        if value is None:
            continue
        gain = sign * (value - reference)
        if best is None or gain > best["gain"]:
            clean, _ = _cell(report, row, "clean_accuracy")
            clean0, _ = _cell(report, none, "clean_accuracy")
            seconds, _ = _cell(report, row, "train_seconds")
            best = {
                "name": str(row.get("defense")), "kind": row.get("kind"),
                "column": column.key, "unit": column.unit, "gain": gain,
                "value": value, "interval": iv,
                "reference": reference, "reference_interval": reference_iv,
                "within_noise": _overlap(iv, reference_iv),
                "cost": {"clean_accuracy_change": (clean - clean0 if clean is not None
                                                   and clean0 is not None else None),
                         "train_seconds": seconds},
            }
    if best is None:
        return None, f"no defense in the matrix measured {column.label}"
    if best["gain"] <= 0:
        return None, "no defense improved it"
    return best, ""


# -- severity --------------------------------------------------------------------------------
def _severity(threat: str, ev: _Evidence, th: ScorecardThresholds) -> str:
    if threat == "membership":
        tpr = ev.extra or {}
        tpr_resolved = tpr.get("value") is not None and not (tpr.get("interval") or {}).get(
            "unresolved")
        if ev.value >= th.membership_auc_high or (
                tpr_resolved and tpr["value"] >= th.membership_tpr_high):
            return "high"
        if ev.interval is not None:
            return "medium" if ev.interval["lower"] > 0.5 else "low"
        return "medium" if ev.value >= th.membership_auc_medium else "low"
    high, medium = getattr(th, f"{threat}_high"), getattr(th, f"{threat}_medium")
    if COLUMN[_PRIMARY[threat]].better == "higher":  # a robustness figure: low is bad
        return "high" if ev.value < high else "medium" if ev.value < medium else "low"
    return "high" if ev.value >= high else "medium" if ev.value >= medium else "low"


def describe_defense(defense: Mapping[str, Any]) -> str:
    """One line for a scorecard row's defense: name, gain with both figures (and whether
    it is within noise), cost."""
    unit = defense.get("unit", "rate")
    gain = defense["gain"]
    gain_text = f"{gain:+.3f}" if unit == "auc" else f"{100 * gain:+.1f} points"
    text = (f"{defense['name']}: {gain_text} ({format_figure(defense['reference'], defense.get('reference_interval'), unit)}"
            f" -> {format_figure(defense['value'], defense.get('interval'), unit)})")
    if defense.get("within_noise"):
        text += ", within noise"
    cost = defense.get("cost") or {}
    costs = []
    if cost.get("clean_accuracy_change") is not None:
        costs.append(f"clean accuracy {100 * cost['clean_accuracy_change']:+.1f} points")
    if cost.get("train_seconds") is not None:
        costs.append(f"training {cost['train_seconds']:.0f} s")
    return text + (f"; cost: {', '.join(costs)}" if costs else "")


def build_scorecard(report: Mapping[str, Any],
                    thresholds: ScorecardThresholds | None = None) -> list[dict[str, Any]]:
    """One row per threat (:data:`THREATS`, in order): ``threat``, ``label``, ``severity``
    (one of :data:`SEVERITIES`), ``evidence`` (the figure, its interval and what it is),
    ``metric`` (the report key it read), ``value``, ``interval``, ``defense`` (the matrix
    row that helps most: ``name``, ``gain`` (positive = better), ``value``/``interval`` and
    ``reference``/``reference_interval`` (the ``none`` row), ``within_noise`` (the two
    intervals overlap; None without intervals), ``cost`` (``clean_accuracy_change``,
    ``train_seconds``), ``summary``) or None with ``defense_note`` saying why."""
    th = thresholds or ScorecardThresholds()
    matrix = _matrix(report)
    rows = []
    for threat in THREATS:
        ev = _FROM_SECTIONS[threat.key](report)
        if ev is None and matrix is not None:
            ev = _from_matrix(report, matrix, threat.key)
        defense, note = _best_defense(report, matrix, threat.key)
        if defense is not None:
            defense["summary"] = describe_defense(defense)
        rows.append({
            "threat": threat.key, "label": threat.label,
            "severity": "not measured" if ev is None else _severity(threat.key, ev, th),
            "evidence": ev.text if ev else "not measured: no section or matrix row measured it",
            "metric": ev.metric if ev else None,
            "value": ev.value if ev else None,
            "interval": ev.interval if ev else None,
            "defense": defense,
            "defense_note": note,
        })
    return rows
