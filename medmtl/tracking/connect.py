"""Hand the ``MLFlowHandler`` objects of a bundle's handler lists to the tracking handlers in them.

Why: ``python -m monai.bundle run --tracking mlflow`` appends MONAI's ``MLFlowHandler`` to the
bundle's handler lists (``train::handlers``, ``validate::handlers``, ``handlers``) after the config
is written, so :class:`~medmtl.tracking.TrackingGuard` and :class:`~medmtl.tracking.RunArtifactsHandler`
cannot name it with an ``@`` reference. Finding it on the engines would read ignite's private
callback table; the lists themselves hold it, so the bundle's ``run`` section passes them over
before the engine runs::

    "run": ["$medmtl.tracking.connect_tracking(@train::handlers, @validate::handlers)", "$@train::trainer.run()"]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from medmtl.tracking.artifacts import RunArtifactsHandler
from medmtl.tracking.guard import TrackingGuard
from medmtl.tracking.model_logging import RunModelHandler

__all__ = ["connect_tracking", "mlflow_handlers"]


def mlflow_handlers(*handler_lists: Iterable[Any] | None) -> list[Any]:
    """The ``MLFlowHandler`` objects (subclasses too) of ``handler_lists``, each once, in list order."""
    from monai.handlers import MLFlowHandler

    found: list[Any] = []
    for handlers in handler_lists:
        for handler in handlers or ():
            if isinstance(handler, MLFlowHandler) and not any(handler is known for known in found):
                found.append(handler)
    return found


def connect_tracking(*handler_lists: Iterable[Any] | None) -> list[Any]:
    """Connect the tracking handlers of ``handler_lists`` to the ``MLFlowHandler`` objects in them.

    Every :class:`~medmtl.tracking.TrackingGuard` gets the ``MLFlowHandler`` of every list (the one
    guard of ``train::handlers`` also guards the validator's); every
    :class:`~medmtl.tracking.RunArtifactsHandler` and :class:`~medmtl.tracking.RunModelHandler` get
    those of its own list (its engine's run).
    Call it before the engines run; calling it again adds nothing twice. Without
    ``--tracking mlflow`` there is nothing to connect and the tracking handlers stay no-ops.

    Args:
        handler_lists: resolved handler lists of the bundle (``None`` counts as empty).

    Returns:
        The ``MLFlowHandler`` objects found (empty without MLflow tracking).
    """
    lists = [list(handlers or ()) for handlers in handler_lists]
    everywhere = mlflow_handlers(*lists)
    for handlers in lists:
        own = mlflow_handlers(handlers)
        for handler in handlers:
            if isinstance(handler, TrackingGuard):
                handler.connect(everywhere)
            elif isinstance(handler, RunArtifactsHandler | RunModelHandler):
                handler.connect(own)
    return everywhere
