"""Metrics: per-task scores on an evaluator, bootstrap intervals and the evaluation report.

Every score is derived from the ``Task`` objects (kind decides the metrics, never the name) and
skips cases that lack the task's label. :class:`MultiTaskMetricHandler` puts
``<task>/<metric>`` values and the checkpoint-selecting ``mean_primary`` into an evaluator's
``state.metrics``; :func:`write_report` / :func:`report_from_dir` write ``summary.json``,
``predictions.npz`` and an HTML report with plots.
"""

from __future__ import annotations

from medmtl.metrics.calibration import (
    CALIBRATION_FILE,
    CalibrationRecord,
    apply_temperature,
    fit_temperatures,
    read_calibration,
    write_calibration,
)
from medmtl.metrics.cumulative import TaskMetric, as_samples, collect_results, update_from_samples
from medmtl.metrics.decisions import DECISIONS_FILE, Decisions, apply_decisions, choose_decisions
from medmtl.metrics.functional import (
    LABEL_METRICS,
    MULTICLASS_METRICS,
    SEGMENTATION_METRICS,
    bootstrap_ci,
    higher_is_better,
    metric_names,
    primary_metric,
)
from medmtl.metrics.handler import KEY_METRIC, MultiTaskMetricHandler
from medmtl.metrics.model_card import MODEL_CARD_FILE, ModelCardHandler, write_model_card
from medmtl.metrics.postprocessing import (
    POSTPROCESSING_FILE,
    Postprocessing,
    apply_postprocessing,
    choose_postprocessing,
)
from medmtl.metrics.report import (
    OVERLAYS_FILE,
    REPORT_FILE,
    SUMMARY_FILE,
    Overlay,
    build_summary,
    report_from_dir,
    write_report,
)
from medmtl.metrics.report_handler import EvaluationReportHandler
from medmtl.metrics.results import PREDICTIONS_FILE, EvaluationResults, TaskResult, mean_primary
from medmtl.metrics.studies import STUDIES_FILE, StudyResults, study_results
from medmtl.metrics.uncertainty import predictive_entropy, risk_coverage

__all__ = [
    "MODEL_CARD_FILE",
    "ModelCardHandler",
    "write_model_card",
    "EvaluationReportHandler",
    "TaskMetric",
    "TaskResult",
    "EvaluationResults",
    "MultiTaskMetricHandler",
    "KEY_METRIC",
    "collect_results",
    "as_samples",
    "update_from_samples",
    "primary_metric",
    "higher_is_better",
    "metric_names",
    "mean_primary",
    "bootstrap_ci",
    "SEGMENTATION_METRICS",
    "LABEL_METRICS",
    "MULTICLASS_METRICS",
    "Overlay",
    "write_report",
    "report_from_dir",
    "build_summary",
    "SUMMARY_FILE",
    "REPORT_FILE",
    "PREDICTIONS_FILE",
    "OVERLAYS_FILE",
    "CALIBRATION_FILE",
    "CalibrationRecord",
    "fit_temperatures",
    "apply_temperature",
    "read_calibration",
    "write_calibration",
    "Decisions",
    "DECISIONS_FILE",
    "choose_decisions",
    "apply_decisions",
    "POSTPROCESSING_FILE",
    "Postprocessing",
    "choose_postprocessing",
    "apply_postprocessing",
    "predictive_entropy",
    "risk_coverage",
    "STUDIES_FILE",
    "StudyResults",
    "study_results",
]
