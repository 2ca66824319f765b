"""Findings about a dataset, collected for every case before anything fails.

Hospital data is messy: a run must not die on case 312 of 400 after an hour of training. Every
check appends a :class:`Problem` instead of raising, and :class:`DataError` carries the whole list
so the user fixes everything in one round trip (as nnU-Net's ``verify_dataset_integrity`` does for
per-case checks, but without stopping at the first structural one).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import Enum

__all__ = ["Severity", "Problem", "DataError", "format_problems"]


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """One finding: what is wrong, where, and how to fix it.

    Args:
        check: short machine-readable name of the check (``missing_file``, ``shape_mismatch``...).
        message: what was found, with the values received and expected.
        fix: what the user should do about it.
        path: the file (or folder) concerned, if any.
        case_id: the case concerned, if any.
        severity: errors stop training; warnings are reported only.
    """

    check: str
    message: str
    fix: str = ""
    path: str | None = None
    case_id: str | None = None
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        where = self.path or ""
        if self.case_id is not None:
            where = f"case {self.case_id}" + (f" ({self.path})" if self.path else "")
        text = f"[{self.severity.value}] {self.check}: {where + ': ' if where else ''}{self.message}"
        return text + (f" -> fix: {self.fix}" if self.fix else "")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["severity"] = self.severity.value
        return out


def format_problems(problems: Iterable[Problem], limit: int | None = None) -> str:
    """All problems one per line, errors first, then a count per check."""
    problems = sorted(problems, key=lambda p: (p.severity != Severity.ERROR, p.check, str(p.case_id), str(p.path)))
    lines = [str(p) for p in (problems if limit is None else problems[:limit])]
    if limit is not None and len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more")
    counts = Counter((p.severity.value, p.check) for p in problems)
    if counts:
        summary = ", ".join(f"{n} x {check} ({sev})" for (sev, check), n in sorted(counts.items()))
        lines.append(f"summary: {summary}")
    return "\n".join(lines)


class DataError(ValueError):
    """Raised with every problem found, never just the first."""

    def __init__(self, problems: Iterable[Problem], context: str = "the dataset"):
        self.problems = list(problems)
        self.context = context
        errors = [p for p in self.problems if p.severity == Severity.ERROR]
        header = f"{len(errors)} problem(s) in {context}; fix them all, then run again:"
        super().__init__(header + "\n" + format_problems(self.problems, limit=200))

    def __reduce__(self):
        """Rebuild from the problems (not the message), so the error survives process pools."""
        return (type(self), (self.problems, self.context))
