"""Experiment tracking: which MLflow store a run uses, what it logs there, and surviving its outages.

- :mod:`~medmtl.tracking.store`: the store a run tracks in (:func:`usable_tracking_uri`) and reading
  an evaluation back from it;
- :mod:`~medmtl.tracking.artifacts`: :class:`RunArtifactsHandler`, the run's parameters and files;
- :mod:`~medmtl.tracking.guard`: :class:`TrackingGuard`, a run that outlives a server outage;
- :mod:`~medmtl.tracking.batch`: :class:`MetricBatchingClient`, per-step metrics in one transaction
  per epoch;
- :mod:`~medmtl.tracking.connect`: :func:`connect_tracking`, which hands the ``MLFlowHandler`` that
  ``--tracking mlflow`` appends to a bundle's handler lists to :class:`TrackingGuard`,
  :class:`RunArtifactsHandler` and :class:`RunModelHandler`;
- :mod:`~medmtl.tracking.model_logging`: :class:`RunModelHandler` / :func:`log_run_model`, the best
  model as an MLflow model (the pyfunc of :mod:`medmtl.deploy.mlflow_model`), registered with an alias;
  :func:`download_model_folder` turns it back into a run folder (:mod:`~medmtl.tracking.model_files`).

Bundles name these through this package (``medmtl.tracking.TrackingGuard``).
"""

from __future__ import annotations

from medmtl.tracking.artifacts import RunArtifactsHandler
from medmtl.tracking.batch import MLFLOW_MAX_METRICS_PER_BATCH, MetricBatchingClient
from medmtl.tracking.connect import connect_tracking, mlflow_handlers
from medmtl.tracking.guard import FALLBACK_ARTIFACTS, FALLBACK_DB, TrackingGuard
from medmtl.tracking.model_files import download_model_folder, is_model_uri
from medmtl.tracking.model_logging import RunModelHandler, log_run_model
from medmtl.tracking.store import default_tracking_uri, download_evaluation, usable_tracking_uri

__all__ = [
    "default_tracking_uri",
    "usable_tracking_uri",
    "download_evaluation",
    "RunArtifactsHandler",
    "RunModelHandler",
    "log_run_model",
    "download_model_folder",
    "is_model_uri",
    "TrackingGuard",
    "connect_tracking",
    "mlflow_handlers",
    "MetricBatchingClient",
    "MLFLOW_MAX_METRICS_PER_BATCH",
    "FALLBACK_DB",
    "FALLBACK_ARTIFACTS",
]
