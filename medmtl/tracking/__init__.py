"""Experiment tracking: which MLflow store a run uses, what it logs there, and surviving its outages.

- :mod:`~medmtl.tracking.store`: the store a run tracks in (:func:`usable_tracking_uri`) and reading
  an evaluation back from it;
- :mod:`~medmtl.tracking.artifacts`: :class:`RunArtifactsHandler`, the run's parameters and files;
- :mod:`~medmtl.tracking.guard`: :class:`TrackingGuard`, a run that outlives a server outage;
- :mod:`~medmtl.tracking.batch`: :class:`MetricBatchingClient`, per-step metrics in one transaction
  per epoch;
- :mod:`~medmtl.tracking.connect`: :func:`connect_tracking`, which hands the ``MLFlowHandler`` that
  ``--tracking mlflow`` appends to a bundle's handler lists to :class:`TrackingGuard` and
  :class:`RunArtifactsHandler`.

Bundles name these through this package (``medmtl.tracking.TrackingGuard``).
"""

from __future__ import annotations

from medmtl.tracking.artifacts import RunArtifactsHandler
from medmtl.tracking.batch import MLFLOW_MAX_METRICS_PER_BATCH, MetricBatchingClient
from medmtl.tracking.connect import connect_tracking, mlflow_handlers
from medmtl.tracking.guard import FALLBACK_ARTIFACTS, FALLBACK_DB, TrackingGuard
from medmtl.tracking.store import default_tracking_uri, download_evaluation, usable_tracking_uri

__all__ = [
    "default_tracking_uri",
    "usable_tracking_uri",
    "download_evaluation",
    "RunArtifactsHandler",
    "TrackingGuard",
    "connect_tracking",
    "mlflow_handlers",
    "MetricBatchingClient",
    "MLFLOW_MAX_METRICS_PER_BATCH",
    "FALLBACK_DB",
    "FALLBACK_ARTIFACTS",
]
