"""The code MLflow runs to load a medmtl model ("models from code"): the pyfunc class, nothing pickled.

Why: a pickled ``python_model`` runs whatever the pickle holds when it is loaded; this file only
names :class:`~medmtl.deploy.mlflow_model.MedmtlModel` of the installed medmtl. MLflow copies it into
each logged model and runs it on load; medmtl itself never imports it.
"""

from __future__ import annotations

from mlflow.models import set_model

from medmtl.deploy.mlflow_model import MedmtlModel

__all__: list[str] = []

set_model(MedmtlModel())
