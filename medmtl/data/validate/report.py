"""The result of a dataset validation: every finding plus the label counts of a usable dataset."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmtl.data.duplicates import Duplicates
from medmtl.data.problems import Problem, Severity, format_problems
from medmtl.data.splits import SPLIT_NAMES

__all__ = ["ValidationReport"]


# ---------------------------------------------------------------------------------------------
# the report


@dataclass
class ValidationReport:
    """Everything :func:`validate_dataset` found, plus the label counts of a usable dataset.

    Attributes:
        problems: every finding (errors and warnings), spec, structure and file checks together.
        dataset: the spec's ``name`` (``None`` when the spec could not be read).
        spec_path: the spec file, when the spec came from one.
        root: the data root the cases were resolved against.
        num_cases: cases in the case table (cases whose inputs are missing are not counted).
        files_checked: input and mask files opened.
        split_counts: ``{split: cases}``.
        label_counts: ``{split: {task: {"labelled", "missing", <class>: cases}}}`` with an ``all``
            split; for segmentation tasks the class counts are cases whose mask contains the class
            (only when files were checked).
        empty_masks: ``{task: [case_id, ...]}`` of all-background masks (``"<task>:weak"`` for weak-label
            masks).
        duration_s: wall time of the validation.
        workers: processes used for the file checks (1: in-process).
        check_files: whether files were opened at all.
        duplicates: the duplicate images found (``None`` when not looked for: errors, ``--no-files``,
            ``--no-duplicates``).
    """

    problems: list[Problem] = field(default_factory=list)
    dataset: str | None = None
    spec_path: str | None = None
    root: str | None = None
    num_cases: int = 0
    files_checked: int = 0
    split_counts: dict[str, int] = field(default_factory=dict)
    label_counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    empty_masks: dict[str, list[str]] = field(default_factory=dict)
    duration_s: float = 0.0
    workers: int = 1
    check_files: bool = True
    duplicates: Duplicates | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == Severity.ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == Severity.WARNING]

    @property
    def ok(self) -> bool:
        """True when no problem is an error (warnings do not block training)."""
        return not self.errors

    def check_counts(self) -> dict[str, dict[str, int]]:
        """``{severity: {check: count}}``."""
        counts: dict[str, dict[str, int]] = {}
        for p in self.problems:
            by_check = counts.setdefault(p.severity.value, {})
            by_check[p.check] = by_check.get(p.check, 0) + 1
        return {sev: dict(sorted(c.items())) for sev, c in sorted(counts.items())}

    def format(self) -> str:
        """Human-readable report: every problem one per line and a count per check; when there is
        no error, the label-count table per task and split."""
        name = self.dataset or (Path(self.spec_path).name if self.spec_path else "dataset")
        where = f" under {self.root}" if self.root else ""
        if self.dataset is None:
            head = f"{self.spec_path}: the spec cannot be used"
        else:
            head = (
                f"{name}: {self.num_cases} cases{where}, {self.files_checked} files checked "
                f"in {self.duration_s:.1f} s ({self.workers} worker{'s' if self.workers != 1 else ''})"
            )
        lines = [head]
        if self.problems:
            lines.append(format_problems(self.problems))
        if not self.ok:
            lines.append(
                f"FAILED: {len(self.errors)} error(s), {len(self.warnings)} warning(s); "
                "fix every error above, then run again"
            )
            return "\n".join(lines)
        if not self.check_files:
            lines.append("files were not opened (--no-files): only the spec and the case table were checked")
        lines.append(self._format_table())
        if self.duplicates is not None:
            lines.append(self._format_duplicates())
        lines.append(f"OK: no errors, {len(self.warnings)} warning(s)")
        return "\n".join(lines)

    def _format_table(self) -> str:
        splits = [s for s in (*SPLIT_NAMES, "all") if s in self.label_counts]
        if not splits:
            return "no cases"
        order = ", ".join(f"{s} {self.split_counts[s]}" for s in SPLIT_NAMES if s in self.split_counts)
        lines = [f"splits: {order}"]
        for task in self.label_counts[splits[-1]]:
            columns = list(self.label_counts[splits[-1]][task])
            rows = [["split", *columns]]
            rows += [[s, *(str(self.label_counts[s][task].get(c, 0)) for c in columns)] for s in splits]
            widths = [max(len(r[i]) for r in rows) for i in range(len(columns) + 1)]
            lines.append(f"task {task}:")
            for row in rows:
                cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
                lines.append("  " + "  ".join(cells))
        return "\n".join(lines)

    def _format_duplicates(self) -> str:
        counts = self.duplicates.summary() if self.duplicates is not None else {}
        if not counts.get("pairs"):
            return f"duplicates: none among {counts.get('images_compared', 0)} images"
        return (
            f"duplicates: {counts['images_in_groups']} of {counts['images_compared']} images in "
            f"{counts['groups']} groups ({counts['pairs']} pairs, {counts['exact_pairs']} exact; "
            f"{counts['label_conflicts']} with disagreeing labels, {counts['across_splits']} across splits)"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``: ok, counts per check, every problem, label counts."""
        return {
            "ok": self.ok,
            "dataset": self.dataset,
            "spec": self.spec_path,
            "root": self.root,
            "num_cases": self.num_cases,
            "files_checked": self.files_checked,
            "duration_s": round(self.duration_s, 3),
            "workers": self.workers,
            "check_files": self.check_files,
            "num_errors": len(self.errors),
            "num_warnings": len(self.warnings),
            "check_counts": self.check_counts(),
            "problems": [p.to_dict() for p in self.problems],
            "split_counts": self.split_counts,
            "label_counts": self.label_counts,
            "empty_masks": self.empty_masks,
            "duplicates": self.duplicates.summary() if self.duplicates is not None else None,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)
