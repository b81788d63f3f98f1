"""Targets for the evaluation's figures: "``metric`` ``>=`` ``bound``" statements that a recipe makes and a report
checks.

A target names a row of ``EvalReport.rows()`` by its dotted name (``"intervention.k1.accuracy"``) and a bound with
one of ``>=``, ``<=``, ``>``, ``<``, and optionally a tolerance for figures known to move between runs of one
recipe (``± 0.03``: met within it, and said so). ``parse_targets`` reads them from a table such as a recipe's
``[eval.targets]``::

    [eval.targets]
    "reconstruction.psnr_db" = ">= 30"
    "intervention.k1.accuracy" = ">= 0.93 ± 0.03"

and ``target_table`` renders them against a report's metrics as a Markdown table with a met / missed column. A
target whose row the report does not have (a name with a typo, or a section that was not run) is shown as not
measured, never as met.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
SECTIONS = ("reconstruction", "retrieval", "codes", "structure", "intervention", "disentanglement", "probe")
_FORM = re.compile(r"^\s*(>=|<=|>|<)\s*([^\s±]+)\s*(?:(?:±|\+-|\+/-)\s*(\S+)\s*)?$")


@dataclass(frozen=True)
class Target:
    metric: str  # dotted row name of the report, e.g. "intervention.k1.accuracy"
    op: str  # one of OPERATORS
    bound: float
    tolerance: float = 0.0  # met "within" when the value misses the bound by at most this much

    def met(self, value: float | None, within: bool = False) -> bool | None:
        """Whether ``value`` meets the bound (``within``: the bound moved by the tolerance in the value's favour);
        ``None`` when there is no value (not measured, or no samples)."""
        if value is None or not math.isfinite(value):
            return None
        slack = self.tolerance if within else 0.0
        return OPERATORS[self.op](value, self.bound - slack if self.op in (">=", ">") else self.bound + slack)

    def verdict(self, value: float | None) -> str:
        """'✓', '✓ within ± t', '✗ missed' or 'not measured (no samples)'."""
        if self.met(value) is None:
            return "not measured (no samples)"
        if self.met(value):
            return "✓"
        return f"✓ within ± {self.tolerance:g}" if self.tolerance and self.met(value, within=True) else "✗ missed"

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}" + (f" ± {self.tolerance:g}" if self.tolerance else "")


def parse_target(metric: str, text: str) -> Target:
    """``Target(metric, op, bound)`` from ``">= 0.85"``.

    Raises:
        ValueError: the text is not an operator and a finite number, or the metric names no report section.
    """
    section = metric.split(".", 1)[0]
    if section not in SECTIONS or "." not in metric:
        raise ValueError(f"target {metric!r} names no evaluation row: a row name starts with one of "
                         f"{', '.join(SECTIONS)} and a dot (the names in eval.md's first column)")
    match = _FORM.match(text) if isinstance(text, str) else None
    bound = _number(match.group(2)) if match else None
    tolerance = (_number(match.group(3)) if match.group(3) else 0.0) if bound is not None else None
    if bound is None or tolerance is None or tolerance < 0:
        raise ValueError(f"target for {metric!r} must read like '>= 0.85' or '>= 0.93 ± 0.03' (an operator among "
                         f"{', '.join(OPERATORS)}, a finite number, optionally ± a tolerance >= 0), got {text!r}")
    return Target(metric, match.group(1), bound, tolerance)


def parse_targets(table: Mapping[str, str]) -> tuple[Target, ...]:
    """Every ``metric = "op bound"`` entry of ``table``, in its order (see ``parse_target``).

    Raises:
        ValueError: as ``parse_target``; an entry that is itself a table (an unquoted dotted name split into parts,
            as ``--set eval.targets.a.b=...`` does) says how to write it.
    """
    for metric, text in table.items():
        if isinstance(text, Mapping):
            raise ValueError(f"target {metric!r} is a table: a row name holds dots, so quote it, as in "
                             f'"{metric}.<rest>" = ">= 0.9" under [eval.targets], or --set '
                             f"'eval.targets={{\"{metric}.<rest>\" = \">= 0.9\"}}'")
    return tuple(parse_target(metric, text) for metric, text in table.items())


def target_table(targets: Sequence[Target], metrics: Mapping[str, float | None]) -> list[str]:
    """Markdown table lines: metric, value, target, met (``Target.verdict``), one row per target; a name the
    report does not have shows no value and says so."""
    lines = ["| metric | value | target | met |", "|---|---|---|---|"]
    for t in targets:
        if t.metric not in metrics:
            lines.append(f"| {t.metric} | — | {t} | not in this report (check the name) |")
            continue
        value = metrics[t.metric]
        lines.append(f"| {t.metric} | {'n/a' if value is None else f'{value:.4g}'} | {t} | {t.verdict(value)} |")
    return lines


def unmeasured(targets: Sequence[Target], metrics: Mapping[str, float | None]) -> list[str]:
    """Names of the targets whose row the report does not have."""
    return [t.metric for t in targets if t.metric not in metrics]


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
