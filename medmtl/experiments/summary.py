"""A plain-text summary of a finished run: figures, where the outputs are, how to open MLflow.

What ``make demo`` prints at the end, and what ``medmtl summary RUN_DIR`` prints for any run, so a
newcomer sees in one screen what was produced without knowing the folder layout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from medmtl.tracking import default_tracking_uri

__all__ = ["run_summary_text"]


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _metric_lines(summary_file: Path) -> list[str]:
    """The test metrics of ``eval/summary.json``; one line saying why when the file cannot be read."""
    try:
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        lines = [f"test set, mean of the tasks' primary metrics: {_fmt(summary.get('mean_primary'))}"]
        for task, ci in summary.get("ci", {}).items():
            count = summary.get("counts", {}).get(task, {}).get("labelled")
            lines.append(
                f"  {task:<16} {ci['metric']:<18} {_fmt(ci.get('value'))}"
                f"  (95% CI {_fmt(ci.get('low'))} - {_fmt(ci.get('high'))}, {count} labelled cases)"
            )
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        return [
            f"{summary_file} cannot be read ({type(err).__name__}: {err}): it was not written completely or was "
            "changed; run the evaluation again to rewrite it"
        ]
    return lines


def run_summary_text(run_dir: str | os.PathLike, tracking_uri: str | None = None) -> str:
    """Summary of ``run_dir`` (the bundle's ``output_dir``): test metrics with 95% CIs and output paths."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist: give the bundle's output_dir (e.g. runs/demo)")
    lines = [f"medmtl run: {run.resolve()}"]
    summary_file = run / "eval" / "summary.json"
    if summary_file.is_file():
        lines += _metric_lines(summary_file)
    else:
        lines.append("no evaluation yet (eval/summary.json is missing)")
    outputs = {
        "checkpoints": run / "models",
        "training history": run / "history.json",
        "splits": run / "splits.json",
        "evaluation report": run / "eval" / "report.html",
        "predictions table": run / "predictions" / "predictions.csv",
        "predicted masks": run / "predictions",
    }
    for label, path in outputs.items():
        if path.exists():
            lines.append(f"{label + ':':<20} {path}")
    uri = tracking_uri or default_tracking_uri()
    lines.append(f"MLflow runs: {uri}")
    lines.append(f"  browse them with: mlflow ui --backend-store-uri {uri}   (then open http://127.0.0.1:5000)")
    return "\n".join(lines)
